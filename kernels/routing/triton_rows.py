"""Launch 1 of the fused routing, `routing_rows_kernel`, grid cdiv(T, BLOCK_T): per row, clean the
logits, take its own top-k (ids, logits; weights in fixed point where launch 2 reads them), and leave one
int32 of row state (triton_common: voter and finite flags, for lynx also the row's bin threshold b* and
how many bin-b* experts it still needs). Per program, partial per-expert sums (votes, mass, lynx's bin
histogram, the experts some row takes for sure), written to its own slot: no atomics, no zeroing. The
counts (each at most T) are packed several to an int32 word, so launch 2 loads fewer."""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_shared import column, is_real_row
from .triton_common import (
    MASS_ONE,
    MODE_LYNX,
    NEED_MASK,
    NEED_SHIFT,
    RATIO_SCALE,
    STATE_FINITE,
    STATE_VOTER,
    TAKEN,
    TALLY_BINS,
    TALLY_SURE,
    TALLY_VOTES,
    THRESHOLD_SHIFT,
    clean_logits,
    key_value,
    order_key,
)


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
        value = key_value(best)
        ids = tl.where(slot[None, :] == j, pick[:, None], ids)
        values = tl.where(slot[None, :] == j, value[:, None], values)
        keys = tl.where(hit, TAKEN, keys)
    return ids, values


@triton.jit
def _model_top_k_only(keys, ids_ptr, stride_ids, rows, cols, row_ok, col_ok, num_experts, TOP_K: tl.constexpr):
    """`keys` with every other column TAKEN in the rows whose model ids are a top-k of the row (K
    distinct experts, none other keyed above their lowest): their own top-k is then the model's, however
    it split a tie at the boundary (keys.own_topk_indices). Other rows keep their keys."""
    chosen = tl.zeros(keys.shape, dtype=tl.int32)
    in_range = row_ok
    for j in tl.static_range(TOP_K):
        ids = tl.load(ids_ptr + rows.to(tl.int64) * stride_ids + j, mask=row_ok, other=-1).to(tl.int32)
        in_range = in_range & (ids >= 0) & (ids < num_experts)
        chosen = tl.where(cols[None, :] == ids[:, None], 1, chosen)
    chosen = (chosen != 0) & col_ok[None, :]
    lowest_chosen = tl.min(tl.where(chosen, keys, 2147483647), axis=1)
    best_other = tl.max(tl.where(chosen, TAKEN, keys), axis=1)
    is_top_k = in_range & (tl.sum(chosen.to(tl.int32), axis=1) == TOP_K) & (best_other <= lowest_chosen)
    return tl.where(is_top_k[:, None] & ~chosen, TAKEN, keys)


@triton.jit
def _own_weight_units(own_values, slot, TOP_K: tl.constexpr):
    """Top-k weights renormalised in fixed point (keys.own_weight_units): exp in float64 rounded to
    fp32, exact scaling by 2**40, truncation, integer division."""
    slot_ok = slot[None, :] < TOP_K
    gap = tl.where(slot_ok, own_values - column(own_values, slot, 0)[:, None], 0.0)
    ratio = tl.exp(gap.to(tl.float64)).to(tl.float32)
    fixed = tl.where(slot_ok, (ratio * RATIO_SCALE).to(tl.int64), 0)
    return fixed * MASS_ONE // tl.sum(fixed, axis=1)[:, None]


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
def _lynx_thresholds(x, own_values, rows, cols, slot, row_ok, col_ok, voter, bins_ptr, bin_masks_ptr, num_experts,
                     alpha, TOP_K: tl.constexpr, BETA: tl.constexpr, BLOCK_T: tl.constexpr, PICKS: tl.constexpr,
                     WORDS: tl.constexpr):  # fmt: skip
    """lynx's rows: [BT, BE] bins; the row-state bits of each row's bin threshold b* (the k-th best bin)
    and of how many bin-b* experts it still needs; [BT, BE] the experts above b* (taken for sure). Each
    voter's bin-b* experts are left for launch 2 as bits (PICKS 2) or as int8 bins."""
    top = column(own_values, slot, 0)
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
    if PICKS == 2:  # the voters' threshold-bin experts, as bits (launch 2 reads 8 bytes per 64 experts)
        words = tl.arange(0, WORDS)
        in_threshold_bin = (bins == threshold[:, None]) & col_ok[None, :] & voter[:, None]
        masks = _expert_bits(in_threshold_bin, cols, words, BLOCK_T, WORDS)
        tl.store(bin_masks_ptr + rows[:, None].to(tl.int64) * WORDS + words[None, :], masks, mask=row_ok[:, None])
    sure = ((bins > threshold[:, None]) & col_ok[None, :] & voter[:, None]).to(tl.int32)
    return bins, (need << NEED_SHIFT) | (-threshold << THRESHOLD_SHIFT), sure


