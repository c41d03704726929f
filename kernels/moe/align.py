"""Alignment of (token, expert) pairs over the ACTIVE experts only, in static-size buffers.

The fused-MoE kernels work on blocks of BLOCK_M pairs that all belong to one expert, so that one
program loads one expert's weight tile once and multiplies it by up to BLOCK_M token rows. This module
builds that grouping:

* pair ``p = t * top_k + j`` is the j-th choice of token t; it is *computed* when its expert id is in
  range, is active (``active_mask``), and is not negative (SGLang pads with -1). Pairs that are not
  computed contribute 0 and their expert's weights are never read.
* experts are laid out in a compact active list; each active expert with n tokens gets ceil(n / BLOCK_M)
  consecutive blocks, experts with zero tokens get none;
* ``sorted_pair_ids[b * BLOCK_M + r]`` is the r-th pair of block b, or the sentinel ``num_pairs`` for
  padding; ``block_expert[b]`` is the expert of block b, or -1 for the blocks beyond the real count.

Graph safety: every buffer size depends only on (num_tokens, top_k, num_experts, block_m,
max_active_experts), never on the values in ``topk_ids``. The body is plain tensor ops (scatter_add,
cumsum, stable argsort, searchsorted) with no ``.item()``, ``.tolist()``, ``nonzero`` or host copy, so it
can run inside CUDA-graph capture and compiles with ``torch.compile(fullgraph=True)``. The kernels are
launched over the static upper bound of blocks and the programs whose ``block_expert`` is -1 exit before
loading any weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ActiveAlignment:
    """Result of :func:`align_active_experts`. All tensors live on the device of ``topk_ids``."""

    sorted_pair_ids: torch.Tensor  # [max_blocks * block_m] int32; pair index or num_pairs (padding)
    block_expert: torch.Tensor  # [max_blocks] int32; expert id of each block, -1 past the real blocks
    num_blocks: torch.Tensor  # [1] int32; number of real blocks (the rest of the grid exits early)
    pair_is_computed: torch.Tensor  # [num_pairs] bool; False for inactive / negative / out-of-range ids
    # (and for pairs past the grid when max_active_experts was not a true bound: they are dropped)
    active_experts: torch.Tensor  # [num_experts] int32; compact active list (ascending), padded with -1
    num_active: torch.Tensor  # [1] int32; number of active experts (those in the mask, or present)
    expert_counts: torch.Tensor  # [num_experts] int32; pairs per active expert (0 when inactive)
    block_m: int
    max_blocks: int  # static grid bound along the block axis
    num_pairs: int


def max_blocks_bound(
    num_pairs: int, num_experts: int, block_m: int, max_active_experts: int | None = None
) -> int:
    """Static upper bound on the number of BLOCK_M blocks, from shapes only.

    sum_e ceil(n_e / M) <= sum_e (n_e + M - 1) / M over the experts with n_e > 0, and there are at
    most min(num_pairs, num_experts, max_active_experts) such experts. So the grid follows the active
    count when the caller can bound it (a policy with an expert budget), and never exceeds what the
    stock bound over all E experts gives.
    """
    nonempty_bound = min(num_pairs, num_experts)
    if max_active_experts is not None:
        nonempty_bound = min(nonempty_bound, max(int(max_active_experts), 0))
    if num_pairs == 0 or nonempty_bound == 0:
        return 1  # keep a non-empty grid; the single program exits early
    return (num_pairs + nonempty_bound * (block_m - 1)) // block_m


def computed_pairs_mask(
    topk_ids: torch.Tensor, num_experts: int, active_mask: torch.Tensor | None
) -> torch.Tensor:
    """[T*k] bool: the pairs whose expert is in range, non-negative and active."""
    flat_ids = topk_ids.reshape(-1)
    in_range = (flat_ids >= 0) & (flat_ids < num_experts)
    if active_mask is None:
        return in_range
    # Clamp so the gather is always in bounds; out-of-range ids are already False via in_range.
    safe_ids = flat_ids.clamp(0, num_experts - 1).long()
    return in_range & active_mask.to(torch.bool)[safe_ids]


def align_active_experts(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_m: int,
    active_mask: torch.Tensor | None = None,
    max_active_experts: int | None = None,
) -> ActiveAlignment:
    """Group the computed (token, expert) pairs into BLOCK_M blocks over the compact active list.

    Args:
        topk_ids: [T, k] integer expert ids (negative = padding, contributes 0).
        num_experts: E, the number of experts in the weights.
        block_m: rows per block (the kernel's BLOCK_M).
        active_mask: [E] bool, or None for "the experts present in topk_ids".
        max_active_experts: optional static bound on the experts that hold pairs (e.g. an expert
            budget); tightens the grid. If it is not a true bound, the pairs that do not fit in the
            grid are dropped (they contribute 0, like an inactive id); nothing is written out of
            bounds.
    """
    num_tokens, top_k = topk_ids.shape
    num_pairs = num_tokens * top_k
    device = topk_ids.device
    max_blocks = max_blocks_bound(num_pairs, num_experts, block_m, max_active_experts)
    flat_ids = topk_ids.reshape(-1)

    pair_is_computed = computed_pairs_mask(topk_ids, num_experts, active_mask)
    # Key for sorting: the expert id for computed pairs, E (sorts last) for the others.
    sort_key = torch.where(pair_is_computed, flat_ids.long(), torch.full_like(flat_ids, num_experts, dtype=torch.long))
    counts = torch.zeros(num_experts + 1, dtype=torch.int32, device=device)
    counts.scatter_add_(0, sort_key, torch.ones_like(sort_key, dtype=torch.int32))
    counts = counts[:num_experts]
    expert_is_active = counts > 0 if active_mask is None else active_mask.to(torch.bool)

    # Compact active list: active experts first, in ascending id order (stable sort of "inactive").
    active_order = torch.argsort((~expert_is_active).to(torch.int32), stable=True)
    num_active = expert_is_active.sum(dtype=torch.int32).reshape(1)
    slot = torch.arange(num_experts, device=device)
    active_experts = torch.where(slot < num_active, active_order.to(torch.int32), torch.full_like(slot, -1, dtype=torch.int32))

    # Blocks per expert along the compact list; an expert with zero tokens takes no block. Working on the
    # compact list keeps the blocks of the active experts contiguous in the grid.
    counts_compact = torch.where(slot < num_active, counts[active_order.long()], torch.zeros_like(counts))
    blocks_compact = (counts_compact + block_m - 1) // block_m
    block_end_compact = torch.cumsum(blocks_compact, 0, dtype=torch.int32)  # inclusive
    block_start_compact = block_end_compact - blocks_compact
    num_blocks = block_end_compact[-1:].clamp(max=max_blocks)

    # Map compact results back to expert ids so pairs can look them up by their expert.
    block_start_by_expert = torch.zeros(num_experts + 1, dtype=torch.int32, device=device)
    block_start_by_expert.scatter_(0, active_order.long(), block_start_compact)
    pair_start_by_expert = torch.zeros(num_experts + 1, dtype=torch.int32, device=device)
    pair_start_compact = torch.cumsum(counts_compact, 0, dtype=torch.int32) - counts_compact
    pair_start_by_expert.scatter_(0, active_order.long(), pair_start_compact)

    # Stable sort by expert: pairs of one expert stay in token order (deterministic layout).
    # The rank of a pair inside its expert = its sorted position - where that expert's pairs start in
    # the sorted order; pair_start in sorted order equals the count of computed pairs of lower experts,
    # which is pair_start_by_expert because the compact list is in ascending id order.
    sorted_pairs = torch.argsort(sort_key, stable=True)
    sorted_keys = sort_key[sorted_pairs]
    sorted_position = torch.arange(num_pairs, device=device, dtype=torch.int32)
    rank_in_expert = sorted_position - pair_start_by_expert[sorted_keys]
    destination = block_start_by_expert[sorted_keys] * block_m + rank_in_expert
    capacity = max_blocks * block_m
    # Pairs that are not computed, or do not fit the grid (a max_active_experts that was not a true
    # bound), go to a trash slot one past the end, sliced off below, and are marked not computed.
    lands = (sorted_keys < num_experts) & (destination < capacity)
    destination = torch.where(lands, destination, torch.full_like(destination, capacity))
    pair_is_computed = torch.zeros_like(pair_is_computed).scatter_(0, sorted_pairs, lands)

    sorted_pair_ids = torch.full((capacity + 1,), num_pairs, dtype=torch.int32, device=device)
    sorted_pair_ids.scatter_(0, destination.long(), sorted_pairs.to(torch.int32))
    sorted_pair_ids = sorted_pair_ids[:capacity]

    # Expert of each block: the compact index c with start[c] <= b < end[c] (empty experts have
    # start == end and are skipped by the right-sided search); -1 beyond the real blocks.
    block_index = torch.arange(max_blocks, device=device, dtype=torch.int32)
    compact_of_block = torch.searchsorted(block_end_compact, block_index, right=True)
    compact_of_block = compact_of_block.clamp(max=num_experts - 1)
    block_expert = torch.where(
        block_index < num_blocks, active_order[compact_of_block].to(torch.int32), torch.full_like(block_index, -1)
    )

    return ActiveAlignment(
        sorted_pair_ids=sorted_pair_ids,
        block_expert=block_expert,
        num_blocks=num_blocks,
        pair_is_computed=pair_is_computed,
        active_experts=active_experts,
        num_active=num_active,
        expert_counts=counts,
        block_m=block_m,
        max_blocks=max_blocks,
        num_pairs=num_pairs,
    )
