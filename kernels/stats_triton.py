"""Routing statistics of one MoE layer call in one Triton launch (the serving runtime's per-layer figures).

The torch version (lynx_sglang/scheduler/stats.py, `RoutingStats.record`) issues about 46 small ops per
layer call; under a decode step's CUDA graph each is a kernel of a few microseconds, so for a 48-layer
model the statistics alone would cost milliseconds per step. This kernel computes the same figures in
one program, looping over the rows, and adds them to the layer's row of the float64 table:

    steps, tokens, distinct_before, distinct_after, rerouted, mass_dropped, fallbacks

each (but `fallbacks`) counted only when the layer did not fall back. `mass_dropped` sums the router
probability (softmax of the logits; rows with NaN, +inf or only -inf count 0, as torch's softmax then
`nan_to_num(0)`) of the original experts a row lost. Counts are exact; the mass is summed in float64
from fp32 probabilities, so it agrees with the torch sum (fp32) to float rounding. Static grid (1,),
no host sync: graph-capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_moe import INTERPRETING

_STAT_FIELDS = 7


@triton.jit
def _column(matrix, slot, j):
    """Column j of a small [BT, BK] matrix (exact: one term is non-zero)."""
    return tl.sum(tl.where(slot[None, :] == j, matrix, 0), axis=1)


@triton.jit
def _routing_stats_kernel(
    logits_ptr, original_ptr, final_ptr, real_ptr, fell_back_ptr, table_row_ptr, step_fell_back_ptr,
    stride_logits, stride_original, stride_final, num_rows, num_experts,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    cols = tl.arange(0, BLOCK_E)
    slot = tl.arange(0, BLOCK_K)
    col_ok = cols < num_experts
    slot_ok = slot[None, :] < TOP_K
    before = tl.zeros([BLOCK_E], dtype=tl.int32)
    after = tl.zeros([BLOCK_E], dtype=tl.int32)
    tokens = tl.zeros([BLOCK_T], dtype=tl.int32)
    rerouted = tl.zeros([BLOCK_T], dtype=tl.int32)
    dropped = tl.zeros([BLOCK_T], dtype=tl.float64)
    for start in range(0, num_rows, BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)
        row_ok = rows < num_rows
        real = (tl.load(real_ptr + rows, mask=row_ok, other=0) != 0) & row_ok
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_logits + cols[None, :], mask=mask,
                    other=float("-inf")).to(tl.float32)  # fmt: skip
        # softmax(x).nan_to_num(0): a row with NaN or +inf, or only -inf, is NaN in torch, hence 0.
        top = tl.max(tl.where(x == x, x, float("-inf")), axis=1)
        broken = (tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), axis=1) > 0) | (top == float("-inf"))
        exps = tl.where(mask & ~broken[:, None], tl.exp(x - tl.where(broken, 0.0, top)[:, None]), 0.0)
        total = tl.sum(exps, axis=1)
        probs = exps / tl.where(total > 0, total, 1.0)[:, None]

        in_slots = row_ok[:, None] & slot_ok
        original = tl.load(original_ptr + rows[:, None].to(tl.int64) * stride_original + slot[None, :],
                           mask=in_slots, other=0)  # fmt: skip
        final = tl.load(final_ptr + rows[:, None].to(tl.int64) * stride_final + slot[None, :], mask=in_slots, other=0)
        kept = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int1)
        for j in tl.static_range(TOP_K):
            kept = kept | (original == _column(final, slot, j)[:, None])
        lost = ~kept & slot_ok & real[:, None]
        rerouted += (tl.sum(lost.to(tl.int32), axis=1) > 0).to(tl.int32)
        tokens += real.to(tl.int32)
        # ids as ids_to_mask counts them: clamped to [0, E), real rows only
        original = tl.minimum(tl.maximum(original, 0), num_experts - 1).to(tl.int32)
        final = tl.minimum(tl.maximum(final, 0), num_experts - 1).to(tl.int32)
        for j in tl.static_range(TOP_K):
            was = (cols[None, :] == _column(original, slot, j)[:, None]) & real[:, None]
            now = (cols[None, :] == _column(final, slot, j)[:, None]) & real[:, None]
            before = tl.maximum(before, tl.max(was.to(tl.int32), axis=0))
            after = tl.maximum(after, tl.max(now.to(tl.int32), axis=0))
            lost_j = tl.sum(tl.where(slot[None, :] == j, lost.to(tl.int32), 0), axis=1) > 0
            dropped += tl.where(lost_j, tl.sum(tl.where(was, probs, 0.0), axis=1), 0.0).to(tl.float64)

    fell_back = (tl.load(fell_back_ptr) != 0).to(tl.float64)
    counted = 1.0 - fell_back
    figures = tl.arange(0, 8)
    values = tl.where(figures == 0, counted, 0.0)
    values = tl.where(figures == 1, tl.sum(tokens, axis=0).to(tl.float64) * counted, values)
    values = tl.where(figures == 2, tl.sum(before, axis=0).to(tl.float64) * counted, values)
    values = tl.where(figures == 3, tl.sum(after, axis=0).to(tl.float64) * counted, values)
    values = tl.where(figures == 4, tl.sum(rerouted, axis=0).to(tl.float64) * counted, values)
    values = tl.where(figures == 5, tl.sum(dropped, axis=0) * counted, values)
    values = tl.where(figures == 6, fell_back, values)
    in_table = figures < 7
    table = tl.load(table_row_ptr + figures, mask=in_table, other=0.0)
    tl.store(table_row_ptr + figures, table + values, mask=in_table)
    tl.store(step_fell_back_ptr, tl.maximum(tl.load(step_fell_back_ptr), fell_back))


def record_triton(table_row: torch.Tensor, step_fell_back: torch.Tensor, real_rows: torch.Tensor,
                  router_logits: torch.Tensor, original_ids: torch.Tensor, final_ids: torch.Tensor,
                  fell_back: torch.Tensor) -> None:
    """Add one layer call's figures to `table_row` ([7] float64) and fold `fell_back` (0-dim bool)
    into `step_fell_back` (0-dim float64). One launch; allocates nothing."""
    if table_row.dtype != torch.float64 or table_row.numel() < _STAT_FIELDS or not table_row.is_contiguous():
        raise ValueError("table_row must be a contiguous float64 row of the statistics table")
    num_rows, num_experts = router_logits.shape
    block_t, block_e, block_k, warps = launch_sizes(num_rows, num_experts, original_ids.shape[1])
    router_logits, original_ids, final_ids = (t if t.stride(1) == 1 else t.contiguous()
                                              for t in (router_logits, original_ids, final_ids))  # fmt: skip
    _routing_stats_kernel[(1,)](
        router_logits, original_ids, final_ids, real_rows.view(torch.uint8), fell_back.view(torch.uint8), table_row,
        step_fell_back, router_logits.stride(0), original_ids.stride(0), final_ids.stride(0), num_rows, num_experts,
        TOP_K=original_ids.shape[1], BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=block_k,
        **({} if INTERPRETING else {"num_warps": warps}),
    )  # fmt: skip


def launch_sizes(num_rows: int, num_experts: int, top_k: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_E, BLOCK_K, warps): shapes only. Warps no more than the tile has elements (the
    Triton 3.6 miscompile routing_triton.warps_for avoids)."""
    block_e = max(triton.next_power_of_2(num_experts), 16)
    block_t = max(1, min(64, 4096 // block_e, triton.next_power_of_2(num_rows)))
    return block_t, block_e, triton.next_power_of_2(top_k), max(1, min(4, block_t * block_e // 32))
