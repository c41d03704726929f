"""Fused routing decision on CUDA: two Triton launches per layer call, static grids, no host sync.

Launch 1, ``_routing_rows_kernel``, grid cdiv(T, BLOCK_T): per row, clean logits, own top-k (ids,
logits; weights in fixed point where launch 2 reads them), and one int32 of row state: the voter and
finite flags, for lynx also the row's bin threshold b* (the k-th best bin) and how many bin-b* experts
it still needs. Per program, partial per-expert sums (votes, mass, lynx's
bin histogram, the experts some row takes for sure), written to its own slot: no atomics, no zeroing.
The counts (each at most T) are packed several to an int32 word, so launch 2 loads fewer.

Launch 2, ``_routing_decide_kernel``, grid cdiv(T, BLOCK_T): every program reduces the partials and
makes the same batch decision (orders by bitonic sorts of exact integer keys, or by counting where a
key is too wide or the rule needs ranks; the rule's active set, top-up, kept rows, budget cap), then
remaps its own block of rows. Recomputing the small [E] decision per program is cheaper than a third
launch or a grid-wide barrier.

Lynx's picks avoid a top-k per row: a row takes every expert above its bin threshold b*, plus the
first `need` bin-b* experts in the batch's expert order. By default (LaunchConfig.picks = 2) launch 1
stores each voter's bin-b* experts as bits, and launch 2 finds each row's cut by a binary search over
the batch order (an AND and a popcount per step), a few words per row instead of a pass over its E
bins; picks 0 (a prefix count over the row's bins gathered in that order) and 1 (a rank cut over its
bins in expert order) remain for the launch sweep to compare.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .routing import (
    FP32_BIG,
    MASS_BITS,
    RATIO_BITS,
    BudgetRule,
    CoverageRule,
    GivenRule,
    LynxRule,
    OwnTopRule,
    RoutingCall,
    RoutingResult,
    TopNRule,
)
from .triton_moe import INTERPRETING

# Set only by compile_only.compile_only_for_hopper, where launches compile and never run.
ALLOW_CPU_TENSORS = False

MODE_LYNX, MODE_OWN_TOP, MODE_BUDGET, MODE_TOPN, MODE_COVERAGE, MODE_GIVEN = range(6)
KEEP_NONE, KEEP_DROPPED_CAP, KEEP_GIVEN = range(3)

_TAKEN = tl.constexpr(-2147483648)  # below every int32 key: a column already taken or not there
_BIG = tl.constexpr(FP32_BIG)
_MASS_BITS = tl.constexpr(MASS_BITS)
_MASS_ONE = tl.constexpr(1 << MASS_BITS)
_RATIO_SCALE = tl.constexpr(float(1 << RATIO_BITS))
# The interpreter cannot call libdevice (extern functions): it counts bits with shifts and masks instead.
_HARDWARE_POPCOUNT = tl.constexpr(not INTERPRETING)
# Rows of each program's scratch ([SCRATCH_ROWS, BLOCK_E] int64): vectors that other threads gather.
_ROW_KEY, _ROW_TIE, _ROW_VALUE, _ROW_ORDER, _ROW_PICKED, _ROW_TOPPED, _ROW_ACTIVE, _ROW_SORT = (
    tl.constexpr(i) for i in range(8))
SCRATCH_ROWS = 8
# Launch 1's one int32 per row for launch 2: bit 0 voter, bit 1 all logits finite; for lynx also the
# bin-b* experts the row still needs (at most k <= 64) and -b* (at most beta <= 8). One store per row
# where three cost three layout conversions of a per-row vector (each through shared memory).
_STATE_VOTER, _STATE_FINITE = tl.constexpr(1), tl.constexpr(2)
_NEED_SHIFT, _NEED_MASK, _THRESHOLD_SHIFT = tl.constexpr(2), tl.constexpr(127), tl.constexpr(9)
# Rows per program of the default launches under Triton's interpreter (tests/policies/test_policy_fused.py:
# 188 s on 2 cores at 4 rows, 63 s at 16).
INTERPRETER_BLOCK_T = 16
SCRATCH_ROWS_C = tl.constexpr(SCRATCH_ROWS)
# Launch 1's per-expert counts, each at most T, packed into int32 words (tally_layout): the votes (own
# top-k), the experts some row takes for sure, then lynx's voters per bin (-beta first). Launch 2 then
# loads a few words per expert and program instead of one int32 per count.
TALLY_VOTES, TALLY_SURE, TALLY_BINS = 0, 1, 2
_TALLY_VOTES, _TALLY_SURE, _TALLY_BINS = (tl.constexpr(i) for i in (TALLY_VOTES, TALLY_SURE, TALLY_BINS))


# ---- per-row helpers ----------------------------------------------------------------------------
@triton.jit
def _clean_logits(logits_ptr, stride_row, rows, cols, row_ok, col_ok):
    """[BT, BE] fp32 logits with NaN/-inf -> -BIG and +inf -> +BIG, and [BT] "all finite"."""
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_row + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    nan = x != x
    pos_inf = x == float("inf")
    neg_inf = x == float("-inf")
    finite = tl.sum(((nan | pos_inf | neg_inf) & mask).to(tl.int32), axis=1) == 0
    x = tl.where(nan | neg_inf, -_BIG, x)
    return tl.where(pos_inf, _BIG, x), finite


@triton.jit
def _real_rows(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE: tl.constexpr):
    """Rows below num_real: mode 0 every row, 1 a scalar argument, 2 a 0-dim tensor on the device."""
    real = rows < num_rows
    if NUM_REAL_MODE == 1:
        real = real & (rows < num_real)
    elif NUM_REAL_MODE == 2:
        real = real & (rows < tl.load(num_real_ptr))
    return real


@triton.jit
def _row_voter(state):
    return (state & _STATE_VOTER) != 0


@triton.jit
def _row_need(state):
    return (state >> _NEED_SHIFT) & _NEED_MASK


@triton.jit
def _row_threshold(state):
    return -(state >> _THRESHOLD_SHIFT)


@triton.jit
def _order_key(x):
    """int32 keys in the order of fp32 x (no NaN); -0.0 and +0.0 equal (as keys.float32_order_key)."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _key_value(key):
    """The fp32 value of an order key (inverse of _order_key; -0.0 comes back as +0.0, which no later
    step tells apart): a row's best value without a reduction over the row."""
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _column(matrix, slot, j):
    """Column j of a small [BT, BK] matrix (exact: one term is non-zero)."""
    return tl.sum(tl.where(slot[None, :] == j, matrix, 0), axis=1)


@triton.jit
def _top_columns(keys, cols, slot, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, K: tl.constexpr,
                 BLOCK_E: tl.constexpr):
    """The K largest keys per row, largest first, equal keys by lower column: (ids, their values)."""
    ids = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int32)
    values = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
    for j in tl.static_range(K):
        best = tl.max(keys, axis=1)
        pick = tl.min(tl.where(keys == best[:, None], cols[None, :], BLOCK_E), axis=1)
        hit = cols[None, :] == pick[:, None]
        value = _key_value(best)
        ids = tl.where(slot[None, :] == j, pick[:, None], ids)
        values = tl.where(slot[None, :] == j, value[:, None], values)
        keys = tl.where(hit, _TAKEN, keys)
    return ids, values


@triton.jit
def _own_weight_units(own_values, slot, TOP_K: tl.constexpr):
    """Top-k weights renormalised in fixed point (keys.own_weight_units): exp in float64 rounded to
    fp32, exact scaling by 2**40, truncation, integer division."""
    slot_ok = slot[None, :] < TOP_K
    gap = tl.where(slot_ok, own_values - _column(own_values, slot, 0)[:, None], 0.0)
    ratio = tl.exp(gap.to(tl.float64)).to(tl.float32)
    fixed = tl.where(slot_ok, (ratio * _RATIO_SCALE).to(tl.int64), 0)
    return fixed * _MASS_ONE // tl.sum(fixed, axis=1)[:, None]


