"""Launch 2 of the fused routing, `routing_decide_kernel`, grid cdiv(T, BLOCK_T): every program makes
the batch decision (triton_decide), then remaps its own block of rows: each token re-takes its
top-`slots` over the active set (unfillable slots repeat its first choice at weight 0), with weights
renormalised or rescaled to the original top-k mass, as remap._remap_clean."""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_shared import column, is_real_row
from .triton_common import (
    KEEP_NONE,
    ROW_ACTIVE,
    ROW_TOPPED,
    SCRATCH_ROWS,
    STATE_FINITE,
    TAKEN,
    clean_logits,
    key_value,
    order_key,
)
from .triton_decide import decide_active, kept_rows
from .triton_order import share

_SCRATCH_ROWS = tl.constexpr(SCRATCH_ROWS)


@triton.jit
def remap_rows(
    active_ptr, topped_ptr, logits_ptr, topk_ids_ptr, topk_weights_ptr, out_ids_ptr, out_weights_ptr,
    num_real_ptr, own_ids_ptr, own_values_ptr, own_weights_ptr, row_state_ptr, given_keep_ptr,
    stride_logits, stride_ids, stride_weights, num_real, num_rows, num_experts, dropped_cap_units,
    rows, cols, slot,
    TOP_K: tl.constexpr, SLOTS: tl.constexpr, KEEP_MODE: tl.constexpr, ANY_DROP: tl.constexpr,
    RENORMALIZE: tl.constexpr, NUM_REAL_MODE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """remap._remap_clean for a block of rows, given the active set at `active_ptr`."""
    row_ok = rows < num_rows
    col_ok = cols < num_experts
    slot_ok = slot[None, :] < TOP_K
    row_slot = rows[:, None] * BLOCK_K + slot[None, :]
    own_ids = tl.load(own_ids_ptr + row_slot, mask=row_ok[:, None] & slot_ok, other=0)
    own_values = tl.load(own_values_ptr + row_slot, mask=row_ok[:, None] & slot_ok, other=0.0)

    # The token's own experts that stay active keep their order at the front (every one of them beats
    # every expert outside its own top-k); the best active experts outside fill the rest.
    own_active = (tl.load(active_ptr + own_ids) != 0) & slot_ok
    # Prefix count over the (at most 8) slots, unrolled: tl.cumsum over this narrow axis crashes
    # Triton 3.6's scan lowering on sm_90 at some widths (top-1 at E 64, seen on an H100).
    position = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int32) - 1
    for j in tl.static_range(TOP_K):
        position += tl.where(slot[None, :] >= j, column(own_active.to(tl.int32), slot, j)[:, None], 0)
    new_ids = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int32)
    new_values = tl.full([BLOCK_T, BLOCK_K], float("-inf"), dtype=tl.float32)
    for j in tl.static_range(SLOTS):
        here = own_active & (position == j)
        filled = tl.max(here.to(tl.int32), axis=1) > 0
        new_ids = tl.where((slot[None, :] == j) & filled[:, None], tl.sum(tl.where(here, own_ids, 0), axis=1)[:, None],
                           new_ids)  # fmt: skip
        new_values = tl.where((slot[None, :] == j) & filled[:, None],
                              tl.sum(tl.where(here, own_values, 0.0), axis=1)[:, None], new_values)  # fmt: skip
    kept = tl.sum(own_active.to(tl.int32), axis=1)
    missing = tl.where(row_ok, tl.maximum(SLOTS - kept, 0), 0)
    extra_rounds = tl.max(missing, axis=0)
    if extra_rounds > 0:
        x, _ = clean_logits(logits_ptr, stride_logits, rows, cols, row_ok, col_ok)
        active = tl.load(active_ptr + cols, mask=col_ok, other=0) != 0
        # Outside the row's own top-k = below its last (lowest) own expert's key, or equal to it and not
        # own: the model may have taken a higher column than a tied one (keys.own_topk_indices).
        keys = order_key(x)
        last_key = order_key(column(own_values, slot, TOP_K - 1))
        own = cols[None, :] < 0
        for j in tl.static_range(TOP_K):
            own = own | (cols[None, :] == column(own_ids, slot, j)[:, None])
        outside = (keys < last_key[:, None]) | ((keys == last_key[:, None]) & ~own)
        keys = tl.where(active[None, :] & col_ok[None, :] & outside, keys, TAKEN)
        for extra in range(0, extra_rounds):
            best = tl.max(keys, axis=1)
            pick = tl.min(tl.where(keys == best[:, None], cols[None, :], BLOCK_E), axis=1)
            hit = cols[None, :] == pick[:, None]
            value = key_value(best)
            place = (slot[None, :] == (kept + extra)[:, None]) & ((best != TAKEN) & (extra < missing))[:, None]
            new_ids = tl.where(place, pick[:, None], new_ids)
            new_values = tl.where(place, value[:, None], new_values)
            keys = tl.where(hit, TAKEN, keys)

    # Weights: softmax of the chosen logits, times the target mass; unfilled slots repeat the first
    # choice with weight 0.
    filled = (new_values > float("-inf")) & (slot[None, :] < SLOTS)
    first = column(new_ids, slot, 0)
    top = tl.max(new_values, axis=1)
    # exp in float64, rounded to fp32: fp32 tl.exp is ex2.approx on NVIDIA, off by more than 1e-6
    # relative at gaps of ~20 (a weight of 4.6e-11 differed by 1.1e-6 from torch on an H100).
    gap = new_values - tl.where(top > float("-inf"), top, 0.0)[:, None]
    exps = tl.where(filled, tl.exp(gap.to(tl.float64)).to(tl.float32), 0.0)
    total = tl.sum(exps, axis=1)
    weights = exps / tl.where(total > 0, total, 1.0)[:, None]
    in_mask = row_ok[:, None] & slot_ok
    given_ids = tl.load(topk_ids_ptr + rows[:, None].to(tl.int64) * stride_ids + slot[None, :], mask=in_mask, other=0)
    given_weights = tl.load(topk_weights_ptr + rows[:, None].to(tl.int64) * stride_weights + slot[None, :],
                            mask=in_mask, other=0.0)  # fmt: skip
    if not RENORMALIZE:
        target = tl.sum(given_weights.to(tl.float32), axis=1)
        target = tl.where((target == target) & (tl.abs(target) < float("inf")), target, 1.0)
        weights = weights * tl.maximum(target, 0.0)[:, None]
    new_ids = tl.where(filled, new_ids, first[:, None])

    # A row keeps the model's routing when it is padding, or all its experts are active and it is
    # finite with every slot used, or a kept row.
    state = tl.load(row_state_ptr + rows, mask=row_ok, other=0)
    real = is_real_row(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE)
    clamped = tl.minimum(tl.maximum(given_ids, 0), num_experts - 1).to(tl.int32)
    all_active = tl.sum(((tl.load(active_ptr + clamped) == 0) & slot_ok).to(tl.int32), axis=1) == 0
    keep_anyway = ((state & STATE_FINITE) != 0) & (SLOTS == TOP_K)
    if KEEP_MODE != KEEP_NONE:
        keep_anyway = keep_anyway | kept_rows(topped_ptr, rows, row_ok, slot, own_ids_ptr, own_weights_ptr,
                                               row_state_ptr, given_keep_ptr, dropped_cap_units, TOP_K, BLOCK_K,
                                               KEEP_MODE, ANY_DROP)  # fmt: skip
    keep = ~real | (all_active & keep_anyway)
    out = rows[:, None].to(tl.int64) * stride_ids + slot[None, :]
    tl.store(out_ids_ptr + out, tl.where(keep[:, None], given_ids, new_ids.to(given_ids.dtype)), mask=in_mask)
    out = rows[:, None].to(tl.int64) * stride_weights + slot[None, :]
    tl.store(out_weights_ptr + out, tl.where(keep[:, None], given_weights.to(tl.float32), weights), mask=in_mask)