@triton.jit
def _store_tallies(part_tallies_ptr, pid, counts, sure, bins, voter, cols, col_ok, MODE: tl.constexpr,
                   BETA: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, TALLY_BITS: tl.constexpr,
                   TALLIES_PER_WORD: tl.constexpr, TALLY_WORDS: tl.constexpr, TALLY_WORDS_P2: tl.constexpr):  # fmt: skip
    """The program's counts, each row's 0 / 1 flags packed into the tally words, the words stacked on one
    axis, then one sum over the program's rows: the sum crosses warps (shared memory and barriers) once,
    not once per word or per count (sm_90, E 128, T 256: 7 fewer barriers, 120 fewer instructions than a
    sum per word). Exact: no field's total exceeds T < 2**TALLY_BITS. A voter's expert in lynx's bin -i
    counts in field TALLY_BINS + BETA - i."""
    bin_field = TALLY_BINS + BETA + bins
    binned = col_ok[None, :] & voter[:, None]
    fields = tl.arange(0, TALLY_WORDS_P2)
    stacked = tl.zeros([BLOCK_T, TALLY_WORDS_P2, BLOCK_E], dtype=tl.int32)
    for w in tl.static_range(TALLY_WORDS):
        word = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
        if TALLY_VOTES // TALLIES_PER_WORD == w:
            word += counts << ((TALLY_VOTES % TALLIES_PER_WORD) * TALLY_BITS)
        if TALLY_SURE // TALLIES_PER_WORD == w:
            word += sure << ((TALLY_SURE % TALLIES_PER_WORD) * TALLY_BITS)
        if MODE == MODE_LYNX:
            word += tl.where(binned & (bin_field // TALLIES_PER_WORD == w),
                             tl.full([BLOCK_T, BLOCK_E], 1, tl.int32) << (bin_field % TALLIES_PER_WORD) * TALLY_BITS,
                             0)  # fmt: skip
        stacked += tl.where(fields[None, :, None] == w, word[:, None, :], 0)
    tl.store(part_tallies_ptr + (pid * TALLY_WORDS + fields[:, None]) * BLOCK_E + cols[None, :], tl.sum(stacked, axis=0),
             mask=(fields < TALLY_WORDS)[:, None])


@triton.jit
def routing_rows_kernel(
    logits_ptr, topk_ids_ptr, num_real_ptr,
    own_ids_ptr, own_values_ptr, own_weights_ptr, row_state_ptr, bins_ptr, bin_masks_ptr,
    part_tallies_ptr, part_mass_ptr,
    stride_logits, stride_ids, num_real, num_rows, num_experts, alpha,
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
    x, finite = clean_logits(logits_ptr, stride_logits, rows, cols, row_ok, col_ok)
    voter = is_real_row(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE) & finite

    keys = tl.where(col_ok[None, :], order_key(x), TAKEN)
    keys = _model_top_k_only(keys, topk_ids_ptr, stride_ids, rows, cols, row_ok, col_ok, num_experts, TOP_K)
    own_ids, own_values = _top_columns(keys, cols, slot, BLOCK_T, BLOCK_K, TOP_K, BLOCK_E)
    own_weights = _own_weight_units(own_values, slot, TOP_K) * voter[:, None]
    row_slot = rows[:, None] * BLOCK_K + slot[None, :]
    row_slot_ok = row_ok[:, None] & (slot[None, :] < TOP_K)
    tl.store(own_ids_ptr + row_slot, own_ids, mask=row_slot_ok)
    tl.store(own_values_ptr + row_slot, own_values, mask=row_slot_ok)
    if STORE_WEIGHTS:  # only coverage's dropped-weight cap reads them (launch 2's kept_rows)
        tl.store(own_weights_ptr + row_slot, own_weights, mask=row_slot_ok)
    state = voter.to(tl.int32) * STATE_VOTER + finite.to(tl.int32) * STATE_FINITE

    # A row's weights sum to at most MASS_ONE (2**20): a program's mass fits int32 below 2048 rows, and
    # int32 columns and adds are half the instructions of int64 ones.
    tl.static_assert(BLOCK_T < 2048)
    tl.static_assert(TOP_K <= NEED_MASK)  # a row's need fits its field of the row state
    own_units = own_weights.to(tl.int32)
    counts = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
    mass = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
    sure = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)  # own top-j (FLOOR_K), or lynx's above b*
    for j in tl.static_range(TOP_K):
        hit = (cols[None, :] == column(own_ids, slot, j)[:, None]) & voter[:, None]
        counts += hit.to(tl.int32)
        mass += tl.where(hit, column(own_units, slot, j)[:, None], 0)
        if j < FLOOR_K:
            sure += hit.to(tl.int32)
    tl.store(part_mass_ptr + pid * BLOCK_E + cols, tl.sum(mass, axis=0))

    bins = counts  # read only by lynx
    if MODE == MODE_LYNX:
        bins, lynx_state, sure = _lynx_thresholds(x, own_values, rows, cols, slot, row_ok, col_ok, voter, bins_ptr,
                                                  bin_masks_ptr, num_experts, alpha, TOP_K, BETA, BLOCK_T, PICKS,
                                                  WORDS)  # fmt: skip
        state += lynx_state
    tl.store(row_state_ptr + rows, state, mask=row_ok)
    _store_tallies(part_tallies_ptr, pid, counts, sure, bins, voter, cols, col_ok, MODE, BETA, BLOCK_T, BLOCK_E,
                   TALLY_BITS, TALLIES_PER_WORD, TALLY_WORDS, TALLY_WORDS_P2)  # fmt: skip
