"""The shared remap helper and the small tensor utilities every policy uses.

A policy only decides WHICH experts the batch may use (an active mask [E]); this module turns that
decision into per-token routing: each token re-takes its top-k over the active experts and its
weights are fixed up. Everything here is static-shape tensor code: no `.item()`, no host sync, no
data-dependent shapes, no Python branch on tensor values, so it runs inside CUDA graphs and compiles
with `torch.compile(fullgraph=True)`.
"""

from __future__ import annotations

import torch

from ..kernels.routing.rules import FP32_BIG as _FP32_BIG
from .keys import float32_order_key, own_topk_indices, unique_descending_keys


def sanitize_logits(router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (logits in fp32 with every value finite, row_is_finite [T] bool).

    A row is finite when none of its logits is NaN, +inf or -inf. In a non-finite row NaN and -inf
    become a very low value and +inf a very high one, so the row can still be ranked and
    softmaxed without producing NaN; policies never let such a row vote (see Policy.select).
    """
    logits32 = router_logits.float()
    row_is_finite = torch.isfinite(logits32).all(dim=-1)
    clean = torch.nan_to_num(logits32, nan=-_FP32_BIG, posinf=_FP32_BIG, neginf=-_FP32_BIG)
    return clean, row_is_finite


def remap_topk(
    router_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    active_mask: torch.Tensor,
    keep_original_rows: torch.Tensor | None = None,
    renormalize: bool = True,
    slots_used: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-take each token's top-k over the active experts and fix its weights.

    Args:
        router_logits: [T, E] router logits (any float dtype; computed in fp32).
        topk_ids, topk_weights: [T, k] the model's normal routing for the same tokens.
        active_mask: [E] bool, the experts the batch may use. With fewer than `slots_used` active
            experts (an expert budget below k), the slots that cannot be filled repeat the token's
            first chosen expert with weight 0, so no slot names an inactive expert.
        keep_original_rows: optional [T] bool; those rows return topk_ids/topk_weights unchanged.
        renormalize: True: weights sum to 1. False: weights are rescaled so their sum equals the
            token's original top-k mass (the row sum of topk_weights), as for models that do not
            renormalise (Qwen2-MoE, DeepSeek with norm_topk_prob=False).
        slots_used: how many slots get an expert (default k). With fewer (static-topk), the
            remaining slots repeat the token's first expert with weight 0 so they add no expert and
            contribute nothing.

    Returns (ids [T, k] in topk_ids' dtype, weights [T, k] in topk_weights' dtype).

    Rules:
      * new ids = top-`slots_used` of the logits with inactive experts at -inf; equal logits: the
        token's own top-k first (keys.own_topk_indices: the model's ids where they are a top-k), then
        lower index. So an own expert that stays active stays, whichever way the model broke a tie.
      * new weights = the softmax probabilities of the ORIGINAL full distribution at the new ids,
        scaled to the target sum. Scaling to a fixed sum makes the full softmax's normaliser cancel,
        so this equals softmax(selected logits) * target, which we compute: it is the same number
        and it cannot underflow to all-zeros when the token's favourite experts were dropped.
      * a row whose original experts are ALL active keeps its original ids and weights bit for bit
        (only when slots_used == k and its logits are finite), so pruning never perturbs a token
        it did not have to move.
    """
    clean, row_is_finite = sanitize_logits(router_logits)
    return _remap_clean(
        clean, row_is_finite, topk_ids, topk_weights, active_mask, keep_original_rows,
        renormalize, slots_used, own_topk_indices(clean, topk_ids.shape[1], topk_ids),
    )


def target_weight_sum(topk_weights: torch.Tensor, renormalize: bool) -> torch.Tensor:
    """[T, 1] fp32: what a remapped row's weights sum to: 1 when the model renormalises, else the row's
    original top-k mass (a garbage weight row falls back to 1, never to NaN weights)."""
    if renormalize:
        return torch.ones(topk_weights.shape[0], 1, dtype=torch.float32, device=topk_weights.device)
    mass = topk_weights.float().sum(dim=-1, keepdim=True)
    return torch.where(torch.isfinite(mass), mass, 1.0).clamp_min(0.0)


def _remap_clean(
    clean_logits: torch.Tensor,
    row_is_finite: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    active_mask: torch.Tensor,
    keep_original_rows: torch.Tensor | None,
    renormalize: bool,
    slots_used: int | None,
    own_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`remap_topk` on logits already passed through `sanitize_logits` (Policy.select shares them and
    the rows' own top-k, own_ids [T, k])."""
    num_rows, num_experts = clean_logits.shape
    top_k = topk_ids.shape[1]
    slots = top_k if slots_used is None else slots_used

    masked = clean_logits.masked_fill(~active_mask.unsqueeze(0), float("-inf"))
    own = torch.zeros_like(masked, dtype=torch.bool).scatter(1, own_ids, True)
    keys = unique_descending_keys(float32_order_key(masked) * 2 + own.long(), num_experts)
    new_ids = torch.topk(keys, slots, dim=-1, sorted=True).indices  # [T, slots] int64
    selected_logits = masked.gather(1, new_ids)
    # Fewer active experts than slots (an expert budget below k): the slots left over would name
    # an inactive expert; they repeat the token's first choice instead, with weight 0 (below).
    new_ids = torch.where(selected_logits == float("-inf"), new_ids[:, :1], new_ids)

    target_mass = target_weight_sum(topk_weights, renormalize)
    # nan_to_num: only reachable when the active set is empty (softmax of all -inf).
    new_weights = torch.nan_to_num(torch.softmax(selected_logits, dim=-1), nan=0.0) * target_mass

    if slots < top_k:
        unused = top_k - slots
        new_ids = torch.cat([new_ids, new_ids[:, :1].expand(num_rows, unused)], dim=1)
        new_weights = torch.cat([new_weights, new_weights.new_zeros(num_rows, unused)], dim=1)

    keep = torch.zeros(num_rows, dtype=torch.bool, device=clean_logits.device)
    if slots == top_k:
        original_all_active = active_mask[topk_ids.long().clamp(0, num_experts - 1)].all(dim=-1)
        keep = original_all_active & row_is_finite
    if keep_original_rows is not None:
        keep = keep | keep_original_rows
    keep = keep.unsqueeze(1)
    out_ids = torch.where(keep, topk_ids, new_ids.to(topk_ids.dtype))
    out_weights = torch.where(keep, topk_weights, new_weights.to(topk_weights.dtype))
    return out_ids, out_weights