@triton.jit
def routing_decide_kernel(
    logits_ptr, topk_ids_ptr, topk_weights_ptr, num_real_ptr,
    own_ids_ptr, own_values_ptr, own_weights_ptr, row_state_ptr, bins_ptr, bin_masks_ptr,
    part_tallies_ptr, part_mass_ptr,
    budget_max_ptr, budget_fraction_ptr, given_active_ptr, given_keep_ptr,
    scratch_ptr, out_ids_ptr, out_weights_ptr, active_out_ptr,
    stride_logits, stride_ids, stride_weights, num_real, num_rows, num_experts, num_parts,
    rule_n, fraction_units, dropped_cap_units,
    MODE: tl.constexpr, TOP_K: tl.constexpr, SLOTS: tl.constexpr, BETA: tl.constexpr,
    TIE_BY_MASS: tl.constexpr, KEEP_MODE: tl.constexpr, ANY_DROP: tl.constexpr, HAS_BUDGET: tl.constexpr,
    RENORMALIZE: tl.constexpr, NUM_REAL_MODE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr, SCAN_T: tl.constexpr,
    PARTS: tl.constexpr, ONE_LOAD: tl.constexpr, PICKS: tl.constexpr, WORDS: tl.constexpr, BITS_T: tl.constexpr,
    TALLY_BITS: tl.constexpr, TALLIES_PER_WORD: tl.constexpr, TALLY_WORDS: tl.constexpr,
    SORT_RULE: tl.constexpr, SORT_TOP_UP: tl.constexpr, SORT_CAP: tl.constexpr, LOG_E: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    scratch = scratch_ptr + pid * (_SCRATCH_ROWS * BLOCK_E)
    cols = tl.arange(0, BLOCK_E)
    slot = tl.arange(0, BLOCK_K)
    active = decide_active(
        scratch, bins_ptr, bin_masks_ptr, row_state_ptr, own_ids_ptr, own_weights_ptr,
        topk_ids_ptr, part_tallies_ptr, part_mass_ptr, num_parts,
        budget_max_ptr, budget_fraction_ptr, given_active_ptr, given_keep_ptr,
        stride_ids, num_rows, num_experts, rule_n, fraction_units, dropped_cap_units, cols, slot,
        MODE, TOP_K, SLOTS, BETA, TIE_BY_MASS, KEEP_MODE, ANY_DROP, HAS_BUDGET, BLOCK_E, BLOCK_K, CHUNK, SCAN_T,
        PARTS, ONE_LOAD, PICKS, WORDS, BITS_T, TALLY_BITS, TALLIES_PER_WORD, TALLY_WORDS, SORT_RULE, SORT_TOP_UP, SORT_CAP,
        LOG_E,
    )  # fmt: skip
    if pid == 0:
        tl.store(active_out_ptr + cols, active.to(tl.uint8), mask=cols < num_experts)
    share(scratch, ROW_ACTIVE, active, cols, BLOCK_E)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    remap_rows(
        scratch + ROW_ACTIVE * BLOCK_E, scratch + ROW_TOPPED * BLOCK_E, logits_ptr, topk_ids_ptr, topk_weights_ptr,
        out_ids_ptr, out_weights_ptr, num_real_ptr, own_ids_ptr, own_values_ptr, own_weights_ptr, row_state_ptr,
        given_keep_ptr, stride_logits, stride_ids, stride_weights, num_real, num_rows, num_experts,
        dropped_cap_units, rows, cols, slot,
        TOP_K, SLOTS, KEEP_MODE, ANY_DROP, RENORMALIZE, NUM_REAL_MODE, BLOCK_T, BLOCK_E, BLOCK_K,
    )  # fmt: skip
