"""The serving runtime's bookkeeping after a policy's decision, for one MoE layer call, in one Triton
launch (in torch it is more than 60 small ops, each a kernel under a decode step's CUDA graph: at 2-3 us
a kernel, milliseconds per step for a 48-layer model). The work and signatures are the torch
reference's (reference.py), which says what each figure means.

A program per block of rows writes its rows' routing and adds their figures (float64 atomic adds to
the table row). The fallback is a decision over every row, so each program checks every row itself and
all reach the same answer: no exchange between programs, no second launch. The first program also marks
the experts of every row for the mask and the distinct counts. (One program looping over all rows took
316 us at T 256, E 128 on an H100.) The real rows are the first `num_real` (a 0-dim device tensor, an
int, or None for all), read by the launch itself: no [T] mask to build first. Static grid, no host
sync: graph-capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_shared import block_sizes, column, is_real_row, num_real_arguments, warps_for, warps_option
from .layout import FIELDS, check_table_row
from .layout import column as field

_STEPS, _TOKENS, _DISTINCT_BEFORE, _DISTINCT_AFTER, _REROUTED, _MASS_DROPPED, _FALLBACKS = (
    tl.constexpr(field(name)) for name in (
        "steps", "tokens", "distinct_before", "distinct_after", "rerouted", "mass_dropped", "fallbacks"))  # fmt: skip
_NUM_FIELDS = tl.constexpr(len(FIELDS))
_FIELDS_POW2 = tl.constexpr(triton.next_power_of_2(len(FIELDS)))


@triton.jit
def _finite(x):
    return (x == x) & (tl.abs(x) != float("inf"))


@triton.jit
def _in_first(mask, pid):
    """mask, only in the first program (a vector-shaped flag: the interpreter rejects a mask combined
    with a scalar bool)."""
    return mask & ((mask.to(tl.int32) * 0 + pid) == 0)


@triton.jit
def _load_rows(ptr, rows, stride, mask, columns, other):
    """[rows, columns] of a row-major matrix with row stride `stride`."""
    return tl.load(ptr + rows[:, None].to(tl.int64) * stride + columns[None, :], mask=mask, other=other)


@triton.jit
def _scan_every_row(original_ids_ptr, new_ids_ptr, new_weights_ptr, original_weights_ptr, num_real_ptr,
                    scratch_ptr, stride_original_ids, stride_new_ids, stride_new_weights, num_real,
                    num_rows, num_experts, pid, cols, slot, TOP_K: tl.constexpr, CHECK: tl.constexpr,
                    TRACKS_EXPERTS: tl.constexpr, NUM_REAL_MODE: tl.constexpr, SCAN_T: tl.constexpr,
                    BLOCK_E: tl.constexpr):  # fmt: skip
    """Over every row, SCAN_T at a time: how many real rows are bad (CHECK: a proposed id outside [0, E)
    or a non-finite weight, checked in the dtype it is returned in; the logits are not checked, see
    reference.py); and, in the first program, the experts of the real rows' original ids (scratch row 0) and proposed ids
    (row 1), clamped as ids_to_mask (scattered: O(T k), not a compare against every expert). Every
    program checks (all take the same decision); only the first marks."""
    if TRACKS_EXPERTS:
        tl.store(scratch_ptr + cols, cols * 0, mask=_in_first(cols < BLOCK_E, pid))
        tl.store(scratch_ptr + BLOCK_E + cols, cols * 0, mask=_in_first(cols < BLOCK_E, pid))
        tl.debug_barrier()
    bad = tl.zeros([SCAN_T], dtype=tl.int32)
    if CHECK:
        scan_rows = num_rows
    else:
        scan_rows = tl.where(pid == 0, num_rows, 0)
    for start in range(0, scan_rows, SCAN_T):
        rows = start + tl.arange(0, SCAN_T)
        row_ok = rows < num_rows
        real = is_real_row(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE)
        in_slots = row_ok[:, None] & (slot[None, :] < TOP_K)
        new_ids = _load_rows(new_ids_ptr, rows, stride_new_ids, in_slots, slot, 0)
        if CHECK:
            weights = _load_rows(new_weights_ptr, rows, stride_new_weights, in_slots, slot, 0.0)
            weights = weights.to(original_weights_ptr.dtype.element_ty).to(tl.float32)
            wrong = ((new_ids < 0) | (new_ids >= num_experts) | ~_finite(weights)) & in_slots
            bad += ((tl.sum(wrong.to(tl.int32), axis=1) > 0) & real).to(tl.int32)
        if TRACKS_EXPERTS:
            original = _load_rows(original_ids_ptr, rows, stride_original_ids, in_slots, slot, 0)
            marked = _in_first(real[:, None] & (slot[None, :] < TOP_K), pid)
            tl.store(scratch_ptr + tl.minimum(tl.maximum(original, 0), num_experts - 1), 1, mask=marked)
            tl.store(scratch_ptr + BLOCK_E + tl.minimum(tl.maximum(new_ids, 0), num_experts - 1), 1, mask=marked)
    return tl.sum(bad, axis=0)


@triton.jit
def _mass_lost(logits_ptr, stride_logits, rows, row_ok, cols, lost, original, num_experts):
    """[BT] the router probability of the experts each row lost: softmax(x).nan_to_num(0), so a row with
    NaN or +inf, or only -inf, counts 0 (NaN in torch)."""
    in_row = row_ok[:, None] & (cols < num_experts)[None, :]
    x = _load_rows(logits_ptr, rows, stride_logits, in_row, cols, float("-inf")).to(tl.float32)
    top = tl.max(tl.where(x == x, x, float("-inf")), axis=1)
    broken = (tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), axis=1) > 0) | (top == float("-inf"))
    shift = tl.where(broken, 0.0, top)
    total = tl.sum(tl.where(in_row & ~broken[:, None], tl.exp(x - shift[:, None]), 0.0), axis=1)
    clamped = tl.minimum(tl.maximum(original, 0), num_experts - 1)
    x_lost = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_logits + clamped, mask=lost,
                     other=float("-inf")).to(tl.float32)  # fmt: skip
    lost_probs = tl.where(lost & ~broken[:, None], tl.exp(x_lost - shift[:, None]), 0.0)
    return tl.sum(lost_probs / tl.where(total > 0, total, 1.0)[:, None], axis=1)


@triton.jit
def _add_figures(table_row_ptr, step_fell_back_ptr, logits_ptr, stride_logits, rows, row_ok, real, cols, slot,
                 original, final, before, used, fell, first, num_experts, TOP_K: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_K: tl.constexpr):  # fmt: skip
    """This program's rows' figures (every one but the fallbacks only when the layer did not fall back)
    added to the table row; the first program adds the per-call ones. Atomic float64 adds: counts stay
    exact (integers below 2**53), the mass's rounding depends on the order."""
    kept = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int1)
    for j in tl.static_range(TOP_K):
        kept = kept | (original == column(final, slot, j)[:, None])
    lost = ~kept & (slot[None, :] < TOP_K) & real[:, None]
    rerouted = tl.sum((tl.sum(lost.to(tl.int32), axis=1) > 0).to(tl.int32), axis=0)
    dropped = tl.sum(_mass_lost(logits_ptr, stride_logits, rows, row_ok, cols, lost, original, num_experts).to(
        tl.float64), axis=0)  # fmt: skip
    fell_back = fell.to(tl.float64)
    counted = 1.0 - fell_back
    first_only = first.to(tl.float64)
    figures = tl.arange(0, _FIELDS_POW2)
    values = tl.where(figures == _STEPS, counted * first_only, 0.0)
    values = tl.where(figures == _TOKENS, tl.sum(real.to(tl.int32), axis=0).to(tl.float64) * counted, values)
    values = tl.where(figures == _DISTINCT_BEFORE, tl.sum(before, axis=0).to(tl.float64) * counted * first_only, values)
    values = tl.where(figures == _DISTINCT_AFTER, tl.sum(used, axis=0).to(tl.float64) * counted * first_only, values)
    values = tl.where(figures == _REROUTED, rerouted.to(tl.float64) * counted, values)
    values = tl.where(figures == _MASS_DROPPED, dropped * counted, values)
    values = tl.where(figures == _FALLBACKS, fell_back * first_only, values)
    tl.atomic_add(table_row_ptr + figures, values, mask=figures < _NUM_FIELDS)
    step = tl.load(step_fell_back_ptr)
    tl.store(step_fell_back_ptr, tl.maximum(step, fell_back), mask=first)


