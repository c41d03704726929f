"""Exact orders of the experts for launch 2 of the fused routing: ranks by O(E^2) integer counting, or
bitonic sorts of packed int64 keys where the keys fit (triton_plan decides which), and the sums of
launch 1's per-program partials. Every program computes them alike: no float, no atomics."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import ROW_KEY, ROW_SORT, ROW_TIE, ROW_VALUE


@triton.jit
def share(scratch, row, vector, cols, BLOCK_E: tl.constexpr):
    """Write an [E] vector where every thread can gather from it."""
    tl.debug_barrier()
    tl.store(scratch + row * BLOCK_E + cols, vector.to(tl.int64))
    tl.debug_barrier()


@triton.jit
def rank_desc(scratch, key, second, cols, num_experts, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr,
              HAS_SECOND: tl.constexpr):
    """rank[e] = how many experts e' < E come before e (0 = first): a larger key, or an equal key and
    (HAS_SECOND) a larger second key, or equal keys and a lower index. One pass of exact integer
    counting, O(E^2) in chunks: no sort, no float."""
    share(scratch, ROW_KEY, key, cols, BLOCK_E)
    if HAS_SECOND:
        share(scratch, ROW_TIE, second, cols, BLOCK_E)
    key = key.to(tl.int64)
    second = second.to(tl.int64)
    rank = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in tl.static_range(0, BLOCK_E, CHUNK):
        other = start + tl.arange(0, CHUNK)
        other_key = tl.load(scratch + ROW_KEY * BLOCK_E + other)[:, None]
        tie_after = other[:, None] < cols[None, :]
        if HAS_SECOND:
            other_second = tl.load(scratch + ROW_TIE * BLOCK_E + other)[:, None]
            tie_after = (other_second > second[None, :]) | ((other_second == second[None, :]) & tie_after)
        before = (other_key > key[None, :]) | ((other_key == key[None, :]) & tie_after)
        rank += tl.sum((before & (other < num_experts)[:, None]).to(tl.int32), axis=0)
    return rank


@triton.jit
def sort_keys(key, tie, valid, cols, LOG_E: tl.constexpr):
    """[E] int64 words in the order (key desc, then tie asc), each carrying its expert in the low LOG_E
    bits: key << 2 LOG_E | (BLOCK_E - 1 - tie) << LOG_E | e. Invalid experts get key -1 (after every
    valid one). Needs 0 <= key < 2**(63 - 2 LOG_E) and distinct ties (the host checks the bound:
    launch_config.sort_fits)."""
    mask: tl.constexpr = (1 << LOG_E) - 1
    high = tl.where(valid, key.to(tl.int64), -1) << (2 * LOG_E)
    return high | ((mask - tie.to(tl.int64)) << LOG_E) | cols.to(tl.int64)


@triton.jit
def sort_desc(scratch, words, cols, BLOCK_E: tl.constexpr):
    """The words sorted, largest first: one bitonic sort, about E log2(E)^2 / 2 compare-exchanges
    across the block, in place of an O(E^2) ranking. The words go through the scratch first: a vector
    reduced from a tile of partial sums can hold several experts per thread, replicated over the
    others, and tl.sort keeps its layout (E 64, T 32, sm_90: launch 2 had 4,408 instructions without
    this pass, 2,584 with it)."""
    tl.debug_barrier()
    tl.store(scratch + ROW_SORT * BLOCK_E + cols, words)
    tl.debug_barrier()
    return tl.sort(tl.load(scratch + ROW_SORT * BLOCK_E + cols), descending=True)


@triton.jit
def sorted_experts(scratch, words, cols, BLOCK_E: tl.constexpr):
    """[E] the experts in the order of their `sort_keys` words (place i holds the i-th)."""
    return (sort_desc(scratch, words, cols, BLOCK_E) & (BLOCK_E - 1)).to(tl.int32)


@triton.jit
def first_by_sort(scratch, words, count, cols, BLOCK_E: tl.constexpr):
    """[E] bool: the experts among the first `count` of the order of their `sort_keys` words (the
    count-th largest word read back from the sorted block: no scatter of ranks)."""
    ordered = sort_desc(scratch, words, cols, BLOCK_E)
    last = tl.sum(tl.where(cols == count - 1, ordered, 0), axis=0)
    return (words >= last) & (count > 0)


@triton.jit
def before_in_order(scratch, flag, rank, value, cols, num_experts, BLOCK_E: tl.constexpr,
                    CHUNK: tl.constexpr):
    """For each e: how many flagged experts have a lower rank, and the sum of their values."""
    share(scratch, ROW_KEY, flag, cols, BLOCK_E)
    share(scratch, ROW_TIE, rank, cols, BLOCK_E)
    share(scratch, ROW_VALUE, value, cols, BLOCK_E)
    count = tl.zeros([BLOCK_E], dtype=tl.int64)
    total = tl.zeros([BLOCK_E], dtype=tl.int64)
    for start in tl.static_range(0, BLOCK_E, CHUNK):
        other = start + tl.arange(0, CHUNK)
        other_flag = tl.load(scratch + ROW_KEY * BLOCK_E + other)[:, None]
        other_rank = tl.load(scratch + ROW_TIE * BLOCK_E + other)[:, None]
        other_value = tl.load(scratch + ROW_VALUE * BLOCK_E + other)[:, None]
        before = (other_flag != 0) & (other_rank < rank[None, :]) & (other < num_experts)[:, None]
        count += tl.sum(before.to(tl.int64), axis=0)
        total += tl.sum(tl.where(before, other_value, 0), axis=0)
    return count, total


@triton.jit
def before_in_sorted(scratch, order, flag, value, cols, BLOCK_E: tl.constexpr):
    """As `before_in_order`, given the order itself (the expert at each place, a permutation of the
    block: `sorted_experts`): prefix sums along it, then scattered back to the experts."""
    share(scratch, ROW_KEY, flag, cols, BLOCK_E)
    share(scratch, ROW_VALUE, value, cols, BLOCK_E)
    flagged = tl.load(scratch + ROW_KEY * BLOCK_E + order) != 0
    flagged_value = tl.where(flagged, tl.load(scratch + ROW_VALUE * BLOCK_E + order), 0)
    count = tl.cumsum(flagged.to(tl.int64), axis=0) - flagged.to(tl.int64)
    total = tl.cumsum(flagged_value, axis=0) - flagged_value
    tl.debug_barrier()  # every thread has gathered: the rows may be overwritten
    tl.store(scratch + ROW_KEY * BLOCK_E + order, count)
    tl.store(scratch + ROW_VALUE * BLOCK_E + order, total)
    tl.debug_barrier()
    return tl.load(scratch + ROW_KEY * BLOCK_E + cols), tl.load(scratch + ROW_VALUE * BLOCK_E + cols)


@triton.jit
def load_parts(part_ptr, num_parts, stride, cols, PARTS: tl.constexpr):
    """[PARTS, E]: the [E] partial sums of every launch-1 program (num_parts <= PARTS), 0 past them."""
    part = tl.arange(0, PARTS)
    return tl.load(part_ptr + part[:, None] * stride + cols[None, :], mask=(part < num_parts)[:, None], other=0)


@triton.jit
def sum_parts(part_ptr, num_parts, stride, cols, BLOCK_E: tl.constexpr, PARTS: tl.constexpr):
    """Sum over programs of launch 1 of their [E] partial sums, as int64, added in the partials' own
    type (int32 counts stay below T: half the adds of int64). A tile of PARTS programs per load: a loop
    of one load per program waits for each load in turn (the decision's cost grew with T)."""
    total = tl.zeros([BLOCK_E], dtype=part_ptr.dtype.element_ty)
    for start in range(0, num_parts, PARTS):
        total += tl.sum(load_parts(part_ptr + start * stride, num_parts - start, stride, cols, PARTS), axis=0)
    return total.to(tl.int64)
