"""The expert cache: a MoE layer's experts in a host store, N of them in device slots (expert offload).

    store.py        ExpertCache: host store (pinned on CUDA machines), slots, expert->slot and slot->expert
    replacement.py  the replacement policies behind one interface: lru, activation
    plan.py         a call's copy plan, made on the device with static shapes (graph safe)
    copy.py         the copies: torch reference, a CPU loop, a Triton kernel reading pinned host memory
    compute.py      a layer computed through the cache, in rounds when it needs more experts than slots
    prefetch.py     the next layer's likely experts, from decayed co-activation counts

    from lynx_sglang.kernels.cache import ExpertCache, moe_through_cache
    cache = ExpertCache(w13, w2, num_slots=2, policy="lru")
    out = moe_through_cache(cache, hidden, topk_ids, topk_weights, "silu").out

docs/offload.md says what runs where, and how the copies stay inside a CUDA graph.
"""

from __future__ import annotations

from .compute import CacheCall, moe_through_cache, rounds_for
from .copy import COPY_IMPLEMENTATIONS, copy_experts
from .plan import CopyPlan, apply_plan_to_maps, plan_copies
from .prefetch import CoactivationPredictor, expert_usage
from .replacement import CACHE_POLICIES, ActivationAware, LeastRecentlyUsed, ReplacementPolicy, replacement_policy
from .store import ExpertCache, host_store

__all__ = [
    "CACHE_POLICIES",
    "COPY_IMPLEMENTATIONS",
    "ActivationAware",
    "CacheCall",
    "CoactivationPredictor",
    "CopyPlan",
    "ExpertCache",
    "LeastRecentlyUsed",
    "ReplacementPolicy",
    "apply_plan_to_maps",
    "copy_experts",
    "expert_usage",
    "host_store",
    "moe_through_cache",
    "plan_copies",
    "replacement_policy",
    "rounds_for",
]
