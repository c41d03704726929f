"""The batch decision of launch 2 of the fused routing: every program adds launch 1's partials and makes
the same decision, in integers only: the rule's active set, the top-up to `slots` experts, the kept
rows' experts, the expert budget's cap. Recomputing the small [E] decision per program is cheaper than
a third launch or a grid-wide barrier."""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_shared import column, is_real_row
from .triton_common import (
    KEEP_DROPPED_CAP,
    KEEP_NONE,
    MASS_ONE,
    MASS_SHIFT,
    MODE_BUDGET,
    MODE_COVERAGE,
    MODE_LYNX,
    MODE_OWN_TOP,
    MODE_TOPN,
    ROW_KEY,
    ROW_TOPPED,
    TALLY_BINS,
    TALLY_SURE,
    TALLY_VOTES,
    row_voter,
)
from .triton_lynx import batch_order, lynx_picks_by_bits, lynx_picks_by_rank, lynx_picks_gathered
from .triton_order import (
    before_in_order,
    before_in_sorted,
    first_by_sort,
    load_parts,
    rank_desc,
    share,
    sort_keys,
    sorted_experts,
    sum_parts,
)


@triton.jit
def kept_rows(topped_ptr, rows, row_ok, slot, own_ids_ptr, own_weights_ptr, row_state_ptr, given_keep_ptr,
              dropped_cap_units, TOP_K: tl.constexpr, BLOCK_K: tl.constexpr, KEEP_MODE: tl.constexpr,
              ANY_DROP: tl.constexpr):  # fmt: skip
    """[BT] bool: voters that keep their own routing: coverage's dropped-weight cap against the
    topped-up set at `topped_ptr` (KEEP_DROPPED_CAP), or the rows a torch `decide` returned (KEEP_GIVEN)."""
    voter = row_voter(tl.load(row_state_ptr + rows, mask=row_ok, other=0))
    if KEEP_MODE == KEEP_DROPPED_CAP:
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
def model_experts(topk_ids_ptr, stride_ids, rows, row_ok, chosen, num_experts, cols, slot, TOP_K: tl.constexpr,
                  BLOCK_E: tl.constexpr):  # fmt: skip
    """[E] int32, 1 for the model's experts of the `chosen` rows (ids clamped to [0, E), as ids_to_mask)."""
    ids = tl.load(topk_ids_ptr + rows[:, None].to(tl.int64) * stride_ids + slot[None, :],
                  mask=row_ok[:, None] & (slot[None, :] < TOP_K), other=0)  # fmt: skip
    ids = tl.minimum(tl.maximum(ids, 0), num_experts - 1).to(tl.int32)
    used = tl.zeros([BLOCK_E], dtype=tl.int32)
    for j in tl.static_range(TOP_K):
        hit = (cols[None, :] == column(ids, slot, j)[:, None]) & chosen[:, None]
        used = tl.maximum(used, tl.max(hit.to(tl.int32), axis=0))
    return used


