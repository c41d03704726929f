"""A MoE layer computed through its expert cache, exactly, whatever the number of experts it needs.

A call that needs at most N experts (a decode batch within the cache) is one round: fetch the missing
ones, then one `fused_moe_active` over the slots. A call that needs more (prefill, a large decode
batch) streams them through the slots in rounds: each round fetches up to N of the experts still to
compute (the resident ones first, at no copy), computes the pairs of the experts now resident, and
drops them from the set. Each needed expert is copied at most once and computed exactly once, so the
sum over rounds is the layer's output (summed in fp32; a one-round call returns the kernel's own
output, bit for bit what it computes with every expert resident).

Why rounds through the slots rather than a scratch area: a scratch area big enough for what does not
fit is up to E - N experts, the device memory the cache exists to save; a fixed scratch area would be
streamed through in rounds all the same. The round count is static, ceil(min(T*k, E) / N) from
shapes only, so a captured graph holds the same launches for any routing; rounds with nothing left
to compute copy nothing, and their kernel programs exit at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..moe import fused_moe_active
from .store import ExpertCache


class CacheCall(NamedTuple):
    out: torch.Tensor  # [T, H] in hidden's dtype
    needed: torch.Tensor  # [] int64: distinct experts the call computed
    hits: torch.Tensor  # [] int64: of those, the ones resident when it began (the rest were copied)
    prefetched: torch.Tensor  # [] int64: experts prefetched since the layer's last call
    prefetch_used: torch.Tensor  # [] int64: of those, the ones this call needed


def rounds_for(num_tokens: int, top_k: int, num_experts: int, num_slots: int) -> int:
    """Rounds that always suffice: each places min(N, still needed) experts."""
    return -(-min(num_tokens * top_k, num_experts) // num_slots)


def moe_through_cache(cache: ExpertCache, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                      activation: str = "silu", *, implementation: str = "auto",
                      copy_implementation: str | None = None) -> CacheCall:  # fmt: skip
    """The layer's output for expert ids over all E experts (negative: padding, contributes 0).
    implementation: `fused_moe_active`'s; copy_implementation: `copy_experts`' (default: the same
    where it has one, "auto" otherwise)."""
    num_experts = cache.num_experts
    if copy_implementation is None:
        copy_implementation = implementation if implementation in ("triton", "cpu", "reference") else "auto"
    ids = topk_ids.reshape(-1).long()
    valid = (ids >= 0) & (ids < num_experts)
    pairs = torch.zeros(num_experts + 1, dtype=torch.int64, device=ids.device)
    pairs.scatter_add_(0, torch.where(valid, ids, num_experts), torch.ones_like(ids))
    pairs = pairs[:num_experts]
    needed = pairs > 0
    hits = (needed & cache.resident).sum()
    prefetched, prefetch_used = cache.prefetched.sum(), (cache.prefetched & needed).sum()
    cache.prefetched.fill_(False)

    rounds = rounds_for(topk_ids.shape[0], topk_ids.shape[1], num_experts, cache.num_slots)
    pending = needed
    total = None
    out = None
    for _ in range(rounds):
        cache.fetch(pending, copy_implementation)
        now = pending & cache.resident
        round_ids = torch.where(now[ids.clamp(0, num_experts - 1)] & valid, ids, -1).view(topk_ids.shape)
        out = fused_moe_active(hidden, cache.slot_w13, cache.slot_w2, round_ids.to(topk_ids.dtype), topk_weights,
                               None, activation, expert_slots=cache.expert_to_slot,
                               implementation=implementation)  # fmt: skip
        if rounds > 1:
            total = out.to(torch.promote_types(out.dtype, torch.float32)) if total is None else total.add_(out)
        pending = pending & ~now
    cache.policy.record(needed, pairs)
    if out is None:  # no tokens: nothing to compute
        out = torch.zeros(hidden.shape[0], cache.slot_w2.shape[1], dtype=hidden.dtype, device=hidden.device)
    elif total is not None:
        out = total.to(out.dtype)
    return CacheCall(out, needed.sum(), hits, prefetched, prefetch_used)