@triton.jit
def _layer_kernel(
    logits_ptr, original_ids_ptr, original_weights_ptr, new_ids_ptr, new_weights_ptr, num_real_ptr, fell_back_ptr,
    out_ids_ptr, out_weights_ptr, mask_ptr, table_row_ptr, step_fell_back_ptr, scratch_ptr,
    stride_logits, stride_original_ids, stride_original_weights, stride_new_ids, stride_new_weights,
    num_real, num_rows, num_experts,
    TOP_K: tl.constexpr, CHECK: tl.constexpr, GIVEN_FELL: tl.constexpr, MASK: tl.constexpr, STATS: tl.constexpr,
    NUM_REAL_MODE: tl.constexpr, BLOCK_T: tl.constexpr, SCAN_T: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """CHECK: decide the fallback (and write the outputs); else GIVEN_FELL: read it at fell_back_ptr;
    else the layer did not fall back."""
    pid = tl.program_id(0)
    first = pid == 0  # the program that also counts the experts used (masks over every row)
    cols = tl.arange(0, BLOCK_E)
    slot = tl.arange(0, BLOCK_K)
    col_ok = cols < num_experts
    bad = _scan_every_row(original_ids_ptr, new_ids_ptr, new_weights_ptr, original_weights_ptr, num_real_ptr,
                          scratch_ptr, stride_original_ids, stride_new_ids, stride_new_weights, num_real, num_rows,
                          num_experts, pid, cols, slot, TOP_K, CHECK, MASK | STATS, NUM_REAL_MODE, SCAN_T,
                          BLOCK_E)  # fmt: skip
    if CHECK:
        fell = bad > 0
        tl.store(fell_back_ptr, fell.to(tl.uint8), mask=first)
    elif GIVEN_FELL:
        fell = tl.load(fell_back_ptr) != 0
    else:
        fell = pid < 0  # False (a scalar of the same type)

    # This program's own rows: the final routing.
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_rows
    real = is_real_row(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE)
    in_slots = row_ok[:, None] & (slot[None, :] < TOP_K)
    original = _load_rows(original_ids_ptr, rows, stride_original_ids, in_slots, slot, 0)
    final = tl.where(fell, original, _load_rows(new_ids_ptr, rows, stride_new_ids, in_slots, slot, 0).to(original.dtype))
    if CHECK:
        out = rows[:, None].to(tl.int64) * TOP_K + slot[None, :]  # fresh [T, k] outputs
        tl.store(out_ids_ptr + out, final, mask=in_slots)
        weights = _load_rows(new_weights_ptr, rows, stride_new_weights, in_slots, slot, 0.0)
        given = _load_rows(original_weights_ptr, rows, stride_original_weights, in_slots, slot, 0.0)
        tl.store(out_weights_ptr + out, tl.where(fell, given, weights.to(given.dtype)), mask=in_slots)

    before = tl.zeros([BLOCK_E], dtype=tl.int32)
    used = before
    if MASK | STATS:
        tl.debug_barrier()  # the first program's marks, from all its threads
        before = tl.load(scratch_ptr + cols, mask=_in_first(col_ok, pid), other=0)
        proposed = tl.load(scratch_ptr + BLOCK_E + cols, mask=_in_first(col_ok, pid), other=0)
        used = tl.where(fell, before, proposed)
        if MASK:
            tl.store(mask_ptr + cols, used.to(tl.uint8), mask=_in_first(col_ok, pid))
    if STATS:
        _add_figures(table_row_ptr, step_fell_back_ptr, logits_ptr, stride_logits, rows, row_ok, real, cols, slot,
                     original, final, before, used, fell, first, num_experts, TOP_K, BLOCK_T, BLOCK_K)  # fmt: skip


def launch_sizes(num_rows: int, num_experts: int, top_k: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_T, SCAN_T, BLOCK_E, BLOCK_K, warps): shapes only. BLOCK_T rows per program (the grid is
    cdiv(T, BLOCK_T)); SCAN_T rows per step of the loop over every row; no more threads than the
    BLOCK_T tile has elements (triton_shared.warps_for)."""
    block_e, block_k = block_sizes(num_experts, top_k)
    block_t = max(1, min(16, 2048 // block_e, triton.next_power_of_2(num_rows)))
    scan_t = max(block_t, min(64, 8192 // block_e, triton.next_power_of_2(num_rows)))
    return block_t, scan_t, block_e, block_k, warps_for(block_t * block_e)


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.stride(1) == 1 else tensor.contiguous()


def _launch(logits, original_ids, original_weights, new_ids, new_weights, num_real, fell_back, out_ids, out_weights,
            mask, table_row, step_fell_back, check: bool):  # fmt: skip
    num_rows, num_experts = logits.shape
    top_k = original_ids.shape[1]
    block_t, scan_t, block_e, block_k, warps = launch_sizes(num_rows, num_experts, top_k)
    logits, original_ids, original_weights, new_ids, new_weights = (
        _rows(t) for t in (logits, original_ids, original_weights, new_ids, new_weights)
    )
    stats = table_row is not None
    if stats:
        check_table_row(table_row, step_fell_back)
    scratch = torch.empty(2, block_e, dtype=torch.int32, device=logits.device)
    placeholder = scratch
    num_real_mode, num_real_ptr, num_real_value = num_real_arguments(num_real, logits.device, placeholder)
    _layer_kernel[(triton.cdiv(num_rows, block_t),)](
        logits, original_ids, original_weights, new_ids, new_weights, num_real_ptr,
        placeholder if fell_back is None else fell_back.view(torch.uint8),
        placeholder if out_ids is None else out_ids, placeholder if out_weights is None else out_weights,
        placeholder if mask is None else mask.view(torch.uint8), table_row if stats else placeholder,
        step_fell_back if stats else placeholder, scratch,
        logits.stride(0), original_ids.stride(0), original_weights.stride(0), new_ids.stride(0), new_weights.stride(0),
        num_real_value, num_rows, num_experts,
        TOP_K=top_k, CHECK=check, GIVEN_FELL=fell_back is not None and not check, MASK=mask is not None,
        STATS=stats, NUM_REAL_MODE=num_real_mode, BLOCK_T=block_t, SCAN_T=scan_t, BLOCK_E=block_e, BLOCK_K=block_k,
        **warps_option(warps),
    )  # fmt: skip


def record_triton(table_row: torch.Tensor | None, step_fell_back: torch.Tensor | None, num_real,
                  router_logits: torch.Tensor, original_ids: torch.Tensor, final_ids: torch.Tensor,
                  fell_back: torch.Tensor | None = None, *, mask: bool = False) -> torch.Tensor | None:
    """reference.record_torch in one launch; allocations only (torch.empty launches nothing)."""
    active = torch.empty(router_logits.shape[1], dtype=torch.bool, device=final_ids.device) if mask else None
    _launch(router_logits, original_ids, final_ids, final_ids, final_ids, num_real, fell_back, None, None, active,
            table_row, step_fell_back, check=False)  # fmt: skip
    return active


def finalize_triton(router_logits, ids, weights, new_ids, new_weights, num_real, *, mask: bool,
                    table_row=None, step_fell_back=None):
    """reference.finalize_torch in one launch; allocations only."""
    num_rows, num_experts = router_logits.shape
    out_ids = torch.empty(ids.shape, dtype=ids.dtype, device=ids.device)
    out_weights = torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)
    fell_back = torch.empty((), dtype=torch.bool, device=ids.device)
    active = torch.empty(num_experts, dtype=torch.bool, device=ids.device) if mask else None
    _launch(router_logits, ids, weights, new_ids, new_weights, num_real, fell_back, out_ids, out_weights, active,
            table_row, step_fell_back, check=True)  # fmt: skip
    return out_ids, out_weights, fell_back, active
