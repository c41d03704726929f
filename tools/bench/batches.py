"""The routing a benchmark hands a policy: one decode batch's router logits and the model's top-k."""

from __future__ import annotations

import torch


def top_k_for(num_experts: int) -> int:
    """A realistic k per expert count: Mixtral 8/top-2; Qwen2-57B 64/top-8; Qwen3-30B 128/top-8."""
    return 2 if num_experts <= 8 else 8


def make_batch(num_rows, num_experts, top_k, device, dtype, seed=0, ids="router"):
    """(logits [T, E] in dtype, the model's top-k ids [T, k] int32, their renormalised weights [T, k]):
    ids "router", the softmax top-k; "biased", a router with a per-expert correction bias."""
    generator = torch.Generator().manual_seed(seed)
    # Skewed routing, as in real models: a shared per-expert bias on top of per-token noise.
    logits = (torch.randn(num_rows, num_experts, generator=generator) * 2.0
              + torch.randn(1, num_experts, generator=generator))
    probs = torch.softmax(logits, dim=-1)
    weights, top = probs.topk(top_k, dim=-1)
    if ids == "biased":  # DeepSeek-V3-style selection: top-k of the scores plus a per-expert bias
        top = (logits + 2.0 * torch.randn(1, num_experts, generator=generator)).topk(top_k, dim=-1).indices
        weights = probs.gather(1, top)
    ids = top
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (logits.to(device=device, dtype=dtype), ids.to(device=device, dtype=torch.int32),
            weights.to(device=device))