@triton.jit
def _kept_experts(topped_ptr, topk_ids_ptr, stride_ids, own_ids_ptr, own_weights_ptr, row_state_ptr,
                  given_keep_ptr, dropped_cap_units, num_rows, num_experts, cols, slot,
                  TOP_K: tl.constexpr, KEEP_MODE: tl.constexpr, ANY_DROP: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """[E] bool: the model's experts of every kept row."""
    kept = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in range(0, num_rows, BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)
        row_ok = rows < num_rows
        keep = kept_rows(topped_ptr, rows, row_ok, slot, own_ids_ptr, own_weights_ptr, row_state_ptr,
                         given_keep_ptr, dropped_cap_units, TOP_K, BLOCK_K, KEEP_MODE, ANY_DROP)
        kept = tl.maximum(kept, model_experts(topk_ids_ptr, stride_ids, rows, row_ok, keep, num_experts, cols, slot,
                                              TOP_K, BLOCK_E))  # fmt: skip
    return kept != 0


@triton.jit
def real_rows_experts(topk_ids_ptr, stride_ids, num_real_ptr, num_real, num_rows, num_experts, cols, slot,
                      TOP_K: tl.constexpr, NUM_REAL_MODE: tl.constexpr, BLOCK_T: tl.constexpr,
                      BLOCK_E: tl.constexpr):  # fmt: skip
    """[E] bool: the model's experts of every real row (the active set of the model's own routing)."""
    used = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in range(0, num_rows, BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)
        real = is_real_row(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE)
        used = tl.maximum(used, model_experts(topk_ids_ptr, stride_ids, rows, rows < num_rows, real, num_experts,
                                              cols, slot, TOP_K, BLOCK_E))  # fmt: skip
    return used != 0


@triton.jit
def _batch_sums(part_tallies_ptr, part_mass_ptr, num_parts, cols, MODE: tl.constexpr, TOP_K: tl.constexpr,
                BETA: tl.constexpr, BLOCK_E: tl.constexpr, PARTS: tl.constexpr, ONE_LOAD: tl.constexpr,
                TALLY_BITS: tl.constexpr, TALLIES_PER_WORD: tl.constexpr, TALLY_WORDS: tl.constexpr):  # fmt: skip
    """[E] int64 each, over every launch-1 program: (routed mass, votes, the experts some row takes for
    sure, lynx's batch vote S). The packed tallies are summed word by word (no field overflows into the
    next: each total is at most T < 2**TALLY_BITS). S = sum_j (voters with bin j - beta) * B**j, the bins'
    fields in order of j; B, the voters, is the votes' total over k (every voter votes for k distinct
    experts): no load of its own, which would wait for the memory a second time."""
    if ONE_LOAD:  # one tile per field: the next field's loads leave before this one is added up
        mass_tile = load_parts(part_mass_ptr, num_parts, BLOCK_E, cols, PARTS)
        word_tile = load_parts(part_tallies_ptr, num_parts, TALLY_WORDS * BLOCK_E, cols, PARTS)
        mass = tl.sum(mass_tile, axis=0).to(tl.int64)
    else:
        mass = sum_parts(part_mass_ptr, num_parts, BLOCK_E, cols, BLOCK_E, PARTS)
    counts = tl.zeros([BLOCK_E], dtype=tl.int64)
    sure = tl.zeros([BLOCK_E], dtype=tl.int64)
    votes = tl.zeros([BLOCK_E], dtype=tl.int64)
    for w in tl.static_range(TALLY_WORDS):
        if ONE_LOAD:
            tile = word_tile
            if w + 1 < TALLY_WORDS:
                word_tile = load_parts(part_tallies_ptr + (w + 1) * BLOCK_E, num_parts, TALLY_WORDS * BLOCK_E, cols,
                                       PARTS)  # fmt: skip
            word = tl.sum(tile, axis=0).to(tl.int64)
        else:
            word = sum_parts(part_tallies_ptr + w * BLOCK_E, num_parts, TALLY_WORDS * BLOCK_E, cols, BLOCK_E, PARTS)
        for f in tl.static_range(TALLIES_PER_WORD):
            value = (word >> (f * TALLY_BITS)) & ((1 << TALLY_BITS) - 1)
            if w * TALLIES_PER_WORD + f == TALLY_VOTES:  # field 0: before every bin's field
                counts = value
                voters = tl.sum(counts, axis=0) // TOP_K
                power = voters * 0 + 1
            elif w * TALLIES_PER_WORD + f == TALLY_SURE:
                sure = value
            elif MODE == MODE_LYNX:
                if w * TALLIES_PER_WORD + f <= TALLY_BINS + BETA:
                    votes += value * power
                    power = power * voters
    return mass, counts, sure, votes


@triton.jit
def _lynx_active(scratch, votes, sure, preference_key, by_preference, bins_ptr, bin_masks_ptr, row_state_ptr,
                 num_rows, num_experts, cols, col_ok, TOP_K: tl.constexpr, TIE_BY_MASS: tl.constexpr,
                 BLOCK_E: tl.constexpr, CHUNK: tl.constexpr, SCAN_T: tl.constexpr, PICKS: tl.constexpr,
                 WORDS: tl.constexpr, BITS_T: tl.constexpr, SORT_RULE: tl.constexpr, LOG_E: tl.constexpr):  # fmt: skip
    """lynx's active set: the experts some voter takes for sure, and its picks in the batch's order of
    experts by (S, tie)."""
    if SORT_RULE:  # the batch's order by bitonic sorts (PICKS 2 reads no ranks)
        if TIE_BY_MASS:  # by votes, the places of the preference order as ties
            share(scratch, ROW_KEY, votes, cols, BLOCK_E)
            votes_there = tl.load(scratch + ROW_KEY * BLOCK_E + by_preference)
            words = sort_keys(votes_there, cols, col_ok, by_preference, LOG_E)
            order = sorted_experts(scratch, words, cols, BLOCK_E)
        else:
            order = sorted_experts(scratch, sort_keys(votes, cols, col_ok, cols, LOG_E), cols, BLOCK_E)
    elif TIE_BY_MASS:  # votes, then the preference order (its key, then the index)
        lynx_rank = rank_desc(scratch, votes, preference_key, cols, num_experts, BLOCK_E, CHUNK, True)
    else:
        lynx_rank = rank_desc(scratch, votes, cols, cols, num_experts, BLOCK_E, CHUNK, False)
    if PICKS == 0:
        picked = lynx_picks_gathered(scratch, lynx_rank, bins_ptr, row_state_ptr, num_rows, num_experts, cols, col_ok,
                                     SCAN_T, BLOCK_E)  # fmt: skip
    elif PICKS == 1:
        picked = lynx_picks_by_rank(lynx_rank, bins_ptr, row_state_ptr, num_rows, num_experts, cols, col_ok, TOP_K,
                                    SCAN_T, BLOCK_E)  # fmt: skip
    else:
        if not SORT_RULE:
            order = batch_order(scratch, lynx_rank, cols, col_ok, BLOCK_E)
        picked = lynx_picks_by_bits(scratch, order, bin_masks_ptr, row_state_ptr, num_rows, cols, col_ok, WORDS,
                                    BITS_T, BLOCK_E)  # fmt: skip
    return (sure != 0) | picked


@triton.jit
def _top_up(scratch, active, counts, num_rows, num_experts, cols, col_ok, SLOTS: tl.constexpr, BLOCK_E: tl.constexpr,
            CHUNK: tl.constexpr, SORT_TOP_UP: tl.constexpr, LOG_E: tl.constexpr):  # fmt: skip
    """Top-up to SLOTS experts by votes (ties: lower index), as base.ensure_min_active. Rarely needed, so
    ranked only then: a branch on a block-wide sum, the same in every thread (no host sync)."""
    if tl.sum(active.to(tl.int32), axis=0) < SLOTS:
        top_up_key = active.to(tl.int64) * (num_rows + 1) + counts
        if SORT_TOP_UP:
            words = sort_keys(top_up_key, cols, col_ok, cols, LOG_E)
            active = active | first_by_sort(scratch, words, SLOTS, cols, BLOCK_E)
        else:
            top_up = rank_desc(scratch, top_up_key, cols, cols, num_experts, BLOCK_E, CHUNK, False)
            active = active | ((top_up < SLOTS) & col_ok)
    return active


@triton.jit
def _budget_cap(scratch, active, mass, total_mass, preference, by_preference, budget_max_ptr, budget_fraction_ptr,
                num_experts, cols, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr, SORT_CAP: tl.constexpr):  # fmt: skip
    """budget.cap_active_experts: the first max_experts active experts of the preference order, fewer
    once they cover the budget's fraction of the routed mass; never none."""
    if SORT_CAP:
        rank, mass_before = before_in_sorted(scratch, by_preference, active, mass, cols, BLOCK_E)
    else:
        rank, mass_before = before_in_order(scratch, active, preference, mass, cols, num_experts, BLOCK_E, CHUNK)
    max_experts = tl.load(budget_max_ptr)
    fraction = tl.load(budget_fraction_ptr)
    threshold = tl.floor(fraction * MASS_ONE).to(tl.int64)
    covering = (mass_before << MASS_SHIFT) < threshold * total_mass
    # (an int sum, not a scalar-bool | vector-bool, which the interpreter rejects)
    wanted = (rank < max_experts) & ((covering.to(tl.int32) + (fraction >= 1.0).to(tl.int32)) > 0)
    return active & (wanted | (rank == 0))


@triton.jit
def decide_active(
    scratch, bins_ptr, bin_masks_ptr, row_state_ptr, own_ids_ptr, own_weights_ptr,
    topk_ids_ptr, part_tallies_ptr, part_mass_ptr, num_parts,
    budget_max_ptr, budget_fraction_ptr, given_active_ptr, given_keep_ptr,
    stride_ids, num_rows, num_experts, rule_n, fraction_units, dropped_cap_units, cols, slot,
    MODE: tl.constexpr, TOP_K: tl.constexpr, SLOTS: tl.constexpr, BETA: tl.constexpr,
    TIE_BY_MASS: tl.constexpr, KEEP_MODE: tl.constexpr, ANY_DROP: tl.constexpr, HAS_BUDGET: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr, SCAN_T: tl.constexpr,
    PARTS: tl.constexpr, ONE_LOAD: tl.constexpr, PICKS: tl.constexpr, WORDS: tl.constexpr, BITS_T: tl.constexpr,
    TALLY_BITS: tl.constexpr, TALLIES_PER_WORD: tl.constexpr, TALLY_WORDS: tl.constexpr,
    SORT_RULE: tl.constexpr, SORT_TOP_UP: tl.constexpr, SORT_CAP: tl.constexpr, LOG_E: tl.constexpr,
):  # fmt: skip
    """The batch's active set [E] bool, identical in every program (integer arithmetic only). Loops
    over all rows take SCAN_T rows at a time (more than a program's own block: fewer iterations)."""
    col_ok = cols < num_experts
    mass, counts, sure, votes = _batch_sums(part_tallies_ptr, part_mass_ptr, num_parts, cols, MODE, TOP_K, BETA,
                                            BLOCK_E, PARTS, ONE_LOAD, TALLY_BITS, TALLIES_PER_WORD, TALLY_WORDS)
    total_mass = tl.sum(mass, axis=0)
    # Preference order: routed mass, then votes (descending), then lower index (keys.preference_order).
    # Ranked by counting only where a rule reads ranks and cannot sort (keys too wide, or sort off): each
    # ranking is O(E^2) with four barriers. (lynx's mass tie-break compares the same key itself.)
    preference_key = mass * (num_rows + 1) + counts
    preference = cols
    if (((MODE == MODE_BUDGET) | (MODE == MODE_COVERAGE)) & (not SORT_RULE)) | (HAS_BUDGET & (not SORT_CAP)):
        preference = rank_desc(scratch, preference_key, cols, cols, num_experts, BLOCK_E, CHUNK, False)
    # The preference order sorted once, for every step that walks it (lynx's mass tie-break, coverage, a cap).
    preference_words = sort_keys(preference_key, cols, col_ok, cols, LOG_E)
    by_preference = cols
    if ((((MODE == MODE_LYNX) & TIE_BY_MASS) | (MODE == MODE_COVERAGE)) & SORT_RULE) | (HAS_BUDGET & SORT_CAP):
        by_preference = sorted_experts(scratch, preference_words, cols, BLOCK_E)

    if MODE == MODE_LYNX:
        active = _lynx_active(scratch, votes, sure, preference_key, by_preference, bins_ptr, bin_masks_ptr,
                              row_state_ptr, num_rows, num_experts, cols, col_ok, TOP_K, TIE_BY_MASS, BLOCK_E, CHUNK,
                              SCAN_T, PICKS, WORDS, BITS_T, SORT_RULE, LOG_E)  # fmt: skip
    elif MODE == MODE_OWN_TOP:  # union of the voters' own top-j
        active = sure != 0
    elif MODE == MODE_BUDGET:  # the first n of the preference order that some voter chose
        if SORT_RULE:
            first = first_by_sort(scratch, preference_words, rule_n, cols, BLOCK_E)
        else:
            first = preference < rule_n
        active = first & (counts > 0)
    elif MODE == MODE_TOPN:  # votes, then mass, then index
        by_votes_key = counts * (num_rows * MASS_ONE + 1) + mass
        if SORT_RULE:
            first = first_by_sort(scratch, sort_keys(by_votes_key, cols, col_ok, cols, LOG_E), rule_n, cols, BLOCK_E)
        else:
            first = rank_desc(scratch, by_votes_key, cols, cols, num_experts, BLOCK_E, CHUNK, False) < rule_n
        active = first & (counts > 0)
    elif MODE == MODE_COVERAGE:  # prefix of the preference order covering the fraction of the mass
        if SORT_RULE:
            _, mass_before = before_in_sorted(scratch, by_preference, cols * 0 + 1, mass, cols, BLOCK_E)
        else:
            _, mass_before = before_in_order(scratch, cols * 0 + 1, preference, mass, cols, num_experts, BLOCK_E,
                                             CHUNK)  # fmt: skip
        active = ((mass_before << MASS_SHIFT) < fraction_units * total_mass) & (mass > 0)
    else:  # decided by a policy's torch code
        active = tl.load(given_active_ptr + cols, mask=col_ok, other=0) != 0
    active = _top_up(scratch, active & col_ok, counts, num_rows, num_experts, cols, col_ok, SLOTS, BLOCK_E, CHUNK,
                     SORT_TOP_UP, LOG_E)  # fmt: skip
    if KEEP_MODE != KEEP_NONE:
        share(scratch, ROW_TOPPED, active, cols, BLOCK_E)
        active = active | _kept_experts(scratch + ROW_TOPPED * BLOCK_E, topk_ids_ptr, stride_ids, own_ids_ptr,
                                        own_weights_ptr, row_state_ptr, given_keep_ptr, dropped_cap_units, num_rows,
                                        num_experts, cols, slot, TOP_K, KEEP_MODE, ANY_DROP, SCAN_T, BLOCK_E,
                                        BLOCK_K)  # fmt: skip
    if HAS_BUDGET:
        active = _budget_cap(scratch, active, mass, total_mass, preference, by_preference, budget_max_ptr,
                             budget_fraction_ptr, num_experts, cols, BLOCK_E, CHUNK, SORT_CAP)  # fmt: skip
    return active
