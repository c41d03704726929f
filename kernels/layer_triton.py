"""The serving runtime's bookkeeping after a policy's decision, for one MoE layer call, in one Triton launch.

What lynx_sglang/scheduler/runtime.py does per layer call in torch is more than 60 small ops, each a kernel
under a decode step's CUDA graph (at 2-3 us a kernel, milliseconds per step for a 48-layer model):

1. **Checks** (`finalize_triton`): the layer falls back to the model's own routing for this step when a
   real row has non-finite router logits, or the decision has an id outside [0, E) or a non-finite
   weight in a real row; the outputs are the decision, or the model's routing when it fell back.
2. **Active mask**: the experts the final ids use in real rows (ids clamped, as `ids_to_mask`).
3. **Statistics** (also alone: `record_triton`): one row of the [layers, 7] float64 table gets

       steps, tokens, distinct_before, distinct_after, rerouted, mass_dropped, fallbacks

   each (but `fallbacks`) counted only when the layer did not fall back. `mass_dropped` sums the router
   probability (softmax of the logits; a row with NaN, +inf or only -inf counts 0, as torch's softmax
   then `nan_to_num(0)`) of the original experts a row lost. Counts are exact; the mass is summed in
   float64 from fp32 probabilities, so it agrees with the torch sum (fp32) to float rounding.

One program, a loop over the rows (two when it checks: the fallback is decided over all rows first).
Static grid, no host sync: graph-capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .routing_triton import _column, warps_for
from .triton_moe import INTERPRETING

STAT_FIELDS = 7
STAT_FIELDS_C = tl.constexpr(STAT_FIELDS)


@triton.jit
def _finite(x):
    return (x == x) & (tl.abs(x) != float("inf"))


@triton.jit
def _layer_kernel(
    logits_ptr, original_ids_ptr, original_weights_ptr, new_ids_ptr, new_weights_ptr, real_ptr, fell_back_ptr,
    out_ids_ptr, out_weights_ptr, mask_ptr, table_row_ptr, step_fell_back_ptr,
    stride_logits, stride_original_ids, stride_original_weights, stride_new_ids, stride_new_weights,
    num_rows, num_experts,
    TOP_K: tl.constexpr, CHECK: tl.constexpr, MASK: tl.constexpr, STATS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    cols = tl.arange(0, BLOCK_E)
    slot = tl.arange(0, BLOCK_K)
    col_ok = cols < num_experts
    slot_ok = slot[None, :] < TOP_K

    if CHECK:  # over every row first: whether the layer falls back
        bad = tl.zeros([BLOCK_T], dtype=tl.int32)
        for start in range(0, num_rows, BLOCK_T):
            rows = start + tl.arange(0, BLOCK_T)
            row_ok = rows < num_rows
            real = (tl.load(real_ptr + rows, mask=row_ok, other=0) != 0) & row_ok
            in_row = row_ok[:, None] & col_ok[None, :]
            x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_logits + cols[None, :], mask=in_row,
                        other=0.0).to(tl.float32)  # fmt: skip
            in_slots = row_ok[:, None] & slot_ok
            ids = tl.load(new_ids_ptr + rows[:, None].to(tl.int64) * stride_new_ids + slot[None, :], mask=in_slots,
                          other=0)  # fmt: skip
            # checked in the dtype they are returned in (as the torch path: cast first, then isfinite)
            weights = tl.load(new_weights_ptr + rows[:, None].to(tl.int64) * stride_new_weights + slot[None, :],
                              mask=in_slots, other=0.0).to(original_weights_ptr.dtype.element_ty).to(tl.float32)  # fmt: skip
            broken = ~_finite(x) & in_row
            wrong = ((ids < 0) | (ids >= num_experts) | ~_finite(weights)) & in_slots
            row_bad = (tl.sum(broken.to(tl.int32), axis=1) + tl.sum(wrong.to(tl.int32), axis=1)) > 0
            bad += (row_bad & real).to(tl.int32)
        fell = tl.sum(bad, axis=0) > 0
        tl.store(fell_back_ptr, fell.to(tl.uint8))
    else:
        fell = tl.load(fell_back_ptr) != 0

    used = tl.zeros([BLOCK_E], dtype=tl.int32)
    before = tl.zeros([BLOCK_E], dtype=tl.int32)
    tokens = tl.zeros([BLOCK_T], dtype=tl.int32)
    rerouted = tl.zeros([BLOCK_T], dtype=tl.int32)
    dropped = tl.zeros([BLOCK_T], dtype=tl.float64)
    for start in range(0, num_rows, BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)
        row_ok = rows < num_rows
        real = (tl.load(real_ptr + rows, mask=row_ok, other=0) != 0) & row_ok
        in_slots = row_ok[:, None] & slot_ok
        original = tl.load(original_ids_ptr + rows[:, None].to(tl.int64) * stride_original_ids + slot[None, :],
                           mask=in_slots, other=0)  # fmt: skip
        final = tl.load(new_ids_ptr + rows[:, None].to(tl.int64) * stride_new_ids + slot[None, :], mask=in_slots,
                        other=0)  # fmt: skip
        if CHECK:
            final = tl.where(fell, original, final.to(original.dtype))
            out = rows[:, None].to(tl.int64) * TOP_K + slot[None, :]  # fresh [T, k] outputs
            tl.store(out_ids_ptr + out, final, mask=in_slots)
            weights = tl.load(new_weights_ptr + rows[:, None].to(tl.int64) * stride_new_weights + slot[None, :],
                              mask=in_slots, other=0.0)  # fmt: skip
            given = tl.load(original_weights_ptr + rows[:, None].to(tl.int64) * stride_original_weights
                            + slot[None, :], mask=in_slots, other=0.0)  # fmt: skip
            tl.store(out_weights_ptr + out, tl.where(fell, given, weights.to(given.dtype)), mask=in_slots)
        if STATS:
            kept = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int1)
            for j in tl.static_range(TOP_K):
                kept = kept | (original == _column(final, slot, j)[:, None])
            lost = ~kept & slot_ok & real[:, None]
            rerouted += (tl.sum(lost.to(tl.int32), axis=1) > 0).to(tl.int32)
            tokens += real.to(tl.int32)
            in_row = row_ok[:, None] & col_ok[None, :]
            x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_logits + cols[None, :], mask=in_row,
                        other=float("-inf")).to(tl.float32)  # fmt: skip
            # softmax(x).nan_to_num(0): a row with NaN or +inf, or only -inf, is NaN in torch, hence 0.
            top = tl.max(tl.where(x == x, x, float("-inf")), axis=1)
            broken = (tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), axis=1) > 0) | (top == float("-inf"))
            exps = tl.where(in_row & ~broken[:, None], tl.exp(x - tl.where(broken, 0.0, top)[:, None]), 0.0)
            total = tl.sum(exps, axis=1)
            probs = exps / tl.where(total > 0, total, 1.0)[:, None]
        # ids as ids_to_mask counts them: clamped to [0, E), real rows only
        original = tl.minimum(tl.maximum(original, 0), num_experts - 1).to(tl.int32)
        final = tl.minimum(tl.maximum(final, 0), num_experts - 1).to(tl.int32)
        for j in tl.static_range(TOP_K):
            now = (cols[None, :] == _column(final, slot, j)[:, None]) & real[:, None]
            used = tl.maximum(used, tl.max(now.to(tl.int32), axis=0))
            if STATS:
                was = (cols[None, :] == _column(original, slot, j)[:, None]) & real[:, None]
                before = tl.maximum(before, tl.max(was.to(tl.int32), axis=0))
                lost_j = tl.sum(tl.where(slot[None, :] == j, lost.to(tl.int32), 0), axis=1) > 0
                dropped += tl.where(lost_j, tl.sum(tl.where(was, probs, 0.0), axis=1), 0.0).to(tl.float64)

    if MASK:
        tl.store(mask_ptr + cols, used.to(tl.uint8), mask=col_ok)
    if STATS:
        fell_back = fell.to(tl.float64)
        counted = 1.0 - fell_back
        figures = tl.arange(0, 8)
        values = tl.where(figures == 0, counted, 0.0)
        values = tl.where(figures == 1, tl.sum(tokens, axis=0).to(tl.float64) * counted, values)
        values = tl.where(figures == 2, tl.sum(before, axis=0).to(tl.float64) * counted, values)
        values = tl.where(figures == 3, tl.sum(used, axis=0).to(tl.float64) * counted, values)
        values = tl.where(figures == 4, tl.sum(rerouted, axis=0).to(tl.float64) * counted, values)
        values = tl.where(figures == 5, tl.sum(dropped, axis=0) * counted, values)
        values = tl.where(figures == 6, fell_back, values)
        in_table = figures < STAT_FIELDS_C
        table = tl.load(table_row_ptr + figures, mask=in_table, other=0.0)
        tl.store(table_row_ptr + figures, table + values, mask=in_table)
        tl.store(step_fell_back_ptr, tl.maximum(tl.load(step_fell_back_ptr), fell_back))



def launch_sizes(num_rows: int, num_experts: int, top_k: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_E, BLOCK_K, warps): shapes only. Warps as the routing's launch 1 (no more threads
    than the tile has elements: routing_triton.warps_for)."""
    block_e = max(triton.next_power_of_2(num_experts), 16)
    block_t = max(1, min(64, 4096 // block_e, triton.next_power_of_2(num_rows)))
    return block_t, block_e, triton.next_power_of_2(top_k), warps_for(block_t, block_e, block_t)[0]


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.stride(1) == 1 else tensor.contiguous()


def _launch(logits, original_ids, original_weights, new_ids, new_weights, real_rows, fell_back, out_ids, out_weights,
            mask, table_row, step_fell_back, check: bool):  # fmt: skip
    num_rows, num_experts = logits.shape
    top_k = original_ids.shape[1]
    block_t, block_e, block_k, warps = launch_sizes(num_rows, num_experts, top_k)
    logits, original_ids, original_weights, new_ids, new_weights = (
        _rows(t) for t in (logits, original_ids, original_weights, new_ids, new_weights)
    )
    stats = table_row is not None
    if stats and (table_row.dtype != torch.float64 or table_row.numel() < STAT_FIELDS or not table_row.is_contiguous()):
        raise ValueError("table_row must be a contiguous float64 row of the statistics table")
    placeholder = fell_back.view(torch.uint8)
    _layer_kernel[(1,)](
        logits, original_ids, original_weights, new_ids, new_weights, real_rows.view(torch.uint8), placeholder,
        placeholder if out_ids is None else out_ids, placeholder if out_weights is None else out_weights,
        placeholder if mask is None else mask.view(torch.uint8), table_row if stats else placeholder,
        step_fell_back if stats else placeholder,
        logits.stride(0), original_ids.stride(0), original_weights.stride(0), new_ids.stride(0), new_weights.stride(0),
        num_rows, num_experts,
        TOP_K=top_k, CHECK=check, MASK=mask is not None, STATS=stats, BLOCK_T=block_t, BLOCK_E=block_e,
        BLOCK_K=block_k, **({} if INTERPRETING else {"num_warps": warps}),
    )  # fmt: skip


def record_triton(table_row: torch.Tensor, step_fell_back: torch.Tensor, real_rows: torch.Tensor,
                  router_logits: torch.Tensor, original_ids: torch.Tensor, final_ids: torch.Tensor,
                  fell_back: torch.Tensor) -> None:
    """Add one layer call's figures to `table_row` ([7] float64) and fold `fell_back` (0-dim bool)
    into `step_fell_back` (0-dim float64). One launch; allocates nothing."""
    _launch(router_logits, original_ids, final_ids, final_ids, final_ids, real_rows, fell_back, None, None, None,
            table_row, step_fell_back, check=False)  # fmt: skip


def finalize_triton(router_logits, ids, weights, new_ids, new_weights, real_rows, *, mask: bool,
                    table_row=None, step_fell_back=None):
    """The layer's final routing after a policy proposed (new_ids, new_weights): (ids [T, k] in ids'
    dtype, weights [T, k] in weights' dtype, fell_back 0-dim bool, active mask [E] bool or None),
    and the statistics row updated when `table_row` is given. One launch; allocations only."""
    num_rows, num_experts = router_logits.shape
    out_ids = torch.empty(ids.shape, dtype=ids.dtype, device=ids.device)
    out_weights = torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)
    fell_back = torch.empty((), dtype=torch.bool, device=ids.device)
    active = torch.empty(num_experts, dtype=torch.bool, device=ids.device) if mask else None
    _launch(router_logits, ids, weights, new_ids, new_weights, real_rows, fell_back, out_ids, out_weights, active,
            table_row, step_fell_back, check=True)  # fmt: skip
    return out_ids, out_weights, fell_back, active