@triton.jit
def _expert_bits(member, cols, words, BLOCK_T: tl.constexpr, WORDS: tl.constexpr):
    """[BT, WORDS] int64 from a [BT, BE] bool: bit e % 64 of word e // 64 is member[:, e]. (A sum of
    distinct powers of two is their OR; bit 63 is -2**63, and the sum cannot overflow.)"""
    bit = tl.full([1], 1, dtype=tl.int64) << (cols % 64).to(tl.int64)
    result = tl.zeros([BLOCK_T, WORDS], dtype=tl.int64)
    for w in tl.static_range(WORDS):
        word = tl.sum(tl.where(member & (cols // 64 == w)[None, :], bit[None, :], 0), axis=1)
        result = tl.where(words[None, :] == w, word[:, None], result)
    return result


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


@triton.jit
def _bit_or(a, b):
    return a | b


# ---- launch 1 -----------------------------------------------------------------------------------
@triton.jit
def _routing_rows_kernel(
    logits_ptr, num_real_ptr,
    own_ids_ptr, own_values_ptr, own_weights_ptr, row_state_ptr, bins_ptr, bin_masks_ptr,
    part_tallies_ptr, part_mass_ptr,
    stride_logits, num_real, num_rows, num_experts, alpha,
    MODE: tl.constexpr, TOP_K: tl.constexpr, FLOOR_K: tl.constexpr, BETA: tl.constexpr,
    NUM_REAL_MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    PICKS: tl.constexpr, WORDS: tl.constexpr, STORE_WEIGHTS: tl.constexpr,
    TALLY_BITS: tl.constexpr, TALLIES_PER_WORD: tl.constexpr, TALLY_WORDS: tl.constexpr, TALLY_WORDS_P2: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    slot = tl.arange(0, BLOCK_K)
    row_ok = rows < num_rows
    col_ok = cols < num_experts
    x, finite = _clean_logits(logits_ptr, stride_logits, rows, cols, row_ok, col_ok)
    voter = _real_rows(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE) & finite

    keys = tl.where(col_ok[None, :], _order_key(x), _TAKEN)
    own_ids, own_values = _top_columns(keys, cols, slot, BLOCK_T, BLOCK_K, TOP_K, BLOCK_E)
    own_weights = _own_weight_units(own_values, slot, TOP_K) * voter[:, None]
    row_slot = rows[:, None] * BLOCK_K + slot[None, :]
    row_slot_ok = row_ok[:, None] & (slot[None, :] < TOP_K)
    tl.store(own_ids_ptr + row_slot, own_ids, mask=row_slot_ok)
    tl.store(own_values_ptr + row_slot, own_values, mask=row_slot_ok)
    if STORE_WEIGHTS:  # only coverage's dropped-weight cap reads them (launch 2's _kept_rows)
        tl.store(own_weights_ptr + row_slot, own_weights, mask=row_slot_ok)
    state = voter.to(tl.int32) * _STATE_VOTER + finite.to(tl.int32) * _STATE_FINITE

    # A row's weights sum to at most MASS_ONE (2**20): a program's mass fits int32 below 2048 rows, and
    # int32 columns and adds are half the instructions of int64 ones.
    tl.static_assert(BLOCK_T < 2048)
    tl.static_assert(TOP_K <= _NEED_MASK)  # a row's need fits its field of the row state
    own_units = own_weights.to(tl.int32)
    counts = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
    mass = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
    union = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
    for j in tl.static_range(TOP_K):
        hit = (cols[None, :] == _column(own_ids, slot, j)[:, None]) & voter[:, None]
        counts += hit.to(tl.int32)
        mass += tl.where(hit, _column(own_units, slot, j)[:, None], 0)
        if j < FLOOR_K:
            union += hit.to(tl.int32)
    tl.store(part_mass_ptr + pid * BLOCK_E + cols, tl.sum(mass, axis=0))

    if MODE == 0:  # lynx: bins, each row's bin threshold, and the experts above it (taken for sure)
        top = _column(own_values, slot, 0)
        bins = tl.maximum(tl.ceil(alpha * (x - top[:, None])), -BETA).to(tl.int32)
        if PICKS != 2:
            tl.store(bins_ptr + rows[:, None].to(tl.int64) * num_experts + cols[None, :], bins.to(tl.int8),
                     mask=row_ok[:, None] & col_ok[None, :])
        above = tl.zeros([BLOCK_T], dtype=tl.int32)
        threshold = tl.full([BLOCK_T], -BETA, dtype=tl.int32)
        need = tl.zeros([BLOCK_T], dtype=tl.int32)
        found = tl.zeros([BLOCK_T], dtype=tl.int1)
        for i in tl.static_range(BETA + 1):  # bins 0, -1, ..., -beta
            in_bin_count = tl.sum(((bins == -i) & col_ok[None, :]).to(tl.int32), axis=1)
            reached = (~found) & (above + in_bin_count >= TOP_K)
            threshold = tl.where(reached, -i, threshold)
            need = tl.where(reached, TOP_K - above, need)
            found = found | reached
            above += in_bin_count
        state += (need << _NEED_SHIFT) | (-threshold << _THRESHOLD_SHIFT)
        if PICKS == 2:  # the voters' threshold-bin experts, as bits (launch 2 reads 8 bytes per 64 experts)
            words = tl.arange(0, WORDS)
            in_threshold_bin = (bins == threshold[:, None]) & col_ok[None, :] & voter[:, None]
            masks = _expert_bits(in_threshold_bin, cols, words, BLOCK_T, WORDS)
            tl.store(bin_masks_ptr + rows[:, None].to(tl.int64) * WORDS + words[None, :], masks, mask=row_ok[:, None])
        union = ((bins > threshold[:, None]) & col_ok[None, :] & voter[:, None]).to(tl.int32)
        # A voter's expert in bin -i counts in field TALLY_BINS + BETA - i.
        bin_field = _TALLY_BINS + BETA + bins
        binned = col_ok[None, :] & voter[:, None]
    tl.store(row_state_ptr + rows, state, mask=row_ok)

    # The counts, each row's 0 / 1 flags packed into the tally words, the words stacked on one axis, then
    # one sum over the program's rows: the sum crosses warps (shared memory and barriers) once, not once
    # per word or per count (sm_90, E 128, T 256: 7 fewer barriers, 120 fewer instructions than a sum per
    # word). Exact: no field's total exceeds T < 2**TALLY_BITS.
    fields = tl.arange(0, TALLY_WORDS_P2)
    stacked = tl.zeros([BLOCK_T, TALLY_WORDS_P2, BLOCK_E], dtype=tl.int32)
    for w in tl.static_range(TALLY_WORDS):
        word = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
        if _TALLY_VOTES // TALLIES_PER_WORD == w:
            word += counts << ((_TALLY_VOTES % TALLIES_PER_WORD) * TALLY_BITS)
        if _TALLY_SURE // TALLIES_PER_WORD == w:
            word += union << ((_TALLY_SURE % TALLIES_PER_WORD) * TALLY_BITS)
        if MODE == 0:
            word += tl.where(binned & (bin_field // TALLIES_PER_WORD == w),
                             tl.full([BLOCK_T, BLOCK_E], 1, tl.int32) << (bin_field % TALLIES_PER_WORD) * TALLY_BITS,
                             0)  # fmt: skip
        stacked += tl.where(fields[None, :, None] == w, word[:, None, :], 0)
    tl.store(part_tallies_ptr + (pid * TALLY_WORDS + fields[:, None]) * BLOCK_E + cols[None, :], tl.sum(stacked, axis=0),
             mask=(fields < TALLY_WORDS)[:, None])


# ---- batch-level helpers (launch 2) -------------------------------------------------------------
@triton.jit
def _share(scratch, row, vector, cols, BLOCK_E: tl.constexpr):
    """Write an [E] vector where every thread can gather from it."""
    tl.debug_barrier()
    tl.store(scratch + row * BLOCK_E + cols, vector.to(tl.int64))
    tl.debug_barrier()


@triton.jit
def _rank_desc(scratch, key, second, cols, num_experts, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr,
               HAS_SECOND: tl.constexpr):
    """rank[e] = how many experts e' < E come before e (0 = first): a larger key, or an equal key and
    (HAS_SECOND) a larger second key, or equal keys and a lower index. One pass of exact integer
    counting, O(E^2) in chunks: no sort, no float."""
    _share(scratch, _ROW_KEY, key, cols, BLOCK_E)
    if HAS_SECOND:
        _share(scratch, _ROW_TIE, second, cols, BLOCK_E)
    key = key.to(tl.int64)
    second = second.to(tl.int64)
    rank = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in tl.static_range(0, BLOCK_E, CHUNK):
        other = start + tl.arange(0, CHUNK)
        other_key = tl.load(scratch + _ROW_KEY * BLOCK_E + other)[:, None]
        tie_after = other[:, None] < cols[None, :]
        if HAS_SECOND:
            other_second = tl.load(scratch + _ROW_TIE * BLOCK_E + other)[:, None]
            tie_after = (other_second > second[None, :]) | ((other_second == second[None, :]) & tie_after)
        before = (other_key > key[None, :]) | ((other_key == key[None, :]) & tie_after)
        rank += tl.sum((before & (other < num_experts)[:, None]).to(tl.int32), axis=0)
    return rank


@triton.jit
def _sort_keys(key, tie, valid, cols, LOG_E: tl.constexpr):
    """[E] int64 words in the order (key desc, then tie asc), each carrying its expert in the low LOG_E
    bits: key << 2 LOG_E | (BLOCK_E - 1 - tie) << LOG_E | e. Invalid experts get key -1 (after every
    valid one). Needs 0 <= key < 2**(63 - 2 LOG_E) and distinct ties (the host checks the bound:
    routing_triton.sort_fits)."""
    mask: tl.constexpr = (1 << LOG_E) - 1
    high = tl.where(valid, key.to(tl.int64), -1) << (2 * LOG_E)
    return high | ((mask - tie.to(tl.int64)) << LOG_E) | cols.to(tl.int64)


@triton.jit
def _sort_desc(scratch, words, cols, BLOCK_E: tl.constexpr):
    """The words sorted, largest first: one bitonic sort, about E log2(E)^2 / 2 compare-exchanges
    across the block, in place of an O(E^2) ranking. The words go through the scratch first: a vector
    reduced from a tile of partial sums can hold several experts per thread, replicated over the
    others, and tl.sort keeps its layout (E 64, T 32, sm_90: launch 2 had 4,408 instructions without
    this pass, 2,584 with it)."""
    tl.debug_barrier()
    tl.store(scratch + _ROW_SORT * BLOCK_E + cols, words)
    tl.debug_barrier()
    return tl.sort(tl.load(scratch + _ROW_SORT * BLOCK_E + cols), descending=True)


@triton.jit
def _sorted_experts(scratch, words, cols, BLOCK_E: tl.constexpr):
    """[E] the experts in the order of their `_sort_keys` words (place i holds the i-th)."""
    return (_sort_desc(scratch, words, cols, BLOCK_E) & (BLOCK_E - 1)).to(tl.int32)


@triton.jit
def _first_by_sort(scratch, words, count, cols, BLOCK_E: tl.constexpr):
    """[E] bool: the experts among the first `count` of the order of their `_sort_keys` words (the
    count-th largest word read back from the sorted block: no scatter of ranks)."""
    ordered = _sort_desc(scratch, words, cols, BLOCK_E)
    last = tl.sum(tl.where(cols == count - 1, ordered, 0), axis=0)
    return (words >= last) & (count > 0)


@triton.jit
def _before_in_order(scratch, flag, rank, value, cols, num_experts, BLOCK_E: tl.constexpr,
                     CHUNK: tl.constexpr):
    """For each e: how many flagged experts have a lower rank, and the sum of their values."""
    _share(scratch, _ROW_KEY, flag, cols, BLOCK_E)
    _share(scratch, _ROW_TIE, rank, cols, BLOCK_E)
    _share(scratch, _ROW_VALUE, value, cols, BLOCK_E)
    count = tl.zeros([BLOCK_E], dtype=tl.int64)
    total = tl.zeros([BLOCK_E], dtype=tl.int64)
    for start in tl.static_range(0, BLOCK_E, CHUNK):
        other = start + tl.arange(0, CHUNK)
        other_flag = tl.load(scratch + _ROW_KEY * BLOCK_E + other)[:, None]
        other_rank = tl.load(scratch + _ROW_TIE * BLOCK_E + other)[:, None]
        other_value = tl.load(scratch + _ROW_VALUE * BLOCK_E + other)[:, None]
        before = (other_flag != 0) & (other_rank < rank[None, :]) & (other < num_experts)[:, None]
        count += tl.sum(before.to(tl.int64), axis=0)
        total += tl.sum(tl.where(before, other_value, 0), axis=0)
    return count, total


@triton.jit
def _before_in_sorted(scratch, order, flag, value, cols, BLOCK_E: tl.constexpr):
    """As `_before_in_order`, given the order itself (the expert at each place, a permutation of the
    block: `_sorted_experts`): prefix sums along it, then scattered back to the experts."""
    _share(scratch, _ROW_KEY, flag, cols, BLOCK_E)
    _share(scratch, _ROW_VALUE, value, cols, BLOCK_E)
    flagged = tl.load(scratch + _ROW_KEY * BLOCK_E + order) != 0
    flagged_value = tl.where(flagged, tl.load(scratch + _ROW_VALUE * BLOCK_E + order), 0)
    count = tl.cumsum(flagged.to(tl.int64), axis=0) - flagged.to(tl.int64)
    total = tl.cumsum(flagged_value, axis=0) - flagged_value
    tl.debug_barrier()  # every thread has gathered: the rows may be overwritten
    tl.store(scratch + _ROW_KEY * BLOCK_E + order, count)
    tl.store(scratch + _ROW_VALUE * BLOCK_E + order, total)
    tl.debug_barrier()
    return tl.load(scratch + _ROW_KEY * BLOCK_E + cols), tl.load(scratch + _ROW_VALUE * BLOCK_E + cols)


@triton.jit
def _load_parts(part_ptr, num_parts, stride, cols, PARTS: tl.constexpr):
    """[PARTS, E]: the [E] partial sums of every launch-1 program (num_parts <= PARTS), 0 past them."""
    part = tl.arange(0, PARTS)
    return tl.load(part_ptr + part[:, None] * stride + cols[None, :], mask=(part < num_parts)[:, None], other=0)


@triton.jit
def _sum_parts(part_ptr, num_parts, stride, cols, BLOCK_E: tl.constexpr, PARTS: tl.constexpr):
    """Sum over programs of launch 1 of their [E] partial sums, as int64, added in the partials' own
    type (int32 counts stay below T: half the adds of int64). A tile of PARTS programs per load: a loop
    of one load per program waits for each load in turn (the decision's cost grew with T)."""
    total = tl.zeros([BLOCK_E], dtype=part_ptr.dtype.element_ty)
    for start in range(0, num_parts, PARTS):
        total += tl.sum(_load_parts(part_ptr + start * stride, num_parts - start, stride, cols, PARTS), axis=0)
    return total.to(tl.int64)


@triton.jit
def _threshold_bins(start, columns, bins_ptr, row_state_ptr, num_rows, num_experts, col_ok, BLOCK_T: tl.constexpr):
    """Rows start.. start+BLOCK_T: (voter, threshold bin b*, how many bin-b* experts it needs, its bins
    at `columns` as int32: the batch's expert order, or the experts in index order)."""
    rows = start + tl.arange(0, BLOCK_T)
    row_ok = rows < num_rows
    state = tl.load(row_state_ptr + rows, mask=row_ok, other=0)
    voter, threshold, need = _row_voter(state), _row_threshold(state), _row_need(state)
    bins = tl.load(bins_ptr + rows[:, None].to(tl.int64) * num_experts + columns[None, :],
                   mask=row_ok[:, None] & col_ok[None, :], other=-128).to(tl.int32)  # fmt: skip
    return voter, threshold, need, bins


@triton.jit
def _batch_order(scratch, rank, cols, col_ok, BLOCK_E: tl.constexpr):
    """[E]: the expert at each place of the batch's order (the inverse of `rank`), through the scratch."""
    tl.debug_barrier()
    tl.store(scratch + _ROW_ORDER * BLOCK_E + rank, cols.to(tl.int64), mask=col_ok)
    tl.debug_barrier()
    return tl.load(scratch + _ROW_ORDER * BLOCK_E + cols, mask=col_ok, other=0)


@triton.jit
def _lynx_picks(scratch, lynx_rank, bins_ptr, row_state_ptr, num_rows, num_experts,
                cols, col_ok, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """[E] bool: experts some voter takes from its threshold bin (the first `need` of them in the
    batch's expert order)."""
    order = _batch_order(scratch, lynx_rank, cols, col_ok, BLOCK_E)
    picked = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in range(0, num_rows, BLOCK_T):
        voter, threshold, need, bins = _threshold_bins(start, order, bins_ptr, row_state_ptr,
                                                       num_rows, num_experts, col_ok, BLOCK_T)  # fmt: skip
        in_bin = (bins == threshold[:, None]) & col_ok[None, :]
        first = tl.cumsum(in_bin.to(tl.int32), axis=1) <= need[:, None]
        picked = tl.maximum(picked, tl.max((in_bin & first & voter[:, None]).to(tl.int32), axis=0))
    _share(scratch, _ROW_PICKED, picked, cols, BLOCK_E)  # by rank -> by expert
    return tl.load(scratch + _ROW_PICKED * BLOCK_E + lynx_rank, mask=col_ok, other=0) != 0


@triton.jit
def _lynx_picks_by_rank(lynx_rank, bins_ptr, row_state_ptr, num_rows, num_experts, cols,
                        col_ok, TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """The same picks as `_lynx_picks`, another way (LaunchConfig.picks = 1): each row's bins read in
    expert order (contiguous, no gather), its cut the need-th lowest batch rank among its bin-b*
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
def _lynx_picks_by_bits(scratch, order, bin_masks_ptr, row_state_ptr, num_rows, cols, col_ok, WORDS: tl.constexpr,
                        BITS_T: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """The same picks as `_lynx_picks`, a third way (LaunchConfig.picks = 2), with no pass over a row's E
    experts: launch 1 stored each voter's threshold-bin experts as bits. Here, once, the bits of the
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
        need = _row_need(tl.load(row_state_ptr + rows, mask=row_ok, other=0))
        low = tl.zeros([BITS_T], dtype=tl.int32)
        high = tl.full([BITS_T], BLOCK_E - 1, dtype=tl.int32)
        for step in tl.static_range(9):  # log2(BLOCK_E) halvings of [0, BLOCK_E), BLOCK_E <= 512
            if (1 << step) < BLOCK_E:
                middle = (low + high) >> 1
                prefix = tl.load(scratch + middle[:, None] * WORDS + words[None, :])
                enough = tl.sum(_popcount(masks & prefix, _HARDWARE_POPCOUNT), axis=1) >= need
                high = tl.where(enough, middle, high)
                low = tl.where(enough, low, middle + 1)
        found = found | (masks & tl.load(scratch + low[:, None] * WORDS + words[None, :]))
    found = tl.reduce(found, 0, _bit_or)
    word = tl.sum(tl.where(words[None, :] == (cols // 64)[:, None], found[None, :], 0), axis=1)
    return ((word >> (cols % 64).to(tl.int64)) & 1) != 0


@triton.jit
def _kept_rows(topped_ptr, rows, row_ok, slot, own_ids_ptr, own_weights_ptr, row_state_ptr, given_keep_ptr,
               dropped_cap_units, TOP_K: tl.constexpr, BLOCK_K: tl.constexpr, KEEP_MODE: tl.constexpr,
               ANY_DROP: tl.constexpr):  # fmt: skip
    """[BT] bool: voters that keep their own routing: coverage's dropped-weight cap against the
    topped-up set at `topped_ptr` (KEEP_MODE 1), or the rows a torch `decide` returned (2)."""
    voter = _row_voter(tl.load(row_state_ptr + rows, mask=row_ok, other=0))
    if KEEP_MODE == 1:
        row_slot = rows[:, None] * BLOCK_K + slot[None, :]
        slot_ok = row_ok[:, None] & (slot[None, :] < TOP_K)
        own_ids = tl.load(own_ids_ptr + row_slot, mask=slot_ok, other=0)
        inactive = (tl.load(topped_ptr + own_ids) == 0) & slot_ok
        if ANY_DROP:
            keep = tl.max(inactive.to(tl.int32), axis=1) > 0
        else:
            weights = tl.load(own_weights_ptr + row_slot, mask=slot_ok, other=0)
            keep = tl.sum(tl.where(inactive, weights, 0), axis=1) > dropped_cap_units
    else:
        keep = tl.load(given_keep_ptr + rows, mask=row_ok, other=0) != 0
    return keep & voter & row_ok


@triton.jit
def _kept_experts(topped_ptr, topk_ids_ptr, stride_ids, own_ids_ptr, own_weights_ptr, row_state_ptr,
                  given_keep_ptr, dropped_cap_units, num_rows, num_experts, cols, slot,
                  TOP_K: tl.constexpr, KEEP_MODE: tl.constexpr, ANY_DROP: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """[E] bool: the model's experts of every kept row (ids clamped to [0, E), as ids_to_mask)."""
    kept = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in range(0, num_rows, BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)
        row_ok = rows < num_rows
        keep = _kept_rows(topped_ptr, rows, row_ok, slot, own_ids_ptr, own_weights_ptr, row_state_ptr,
                          given_keep_ptr, dropped_cap_units, TOP_K, BLOCK_K, KEEP_MODE, ANY_DROP)
        ids = tl.load(topk_ids_ptr + rows[:, None].to(tl.int64) * stride_ids + slot[None, :],
                      mask=row_ok[:, None] & (slot[None, :] < TOP_K), other=0)
        ids = tl.minimum(tl.maximum(ids, 0), num_experts - 1).to(tl.int32)
        for j in tl.static_range(TOP_K):
            hit = (cols[None, :] == _column(ids, slot, j)[:, None]) & keep[:, None]
            kept = tl.maximum(kept, tl.max(hit.to(tl.int32), axis=0))
    return kept != 0


@triton.jit
def _decide_active(
    scratch, bins_ptr, bin_masks_ptr, row_state_ptr, own_ids_ptr, own_weights_ptr,
    topk_ids_ptr, part_tallies_ptr, part_mass_ptr, num_parts,
    budget_max_ptr, budget_fraction_ptr, given_active_ptr, given_keep_ptr,
    stride_ids, num_rows, num_experts, rule_n, fraction_units, dropped_cap_units, cols, slot,
    MODE: tl.constexpr, TOP_K: tl.constexpr, SLOTS: tl.constexpr, BETA: tl.constexpr,
    TIE_BY_MASS: tl.constexpr, KEEP_MODE: tl.constexpr, ANY_DROP: tl.constexpr, HAS_BUDGET: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr, SCAN_T: tl.constexpr,
    PARTS: tl.constexpr, ONE_LOAD: tl.constexpr, PICKS: tl.constexpr, WORDS: tl.constexpr, BITS_T: tl.constexpr,
    TALLY_BITS: tl.constexpr, TALLIES_PER_WORD: tl.constexpr, TALLY_WORDS: tl.constexpr,
    SORT_RULE: tl.constexpr, SORT_TOP_UP: tl.constexpr, SORT_CAP: tl.constexpr, LOG_E: tl.constexpr,
):  # fmt: skip
    """The batch's active set [E] bool, identical in every program (integer arithmetic only). Loops
    over all rows take SCAN_T rows at a time (more than a program's own block: fewer iterations)."""
    col_ok = cols < num_experts
    if ONE_LOAD:  # one tile per field: the next field's loads leave before this one is added up
        mass_tile = _load_parts(part_mass_ptr, num_parts, BLOCK_E, cols, PARTS)
        word_tile = _load_parts(part_tallies_ptr, num_parts, TALLY_WORDS * BLOCK_E, cols, PARTS)
        mass = tl.sum(mass_tile, axis=0).to(tl.int64)
    else:
        mass = _sum_parts(part_mass_ptr, num_parts, BLOCK_E, cols, BLOCK_E, PARTS)
    # The packed tallies, summed word by word (no field overflows into the next: each total is at most
    # T < 2**TALLY_BITS). lynx: S = sum_j (voters with bin j - beta) * B**j, the bins' fields in order of j;
    # B, the voters, is the votes' total over k (every voter votes for k distinct experts): no load of
    # its own, which would wait for the memory a second time.
    counts = tl.zeros([BLOCK_E], dtype=tl.int64)
    union = tl.zeros([BLOCK_E], dtype=tl.int64)
    votes = tl.zeros([BLOCK_E], dtype=tl.int64)
    for w in tl.static_range(TALLY_WORDS):
        if ONE_LOAD:
            tile = word_tile
            if w + 1 < TALLY_WORDS:
                word_tile = _load_parts(part_tallies_ptr + (w + 1) * BLOCK_E, num_parts, TALLY_WORDS * BLOCK_E, cols,
                                        PARTS)  # fmt: skip
            word = tl.sum(tile, axis=0).to(tl.int64)
        else:
            word = _sum_parts(part_tallies_ptr + w * BLOCK_E, num_parts, TALLY_WORDS * BLOCK_E, cols, BLOCK_E, PARTS)
        for f in tl.static_range(TALLIES_PER_WORD):
            value = (word >> (f * TALLY_BITS)) & ((1 << TALLY_BITS) - 1)
            if w * TALLIES_PER_WORD + f == _TALLY_VOTES:  # field 0: before every bin's field
                counts = value
                voters = tl.sum(counts, axis=0) // TOP_K
                power = voters * 0 + 1
            elif w * TALLIES_PER_WORD + f == _TALLY_SURE:
                union = value
            elif MODE == 0:
                if w * TALLIES_PER_WORD + f <= _TALLY_BINS + BETA:
                    votes += value * power
                    power = power * voters
    total_mass = tl.sum(mass, axis=0)
    # Preference order: routed mass, then votes (descending), then lower index (keys.preference_order).
    # Ranked by counting only where a rule reads ranks and cannot sort (keys too wide, or sort off): each
    # ranking is O(E^2) with four barriers. (lynx's mass tie-break compares the same key itself.)
    preference_key = mass * (num_rows + 1) + counts
    if (((MODE == 2) | (MODE == 4)) & (not SORT_RULE)) | (HAS_BUDGET & (not SORT_CAP)):
        preference = _rank_desc(scratch, preference_key, cols, cols, num_experts, BLOCK_E, CHUNK, False)
    else:
        preference = cols
    # The preference order sorted once, for every step that walks it (lynx's mass tie-break, coverage, a cap).
    preference_words = _sort_keys(preference_key, cols, col_ok, cols, LOG_E)
    if ((((MODE == 0) & TIE_BY_MASS) | (MODE == 4)) & SORT_RULE) | (HAS_BUDGET & SORT_CAP):
        by_preference = _sorted_experts(scratch, preference_words, cols, BLOCK_E)

    if MODE == 0:  # lynx: experts ordered by (S, tie)
        if SORT_RULE:  # the batch's order by bitonic sorts (PICKS 2 reads no ranks)
            if TIE_BY_MASS:  # by votes, the places of the preference order as ties
                _share(scratch, _ROW_KEY, votes, cols, BLOCK_E)
                votes_there = tl.load(scratch + _ROW_KEY * BLOCK_E + by_preference)
                words = _sort_keys(votes_there, cols, col_ok, by_preference, LOG_E)
                order = _sorted_experts(scratch, words, cols, BLOCK_E)
            else:
                order = _sorted_experts(scratch, _sort_keys(votes, cols, col_ok, cols, LOG_E), cols, BLOCK_E)
        elif TIE_BY_MASS:  # votes, then the preference order (its key, then the index)
            lynx_rank = _rank_desc(scratch, votes, preference_key, cols, num_experts, BLOCK_E, CHUNK, True)
        else:
            lynx_rank = _rank_desc(scratch, votes, cols, cols, num_experts, BLOCK_E, CHUNK, False)
        if PICKS == 0:
            picked = _lynx_picks(scratch, lynx_rank, bins_ptr, row_state_ptr, num_rows,
                                 num_experts, cols, col_ok, SCAN_T, BLOCK_E)  # fmt: skip
        elif PICKS == 1:
            picked = _lynx_picks_by_rank(lynx_rank, bins_ptr, row_state_ptr, num_rows,
                                         num_experts, cols, col_ok, TOP_K, SCAN_T, BLOCK_E)  # fmt: skip
        else:
            if not SORT_RULE:
                order = _batch_order(scratch, lynx_rank, cols, col_ok, BLOCK_E)
            picked = _lynx_picks_by_bits(scratch, order, bin_masks_ptr, row_state_ptr, num_rows, cols, col_ok, WORDS,
                                         BITS_T, BLOCK_E)  # fmt: skip
        active = (union != 0) | picked
    elif MODE == 1:  # union of the voters' own top-j
        active = union != 0
    elif MODE == 2:  # budget: the first n of the preference order that some voter chose
        if SORT_RULE:
            first = _first_by_sort(scratch, preference_words, rule_n, cols, BLOCK_E)
        else:
            first = preference < rule_n
        active = first & (counts > 0)
    elif MODE == 3:  # topn: votes, then mass, then index
        by_votes_key = counts * (num_rows * _MASS_ONE + 1) + mass
        if SORT_RULE:
            first = _first_by_sort(scratch, _sort_keys(by_votes_key, cols, col_ok, cols, LOG_E), rule_n, cols, BLOCK_E)
        else:
            first = _rank_desc(scratch, by_votes_key, cols, cols, num_experts, BLOCK_E, CHUNK, False) < rule_n
        active = first & (counts > 0)
    elif MODE == 4:  # coverage: prefix of the preference order covering the fraction of the mass
        if SORT_RULE:
            _, mass_before = _before_in_sorted(scratch, by_preference, cols * 0 + 1, mass, cols, BLOCK_E)
        else:
            _, mass_before = _before_in_order(scratch, cols * 0 + 1, preference, mass, cols, num_experts, BLOCK_E,
                                              CHUNK)  # fmt: skip
        active = ((mass_before << _MASS_BITS) < fraction_units * total_mass) & (mass > 0)
    else:  # decided by a policy's torch code
        active = tl.load(given_active_ptr + cols, mask=col_ok, other=0) != 0
    active = active & col_ok

    # Top-up to SLOTS experts by votes (ties: lower index), as base.ensure_min_active. Rarely needed, so
    # ranked only then: a branch on a block-wide sum, the same in every thread (no host sync).
    if tl.sum(active.to(tl.int32), axis=0) < SLOTS:
        top_up_key = active.to(tl.int64) * (num_rows + 1) + counts
        if SORT_TOP_UP:
            words = _sort_keys(top_up_key, cols, col_ok, cols, LOG_E)
            active = active | _first_by_sort(scratch, words, SLOTS, cols, BLOCK_E)
        else:
            top_up = _rank_desc(scratch, top_up_key, cols, cols, num_experts, BLOCK_E, CHUNK, False)
            active = active | ((top_up < SLOTS) & col_ok)
    if KEEP_MODE != 0:
        _share(scratch, _ROW_TOPPED, active, cols, BLOCK_E)
        active = active | _kept_experts(scratch + _ROW_TOPPED * BLOCK_E, topk_ids_ptr, stride_ids, own_ids_ptr,
                                        own_weights_ptr, row_state_ptr, given_keep_ptr, dropped_cap_units, num_rows,
                                        num_experts, cols, slot, TOP_K, KEEP_MODE, ANY_DROP, SCAN_T, BLOCK_E,
                                        BLOCK_K)  # fmt: skip
    if HAS_BUDGET:  # budget.cap_active_experts
        if SORT_CAP:
            rank, mass_before = _before_in_sorted(scratch, by_preference, active, mass, cols, BLOCK_E)
        else:
            rank, mass_before = _before_in_order(scratch, active, preference, mass, cols, num_experts, BLOCK_E,
                                                 CHUNK)  # fmt: skip
        max_experts = tl.load(budget_max_ptr)
        fraction = tl.load(budget_fraction_ptr)
        threshold = tl.floor(fraction * _MASS_ONE).to(tl.int64)
        covering = (mass_before << _MASS_BITS) < threshold * total_mass
        # (an int sum, not a scalar-bool | vector-bool, which the interpreter rejects)
        wanted = (rank < max_experts) & ((covering.to(tl.int32) + (fraction >= 1.0).to(tl.int32)) > 0)
        active = active & (wanted | (rank == 0))
    return active


@triton.jit
def _remap_rows(
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
        position += tl.where(slot[None, :] >= j, _column(own_active.to(tl.int32), slot, j)[:, None], 0)
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
        x, _ = _clean_logits(logits_ptr, stride_logits, rows, cols, row_ok, col_ok)
        active = tl.load(active_ptr + cols, mask=col_ok, other=0) != 0
        # Outside the row's own top-k = after its last own expert in the order launch 1 took them
        # (key descending, then lower column): one comparison, not one per own expert.
        keys = _order_key(x)
        last_key = _order_key(_column(own_values, slot, TOP_K - 1))
        last_id = _column(own_ids, slot, TOP_K - 1)
        outside = (keys < last_key[:, None]) | ((keys == last_key[:, None]) & (cols[None, :] > last_id[:, None]))
        keys = tl.where(active[None, :] & col_ok[None, :] & outside, keys, _TAKEN)
        for extra in range(0, extra_rounds):
            best = tl.max(keys, axis=1)
            pick = tl.min(tl.where(keys == best[:, None], cols[None, :], BLOCK_E), axis=1)
            hit = cols[None, :] == pick[:, None]
            value = _key_value(best)
            place = (slot[None, :] == (kept + extra)[:, None]) & ((best != _TAKEN) & (extra < missing))[:, None]
            new_ids = tl.where(place, pick[:, None], new_ids)
            new_values = tl.where(place, value[:, None], new_values)
            keys = tl.where(hit, _TAKEN, keys)

    # Weights: softmax of the chosen logits, times the target mass; unfilled slots repeat the first
    # choice with weight 0.
    filled = (new_values > float("-inf")) & (slot[None, :] < SLOTS)
    first = _column(new_ids, slot, 0)
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
    real = _real_rows(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE)
    clamped = tl.minimum(tl.maximum(given_ids, 0), num_experts - 1).to(tl.int32)
    all_active = tl.sum(((tl.load(active_ptr + clamped) == 0) & slot_ok).to(tl.int32), axis=1) == 0
    keep_anyway = ((state & _STATE_FINITE) != 0) & (SLOTS == TOP_K)
    if KEEP_MODE != 0:
        keep_anyway = keep_anyway | _kept_rows(topped_ptr, rows, row_ok, slot, own_ids_ptr, own_weights_ptr,
                                               row_state_ptr, given_keep_ptr, dropped_cap_units, TOP_K, BLOCK_K,
                                               KEEP_MODE, ANY_DROP)  # fmt: skip
    keep = ~real | (all_active & keep_anyway)
    out = rows[:, None].to(tl.int64) * stride_ids + slot[None, :]
    tl.store(out_ids_ptr + out, tl.where(keep[:, None], given_ids, new_ids.to(given_ids.dtype)), mask=in_mask)
    out = rows[:, None].to(tl.int64) * stride_weights + slot[None, :]
    tl.store(out_weights_ptr + out, tl.where(keep[:, None], given_weights.to(tl.float32), weights), mask=in_mask)


# ---- launch 2 -----------------------------------------------------------------------------------
@triton.jit
def _routing_decide_kernel(
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
    scratch = scratch_ptr + pid * (SCRATCH_ROWS_C * BLOCK_E)
    cols = tl.arange(0, BLOCK_E)
    slot = tl.arange(0, BLOCK_K)
    active = _decide_active(
        scratch, bins_ptr, bin_masks_ptr, row_state_ptr, own_ids_ptr, own_weights_ptr,
        topk_ids_ptr, part_tallies_ptr, part_mass_ptr, num_parts,
        budget_max_ptr, budget_fraction_ptr, given_active_ptr, given_keep_ptr,
        stride_ids, num_rows, num_experts, rule_n, fraction_units, dropped_cap_units, cols, slot,
        MODE, TOP_K, SLOTS, BETA, TIE_BY_MASS, KEEP_MODE, ANY_DROP, HAS_BUDGET, BLOCK_T, BLOCK_E, BLOCK_K, CHUNK, SCAN_T,
        PARTS, ONE_LOAD, PICKS, WORDS, BITS_T, TALLY_BITS, TALLIES_PER_WORD, TALLY_WORDS, SORT_RULE, SORT_TOP_UP, SORT_CAP,
        LOG_E,
    )  # fmt: skip
    if pid == 0:
        tl.store(active_out_ptr + cols, active.to(tl.uint8), mask=cols < num_experts)
    _share(scratch, _ROW_ACTIVE, active, cols, BLOCK_E)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    _remap_rows(
        scratch + _ROW_ACTIVE * BLOCK_E, scratch + _ROW_TOPPED * BLOCK_E, logits_ptr, topk_ids_ptr, topk_weights_ptr,
        out_ids_ptr, out_weights_ptr, num_real_ptr, own_ids_ptr, own_values_ptr, own_weights_ptr, row_state_ptr,
        given_keep_ptr, stride_logits, stride_ids, stride_weights, num_real, num_rows, num_experts,
        dropped_cap_units, rows, cols, slot,
        TOP_K, SLOTS, KEEP_MODE, ANY_DROP, RENORMALIZE, NUM_REAL_MODE, BLOCK_T, BLOCK_E, BLOCK_K,
    )  # fmt: skip


# ---- entry point --------------------------------------------------------------------------------
def _next_pow2(value: int) -> int:
    return 1 << max(int(value) - 1, 0).bit_length()


def _rule_arguments(rule) -> dict:
    """Kernel mode and parameters of a rule (python values: static per policy)."""
    base = {"MODE": MODE_GIVEN, "BETA": 0, "FLOOR_K": 0, "TIE_BY_MASS": False, "alpha": 0.0, "rule_n": 0,
            "fraction_units": 0, "dropped_cap_units": 0, "KEEP_MODE": KEEP_NONE, "ANY_DROP": False}
    if isinstance(rule, LynxRule):
        base.update(MODE=MODE_LYNX, BETA=rule.beta, TIE_BY_MASS=rule.tie_by_mass, alpha=float(rule.alpha))
    elif isinstance(rule, OwnTopRule):
        base.update(MODE=MODE_OWN_TOP, FLOOR_K=rule.j)
    elif isinstance(rule, BudgetRule):
        base.update(MODE=MODE_BUDGET, rule_n=rule.n)
    elif isinstance(rule, TopNRule):
        base.update(MODE=MODE_TOPN, rule_n=rule.n)
    elif isinstance(rule, CoverageRule):
        base.update(MODE=MODE_COVERAGE, fraction_units=rule.fraction_units)
        if rule.dropped_cap_units is not None:
            base.update(KEEP_MODE=KEEP_DROPPED_CAP, dropped_cap_units=rule.dropped_cap_units,
                        ANY_DROP=rule.keep_on_any_drop)
    elif not isinstance(rule, GivenRule):
        raise TypeError(f"no fused kernel for rule {rule!r}")
    return base


def block_sizes(num_experts: int, top_k: int) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_K): the expert and slot axes of every tile."""
    return max(_next_pow2(num_experts), 16), _next_pow2(top_k)


class TallyLayout(NamedTuple):
    bits: int  # per field: every tally is at most T
    per_word: int  # fields per int32 word
    words: int
    words_pow2: int  # the words' axis of launch 1's stacked sum over rows


def tally_layout(num_rows: int, bins: int) -> TallyLayout:
    """How launch 1 packs its per-expert counts (votes, sure takes, then `bins` per-bin voter counts)
    into int32 words; the sums over programs stay exact, since no field's total exceeds T."""
    bits = max(1, num_rows.bit_length())
    per_word = max(1, 31 // bits)
    words = -(-(TALLY_BINS + bins) // per_word)
    return TallyLayout(bits, per_word, words, _next_pow2(words))


def mass_partial_dtype(num_rows: int) -> torch.dtype:
    """Launch 1's per-expert routed mass (at most T << MASS_BITS in total) as int32 where it fits: launch 2
    adds every program's partials, and int32 adds are half the instructions of int64 ones."""
    return torch.int32 if num_rows << MASS_BITS < 2**31 else torch.int64


def bit_words(block_e: int) -> int:
    """int64 words of a row's expert bit mask (lynx's picks = 2)."""
    return max(1, block_e // 64)


def bits_rows(num_rows: int, warps: int) -> int:
    """Rows per step of lynx's binary searches (picks = 2): two per thread; a row is a few words."""
    return min(_next_pow2(num_rows), 64 * warps)


def warps_for(elements: int, most: int = 4) -> int:
    """Warps for a tile: no more threads than it has elements. More threads than elements replicate
    values across threads, which Triton 3.6 miscompiles on sm_90 at some shapes (an LLVM SLP-vectorizer
    assertion at T 1, E 64, 4 warps; seen on an H100)."""
    return max(1, min(most, elements // 32))


class LaunchConfig(NamedTuple):
    """Block sizes and warps of the two launches: functions of the shapes only, so capture and replay
    launch the same grids. `python -m lynx_sglang.policies.launch_sweep` times alternatives on a GPU."""

    block_t: int  # rows per program, both launches (the grid is cdiv(T, block_t))
    scan_t: int  # rows per step of launch 2's loops over every row
    rows_warps: int
    decide_warps: int
    chunk: int  # experts per step of launch 2's O(E^2) rankings
    parts: int  # launch-1 programs whose partial sums launch 2 loads at once
    picks: int = 0  # lynx's picks: 0 gathered in batch order + prefix count, 1 contiguous + rank cut, 2 bit masks
    sort: bool = False  # launch 2 orders experts by bitonic sorts where the keys fit (sort_fits), not O(E^2) counting


def launch_config(num_rows: int, num_experts: int, top_k: int, block_t: int | None = None) -> LaunchConfig:
    """The fastest pairs of launches the sweep measured for lynx at E 64 and 128, T 1-256, on an H100
    (runs 4 and 5, docs/benchmarks/policies-gpu.md). Rows per program trade the two launches: a program's
    per-expert sums over its rows cross warps in launch 1, while each program of launch 2 adds every
    launch-1 program's partials. So: one row per program up to 32 programs at E <= 64 and 64 above
    (run 4, E 128, T 8 and 32: 12.3 and 12.7 us against 13.6 and 14.2 at four rows), then 4 rows (run 5,
    E 128, T 128: 12.5 us against 13.1 at 2 rows). Launch 2 runs 2 warps at one row per program up to
    E 128 (run 5, E 128, T 8 / 32: launch 2 7.5 / 8.1 us against 8.3 / 8.6 at 4 warps; E 64, T 8 / 32:
    6.1 / 6.1 against 6.9 / 6.7), else 4, and goes over every row about 2048-4096 logits at a time; lynx
    picks from bit masks (picks 2) and launch 2 orders experts by bitonic sorts where the keys fit
    (run 4, E 128, T 256: launch 2 10.5 us, 12.9 counting). `block_t` sets the rows per program instead
    (the rest follows from it)."""
    block_e, _ = block_sizes(num_experts, top_k)
    rows = _next_pow2(num_rows)
    if block_t is None:
        block_t = 1 if rows <= (64 if block_e > 64 else 32) else 4
    scan_t = max(block_t, min(rows, 64 if block_e <= 64 else 2048 // block_e))
    rows_warps = 1 if block_t == 1 else warps_for(block_t * block_e)
    decide_warps = warps_for(scan_t * block_e, most=2 if block_t == 1 and block_e <= 128 else 4)
    parts = parts_per_load(triton.cdiv(num_rows, block_t))
    return LaunchConfig(block_t, scan_t, rows_warps, decide_warps, min(block_e, 32), parts, picks=2, sort=True)


def default_launch_config(num_rows: int, num_experts: int, top_k: int) -> LaunchConfig:
    """What `plan_triton` launches without a config: `launch_config`'s, but under Triton's interpreter,
    which runs the programs one after another while each program of launch 2 makes the whole batch
    decision again, fewer and larger programs (every configuration routes alike:
    tests/policies/test_policy_launch_sweep.py)."""
    interpreted_rows = min(INTERPRETER_BLOCK_T, _next_pow2(num_rows)) if INTERPRETING else None
    return launch_config(num_rows, num_experts, top_k, interpreted_rows)


def sort_fits(largest_key: int, block_e: int) -> bool:
    """Whether keys up to `largest_key` fit launch 2's sort words (_sort_keys: the key above two
    fields of log2(BLOCK_E) bits, in a signed int64)."""
    return 0 <= largest_key < 1 << (63 - 2 * (block_e.bit_length() - 1))


def _largest_preference_key(num_rows: int) -> int:
    """The preference key is mass * (T + 1) + votes; an expert's mass is at most T << MASS_BITS."""
    return (num_rows << MASS_BITS) * (num_rows + 1) + num_rows


def rule_sorts(rule, num_rows: int, block_e: int, config: LaunchConfig) -> bool:
    """Whether launch 2 finds the rule's own order by sorts (SORT_RULE) rather than O(E^2) counting,
    where the keys fit: the preference key (budget, coverage; lynx's mass tie-break), topn's
    votes * (T << MASS_BITS + 1) + mass, lynx's batch vote S <= T**(beta+1) (B = voters <= T, each
    voter's digits sum to B). lynx sorts only for its bit-mask picks (the others read ranks)."""
    if not config.sort:
        return False
    preference, mass = _largest_preference_key(num_rows), num_rows << MASS_BITS
    if isinstance(rule, LynxRule):
        if config.picks != 2:
            return False
        largest = max(num_rows ** (rule.beta + 1), preference if rule.tie_by_mass else 0)
    elif isinstance(rule, (BudgetRule, CoverageRule)):
        largest = preference
    elif isinstance(rule, TopNRule):
        largest = num_rows * (mass + 1) + mass
    else:
        return False
    return sort_fits(largest, block_e)


def top_up_sorts(num_rows: int, block_e: int, config: LaunchConfig) -> bool:
    """Whether the top-up to k experts takes its order from a sort (SORT_TOP_UP): active * (T + 1) + votes."""
    return config.sort and sort_fits(2 * num_rows + 1, block_e)


def cap_sorts(num_rows: int, block_e: int, config: LaunchConfig) -> bool:
    """Whether a budget cap (ExpertBudget) walks the preference order from a sort (SORT_CAP)."""
    return config.sort and sort_fits(_largest_preference_key(num_rows), block_e)


def reads_own_weights(args: dict) -> bool:
    """Whether launch 2 reads the rows' own weights (coverage's dropped-weight cap), so launch 1 stores them."""
    return args["KEEP_MODE"] == KEEP_DROPPED_CAP and not args["ANY_DROP"]


def parts_per_load(programs: int) -> int:
    """Launch-1 programs whose partial sums launch 2 loads at once: all of them, up to 64 (a tile of
    64 x E; more would cost registers)."""
    return min(64, _next_pow2(programs))


class TritonPlan(NamedTuple):
    """A call's two launches, ready to run (buffers allocated): `rows()` then `decide()` fill `result`.
    Apart for the benchmark's per-launch times: decide() alone may be replayed, its inputs stay put."""

    result: RoutingResult
    rows: Callable[[], None]
    decide: Callable[[], None]


def route_triton(call: RoutingCall) -> RoutingResult:
    """Two launches; allocations only (torch.empty launches nothing)."""
    plan = plan_triton(call)
    plan.rows()
    plan.decide()
    return plan.result


def plan_triton(call: RoutingCall, config: LaunchConfig | None = None) -> TritonPlan:
    """The call's launches with `config` (default: `launch_config` of the shapes)."""
    logits, ids, weights = call.logits, call.topk_ids, call.topk_weights
    if not logits.is_cuda and not INTERPRETING and not ALLOW_CPU_TENSORS:
        raise RuntimeError("route_triton got CPU tensors but Triton's interpreter is off (TRITON_INTERPRET=1)")
    num_rows, num_experts = logits.shape
    top_k = ids.shape[1]
    device = logits.device
    block_e, block_k = block_sizes(num_experts, top_k)
    if config is None:
        config = default_launch_config(num_rows, num_experts, top_k)
    block_t, scan_t = config.block_t, config.scan_t
    programs = triton.cdiv(num_rows, block_t)
    args = _rule_arguments(call.rule)
    if isinstance(call.rule, GivenRule) and call.given_keep is not None:
        args["KEEP_MODE"] = KEEP_GIVEN

    def empty(*shape, dtype=torch.int32):
        return torch.empty(*shape, dtype=dtype, device=device)

    own_ids, own_values, own_weights = empty(num_rows, block_k), empty(num_rows, block_k, dtype=torch.float32), \
        empty(num_rows, block_k, dtype=torch.int64)
    row_state = empty(num_rows)
    unused = empty(1, dtype=torch.int8)  # for the pointers a call does not read
    lynx = args["MODE"] == MODE_LYNX
    words = bit_words(block_e)
    bins = empty(num_rows, num_experts, dtype=torch.int8) if lynx and config.picks != 2 else unused
    bin_masks = empty(num_rows, words, dtype=torch.int64) if lynx and config.picks == 2 else own_weights
    tally = tally_layout(num_rows, args["BETA"] + 1 if lynx else 0)
    part_tallies = empty(programs, tally.words, block_e)
    part_mass = empty(programs, block_e, dtype=mass_partial_dtype(num_rows))
    scratch = empty(programs, SCRATCH_ROWS, block_e, dtype=torch.int64)
    out_ids, out_weights = torch.empty_like(ids), torch.empty_like(weights)
    active = torch.empty(num_experts, dtype=torch.bool, device=device)

    num_real_mode, num_real_ptr, num_real_value = _num_real_arguments(call.num_real, device, unused)
    has_budget = call.budget_max_experts is not None
    # Without a budget its pointers are never read: placeholders of the budget's dtypes (int64, fp32).
    budget_max = call.budget_max_experts if has_budget else own_weights
    budget_fraction = call.budget_mass_fraction if has_budget else own_values
    given_active = call.given_active.view(torch.uint8) if call.given_active is not None else unused
    given_keep = call.given_keep.view(torch.uint8) if call.given_keep is not None else unused
    if logits.stride(1) != 1:
        logits = logits.contiguous()

    def launch_rows():
        _routing_rows_kernel[(programs,)](
            logits, num_real_ptr, own_ids, own_values, own_weights, row_state, bins, bin_masks,
            part_tallies, part_mass,
            logits.stride(0), num_real_value, num_rows, num_experts, args["alpha"],
            MODE=args["MODE"], TOP_K=top_k, FLOOR_K=args["FLOOR_K"], BETA=args["BETA"], NUM_REAL_MODE=num_real_mode,
            BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=block_k, PICKS=config.picks, WORDS=words,
            STORE_WEIGHTS=reads_own_weights(args),
            TALLY_BITS=tally.bits, TALLIES_PER_WORD=tally.per_word, TALLY_WORDS=tally.words,
            TALLY_WORDS_P2=tally.words_pow2,
            **({} if INTERPRETING else {"num_warps": config.rows_warps}),
        )  # fmt: skip

    def launch_decide():
        _routing_decide_kernel[(programs,)](
            logits, ids, weights, num_real_ptr, own_ids, own_values, own_weights, row_state, bins, bin_masks,
            part_tallies, part_mass,
            budget_max, budget_fraction, given_active, given_keep, scratch, out_ids, out_weights, active.view(torch.uint8),
            logits.stride(0), ids.stride(0), weights.stride(0), num_real_value, num_rows, num_experts, programs,
            args["rule_n"], args["fraction_units"], args["dropped_cap_units"],
            MODE=args["MODE"], TOP_K=top_k, SLOTS=call.slots, BETA=args["BETA"], TIE_BY_MASS=args["TIE_BY_MASS"],
            KEEP_MODE=args["KEEP_MODE"], ANY_DROP=args["ANY_DROP"], HAS_BUDGET=has_budget,
            RENORMALIZE=call.renormalize, NUM_REAL_MODE=num_real_mode,
            BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=block_k, CHUNK=config.chunk, SCAN_T=scan_t, PARTS=config.parts,
            ONE_LOAD=programs <= config.parts,
            PICKS=config.picks, WORDS=words, BITS_T=bits_rows(num_rows, config.decide_warps),
            TALLY_BITS=tally.bits, TALLIES_PER_WORD=tally.per_word, TALLY_WORDS=tally.words,
            SORT_RULE=rule_sorts(call.rule, num_rows, block_e, config),
            SORT_TOP_UP=top_up_sorts(num_rows, block_e, config),
            SORT_CAP=cap_sorts(num_rows, block_e, config),
            LOG_E=block_e.bit_length() - 1, **({} if INTERPRETING else {"num_warps": config.decide_warps}),
        )  # fmt: skip

    return TritonPlan(RoutingResult(out_ids, out_weights, active), launch_rows, launch_decide)


def _num_real_arguments(num_real, device, placeholder):
    """(NUM_REAL_MODE, pointer, scalar): a device tensor is read by the kernel (graph replays see new
    values); a python int, or a tensor on another device, becomes a scalar argument."""
    if num_real is None:
        return 0, placeholder, 0
    if isinstance(num_real, torch.Tensor):
        if num_real.device == device:
            return 2, num_real, 0
        num_real = int(num_real)  # a CPU scalar next to CUDA logits: read on the host, as torch does
    return 1, placeholder, int(num_real)
