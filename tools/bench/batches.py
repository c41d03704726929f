"""The routing a benchmark hands a policy: one decode batch's router logits and the model's top-k."""

from __future__ import annotations

import math

import torch


def top_k_for(num_experts: int) -> int:
    """A realistic k per expert count: Mixtral 8/top-2; Qwen2-57B 64/top-8; Qwen3-30B 128/top-8 (never
    more than the experts)."""
    return min(2 if num_experts <= 8 else 8, num_experts)


ROUTER_KINDS = ("softmax", "sigmoid", "biased-sigmoid", "biased-grouped-sigmoid")


def router_for(kind: str, num_experts: int, device, seed: int = 0):
    """The RouterModel of a benchmark's router kind (None for plain softmax): a random correction bias,
    and for the grouped kind DeepSeek-V3's limit scaled down (expert_groups)."""
    from lynx_sglang.policies import RouterModel

    if kind == "softmax":
        return None
    bias = torch.randn(num_experts, generator=torch.Generator().manual_seed(seed + 1)) * 0.1 if "biased" in kind else None
    groups = expert_groups(num_experts, top_k_for(num_experts)) if "grouped" in kind else (None, None)
    return RouterModel("sigmoid", None if bias is None else bias.to(device), *groups)


def expert_groups(num_experts: int, top_k: int) -> tuple[int, int]:
    """(groups, groups kept) as DeepSeek-V3 limits a token, scaled down: the most of 8, 4 or 2 equal groups,
    half of them kept, more where that would leave a token fewer than its k experts; ValueError when
    no such split exists (a fixed 8 and 4 failed at 6, 20 or 60 experts)."""
    for groups in (8, 4, 2):
        if num_experts % groups == 0 and num_experts // groups >= 2:
            kept = max(groups // 2, math.ceil(top_k / (num_experts // groups)))
            return groups, kept
    raise ValueError(f"{num_experts} experts do not split into 2, 4 or 8 equal groups of two or more")


def make_batch(num_rows, num_experts, top_k, device, dtype, seed=0, ids="router", router=None):
    """(logits [T, E] in dtype, the model's top-k ids [T, k] int32, their renormalised weights [T, k]):
    ids "router", the softmax top-k; "biased", a router with a per-expert correction bias; with a
    `router` (router_for), that router's own choice and weights."""
    generator = torch.Generator().manual_seed(seed)
    # Skewed routing, as in real models: a shared per-expert bias on top of per-token noise.
    logits = (torch.randn(num_rows, num_experts, generator=generator) * 2.0
              + torch.randn(1, num_experts, generator=generator))
    probs = torch.softmax(logits, dim=-1)
    weights, top = probs.topk(top_k, dim=-1)
    if ids == "biased":  # DeepSeek-V3-style selection: top-k of the scores plus a per-expert bias
        top = (logits + 2.0 * torch.randn(1, num_experts, generator=generator)).topk(top_k, dim=-1).indices
        weights = probs.gather(1, top)
    if router is not None:
        from lynx_sglang.policies import stable_topk_indices

        top = stable_topk_indices(router.choice_logits(logits.to(device)).cpu(), top_k)
        weights = router.scores(logits).gather(1, top)
    ids = top
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (logits.to(device=device, dtype=dtype), ids.to(device=device, dtype=torch.int32),
            weights.to(device=device))
