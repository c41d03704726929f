"""Exact orders: integer keys for ranking, and the batch's routed mass in fixed point.

Every decision of this package is a comparison of integers (or of floats produced by single IEEE
operations), never of a float sum: a float sum rounds differently with the order of its terms,
which differs between CPU, CUDA atomics and a fused kernel. So a decision is the same on every
device and in every implementation (torch, the fused Triton kernels, the CPU fast path).
"""

from __future__ import annotations

import torch

from ..kernels.routing.rules import MASS_BITS, RATIO_BITS

# One token's routed weight is MASS_ONE units: the mass is a sum of integers, exact in any order.
MASS_ONE = 1 << MASS_BITS


def float32_order_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys with the same order as fp32 `values` (no NaN); -0.0 and +0.0 get equal keys.
    A float's bits read as an int are ordered for positive floats and reversed for negative ones."""
    values = torch.where(values == 0, torch.zeros_like(values), values)
    bits = values.view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def unique_descending_keys(keys: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Fold the expert index (last dim) into int64 `keys` so that equal keys rank the lower index
    higher: key * E + (E - 1 - index). Callers keep |key| * E well inside int64."""
    index = torch.arange(num_experts, device=keys.device)
    return keys * num_experts + (num_experts - 1 - index)


def stable_topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` largest entries along the last dim, largest first, equal scores by LOWER
    index first (`torch.topk` documents no tie order, and CPU and CUDA differ). fp32/fp16/bf16
    scores (no NaN) become unique int64 keys, so `torch.topk` is unambiguous and cheaper than a
    stable sort; other dtypes take a stable descending sort."""
    if scores.dtype in (torch.float32, torch.float16, torch.bfloat16):
        keys = unique_descending_keys(float32_order_key(scores.float()), scores.shape[-1])
        return torch.topk(keys, k, dim=-1, sorted=True).indices
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def own_topk_indices(scores: torch.Tensor, k: int, model_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's own top-k of `scores` (finite, no NaN), best first, equal scores by lower index; but
    where the model's ids [T, k] are a top-k of the row too (k distinct experts, no other scoring above
    their lowest), that set: a tie at the top-k boundary goes to the expert the model took, so a policy
    that keeps every token's own experts keeps the model's routing. Static shapes, no host sync."""
    if model_ids is None:
        return stable_topk_indices(scores, k)
    num_experts = scores.shape[-1]
    ids = model_ids.long()
    in_range = ((ids >= 0) & (ids < num_experts)).all(dim=-1)
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(1, ids.clamp(0, num_experts - 1), True)
    lowest_chosen = scores.masked_fill(~chosen, float("inf")).amin(dim=-1)
    best_other = scores.masked_fill(chosen, float("-inf")).amax(dim=-1)
    is_top_k = in_range & (chosen.sum(dim=-1) == k) & (best_other <= lowest_chosen)
    # One selection: where the model's ids are a top-k, only they compete (as the fused launches do it)
    return stable_topk_indices(scores.masked_fill(is_top_k.unsqueeze(1) & ~chosen, float("-inf")), k)


def own_weight_units(logits: torch.Tensor, own_ids: torch.Tensor) -> torch.Tensor:
    """[T, k] int64: each token's top-k weights renormalised over its top-k, in units of 1/MASS_ONE.

    `own_ids` are the token's own top-k, best first, so the first gap is 0. exp is taken in float64
    and rounded to fp32 (the correctly rounded fp32 exp, whatever the device's exp implementation),
    scaled exactly by 2**40 and truncated; the rest is integer arithmetic.
    """
    picked = logits.gather(1, own_ids)
    ratio = (picked - picked[:, :1]).double().exp().float()  # p_e / p_top1 in (0, 1]
    fixed = (ratio * float(1 << RATIO_BITS)).long()
    return fixed * MASS_ONE // fixed.sum(dim=1, keepdim=True)


def preference_order(mass: torch.Tensor, counts: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[E] experts best first: routed mass descending, then top-k vote count descending, then lower
    index. mass <= T * MASS_ONE and counts <= T, so the key stays far inside int64."""
    key = mass * (num_rows + 1) + counts
    return torch.topk(unique_descending_keys(key, mass.shape[0]), mass.shape[0]).indices


def rank_of(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: rank_of(order)[order[i]] = i."""
    positions = torch.arange(order.shape[0], device=order.device)
    return torch.empty_like(order).scatter_(0, order, positions)
