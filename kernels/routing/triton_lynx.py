"""lynx's picks in launch 2 of the fused routing, without a top-k per row: a row takes every expert above
its bin threshold b* (launch 1 counted those), plus the first `need` bin-b* experts in the batch's
expert order. Three ways to find them, alike in result (LaunchConfig.picks): 2, the default, a binary
search per row over the batch order in bit masks (an AND and a popcount per step, a few words per
row); 0, a prefix count over the row's bins gathered in that order; 1, a rank cut over its bins in
expert order. 0 and 1 remain for the launch sweep to compare."""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..interpret import reduces_like
from .triton_common import HARDWARE_POPCOUNT, ROW_ORDER, ROW_PICKED, row_need, row_threshold, row_voter
from .triton_order import share


@triton.jit
def _popcount(x, HARDWARE: tl.constexpr):
    """Set bits of each int64 of x, as int32."""
    if HARDWARE:
        return libdevice.popc(x)
    else:
        u = x.to(tl.uint64, bitcast=True)
        u = u - ((u >> 1) & 0x5555555555555555)
        u = (u & 0x3333333333333333) + ((u >> 2) & 0x3333333333333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F0F0F0F0F
        return ((u * 0x0101010101010101) >> 56).to(tl.int32)


@reduces_like(np.bitwise_or)
@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _threshold_bins(start, columns, bins_ptr, row_state_ptr, num_rows, num_experts, col_ok, BLOCK_T: tl.constexpr):
    """Rows start.. start+BLOCK_T: (voter, threshold bin b*, how many bin-b* experts it needs, its bins
    at `columns` as int32: the batch's expert order, or the experts in index order)."""
    rows = start + tl.arange(0, BLOCK_T)
    row_ok = rows < num_rows
    state = tl.load(row_state_ptr + rows, mask=row_ok, other=0)
    voter, threshold, need = row_voter(state), row_threshold(state), row_need(state)
    bins = tl.load(bins_ptr + rows[:, None].to(tl.int64) * num_experts + columns[None, :],
                   mask=row_ok[:, None] & col_ok[None, :], other=-128).to(tl.int32)  # fmt: skip
    return voter, threshold, need, bins


@triton.jit
def batch_order(scratch, rank, cols, col_ok, BLOCK_E: tl.constexpr):
    """[E]: the expert at each place of the batch's order (the inverse of `rank`), through the scratch."""
    tl.debug_barrier()
    tl.store(scratch + ROW_ORDER * BLOCK_E + rank, cols.to(tl.int64), mask=col_ok)
    tl.debug_barrier()
    return tl.load(scratch + ROW_ORDER * BLOCK_E + cols, mask=col_ok, other=0)


@triton.jit
def lynx_picks_gathered(scratch, lynx_rank, bins_ptr, row_state_ptr, num_rows, num_experts,
                        cols, col_ok, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """[E] bool: experts some voter takes from its threshold bin (the first `need` of them in the
    batch's expert order)."""
    order = batch_order(scratch, lynx_rank, cols, col_ok, BLOCK_E)
    picked = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in range(0, num_rows, BLOCK_T):
        voter, threshold, need, bins = _threshold_bins(start, order, bins_ptr, row_state_ptr,
                                                       num_rows, num_experts, col_ok, BLOCK_T)  # fmt: skip
        in_bin = (bins == threshold[:, None]) & col_ok[None, :]
        first = tl.cumsum(in_bin.to(tl.int32), axis=1) <= need[:, None]
        picked = tl.maximum(picked, tl.max((in_bin & first & voter[:, None]).to(tl.int32), axis=0))
    share(scratch, ROW_PICKED, picked, cols, BLOCK_E)  # by rank -> by expert
    return tl.load(scratch + ROW_PICKED * BLOCK_E + lynx_rank, mask=col_ok, other=0) != 0


@triton.jit
def lynx_picks_by_rank(lynx_rank, bins_ptr, row_state_ptr, num_rows, num_experts, cols,
                       col_ok, TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """The same picks as `lynx_picks_gathered`, another way (LaunchConfig.picks = 1): each row's bins
    read in expert order (contiguous, no gather), its cut the need-th lowest batch rank among its bin-b*
    experts (TOP_K min-reductions per row, need <= TOP_K), the picks those at or before the cut."""
    picked = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
    for start in range(0, num_rows, BLOCK_T):
        voter, threshold, need, bins = _threshold_bins(start, cols, bins_ptr, row_state_ptr,
                                                       num_rows, num_experts, col_ok, BLOCK_T)  # fmt: skip
        in_bin = (bins == threshold[:, None]) & col_ok[None, :] & voter[:, None]
        key = tl.where(in_bin, lynx_rank[None, :], BLOCK_E)  # ranks are 0..E-1, each once
        cut = tl.full([BLOCK_T], -1, dtype=tl.int32)
        for j in tl.static_range(TOP_K):
            lowest = tl.min(key, axis=1)
            cut = tl.where(j < need, lowest, cut)
            key = tl.where(key == lowest[:, None], BLOCK_E, key)
        picked = tl.maximum(picked, (in_bin & (lynx_rank[None, :] <= cut[:, None])).to(tl.int32))
    return tl.max(picked, axis=0) != 0


@triton.jit
def lynx_picks_by_bits(scratch, order, bin_masks_ptr, row_state_ptr, num_rows, cols, col_ok, WORDS: tl.constexpr,
                       BITS_T: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """The same picks as `lynx_picks_gathered`, a third way (LaunchConfig.picks = 2), with no pass over a
    row's E experts: launch 1 stored each voter's threshold-bin experts as bits. Here, once, the bits of the
    experts in the first i + 1 places of the batch's order (for every i); then per row a binary search
    for the first i whose prefix holds `need` of its experts (log2(E) steps of an AND and a popcount),
    and its picks are its experts in that prefix. `order`: the expert at each place of the batch's
    order."""
    tl.debug_barrier()  # every thread has read what it gathered from the scratch: rows may be overwritten
    words = tl.arange(0, WORDS)
    bit = tl.full([1], 1, dtype=tl.int64) << (order % 64)
    for w in tl.static_range(WORDS):  # [BLOCK_E places, WORDS] over scratch rows 0 .. WORDS - 1
        first = tl.cumsum(tl.where(col_ok & (order // 64 == w), bit, 0), axis=0)  # distinct bits: sum = OR
        tl.store(scratch + cols * WORDS + w, first)
    tl.debug_barrier()
    found = tl.zeros([BITS_T, WORDS], dtype=tl.int64)
    for start in range(0, num_rows, BITS_T):
        rows = start + tl.arange(0, BITS_T)
        row_ok = rows < num_rows
        masks = tl.load(bin_masks_ptr + rows[:, None].to(tl.int64) * WORDS + words[None, :], mask=row_ok[:, None],
                        other=0)  # fmt: skip
        need = row_need(tl.load(row_state_ptr + rows, mask=row_ok, other=0))
        low = tl.zeros([BITS_T], dtype=tl.int32)
        high = tl.full([BITS_T], BLOCK_E - 1, dtype=tl.int32)
        for step in tl.static_range(9):  # log2(BLOCK_E) halvings of [0, BLOCK_E), BLOCK_E <= 512
            if (1 << step) < BLOCK_E:
                middle = (low + high) >> 1
                prefix = tl.load(scratch + middle[:, None] * WORDS + words[None, :])
                enough = tl.sum(_popcount(masks & prefix, HARDWARE_POPCOUNT), axis=1) >= need
                high = tl.where(enough, middle, high)
                low = tl.where(enough, low, middle + 1)
        found = found | (masks & tl.load(scratch + low[:, None] * WORDS + words[None, :]))
    found = tl.reduce(found, 0, _bit_or)
    word = tl.sum(tl.where(words[None, :] == (cols // 64)[:, None], found[None, :], 0), axis=1)
    return ((word >> (cols % 64).to(tl.int64)) & 1) != 0
