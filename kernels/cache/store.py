"""One MoE layer's expert cache: every expert in a host store, N of them in device slots.

    host_w13 [E, 2I, H], host_w2 [E, H, I]   every expert; pinned memory where CUDA is available
    slot_w13 [N, 2I, H], slot_w2 [N, H, I]   the resident experts, on the device
    expert_to_slot [E] int32                 -1: not resident (a view of an [E + 1] buffer, plan.py)
    slot_to_expert [N] int32                 -1: an empty slot

The slots start with experts 0..N-1. `fetch(wanted)` plans (plan.py), updates both maps and copies
(copy.py); the active-expert kernel then reads weights through `expert_to_slot`
(`fused_moe_active(..., expert_slots=cache.expert_to_slot)`). Nothing here syncs with the host on the
Triton path: a decode step that fetches and computes stays capturable into a CUDA graph.
"""

from __future__ import annotations

import torch

from .copy import COPY_IMPLEMENTATIONS, copy_experts
from .plan import CopyPlan, apply_plan_to_maps, plan_copies
from .replacement import ReplacementPolicy, replacement_policy


def host_store(weights: torch.Tensor, pin: bool | None = None) -> torch.Tensor:
    """`weights` as a contiguous CPU tensor, pinned (page-locked) when CUDA is available (None) or asked:
    GPU kernels read pinned memory through its device address, and only pinned memory. Weights that are
    already so (made in host memory at load) are taken as they are, not copied."""
    pin = torch.cuda.is_available() if pin is None else pin
    if weights.device.type == "cpu" and weights.is_contiguous() and (weights.is_pinned() or not pin):
        return weights.detach()
    host = torch.empty(weights.shape, dtype=weights.dtype, device="cpu", pin_memory=pin)
    host.copy_(weights.detach())
    return host


class ExpertCache:
    """w13 [E, 2I, H] and w2 [E, H, I]: the layer's expert weights (any device; copied to the host
    store). num_slots N in 1..E; device: where the slots live (default: the weights' device)."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor, num_slots: int, policy: str = "lru",
                 device=None, pin: bool | None = None):  # fmt: skip
        num_experts = w13.shape[0]
        if w13.dim() != 3 or w2.dim() != 3 or w2.shape[0] != num_experts:
            raise ValueError(f"ExpertCache: w13 [E, 2I, H] and w2 [E, H, I] disagree: {list(w13.shape)}, {list(w2.shape)}")
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or not 1 <= num_slots <= num_experts:
            raise ValueError(f"ExpertCache: num_slots must be an integer in 1..{num_experts}, got {num_slots!r}")
        device = torch.device(device) if device is not None else w13.device
        self.host_w13 = host_store(w13, pin)
        self.host_w2 = host_store(w2, pin)
        if device.type == "cuda" and not self.host_w13.is_pinned():
            raise ValueError("ExpertCache: slots on a GPU read the host store through its device address, "
                             "which only pinned (page-locked) memory has; pin must not be False")
        self.slot_w13 = self.host_w13[:num_slots].to(device, copy=True)
        self.slot_w2 = self.host_w2[:num_slots].to(device, copy=True)
        self._expert_to_slot = torch.full((num_experts + 1,), -1, dtype=torch.int32, device=device)
        self._expert_to_slot[:num_slots] = torch.arange(num_slots, dtype=torch.int32, device=device)
        self.slot_to_expert = torch.arange(num_slots, dtype=torch.int32, device=device)
        self.policy: ReplacementPolicy = replacement_policy(policy, num_experts, device)
        # Experts copied in by prefetch since the layer's last call ([E + 1]: the last entry takes the
        # writes of plan entries without a copy).
        self._prefetched = torch.zeros(num_experts + 1, dtype=torch.bool, device=device)

    @property
    def expert_to_slot(self) -> torch.Tensor:
        return self._expert_to_slot[:-1]

    @property
    def num_experts(self) -> int:
        return self.host_w13.shape[0]

    @property
    def num_slots(self) -> int:
        return self.slot_w13.shape[0]

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert (w13 and w2) as this cache holds it: what one copy moves."""
        return (self.slot_w13[0].numel() + self.slot_w2[0].numel()) * self.slot_w13.element_size()

    @property
    def resident(self) -> torch.Tensor:
        """[E] bool on the device: which experts are in slots now (what a cache-aware policy reads)."""
        return self.expert_to_slot >= 0

    @property
    def prefetched(self) -> torch.Tensor:
        """[E] bool: experts copied in by `prefetch` since the layer's last call (moe_through_cache clears it)."""
        return self._prefetched[:-1]

    def prefetch(self, likely: torch.Tensor, implementation: str = "auto") -> CopyPlan:
        """`fetch` ahead of the layer's call, remembering which experts it copied. An expert prefetched
        and then not used has an old keep score under LRU, so it is among the first to leave again."""
        plan = self.fetch(likely, implementation)
        source = plan.source_expert.long()
        self._prefetched.scatter_(0, torch.where(source >= 0, source, self.num_experts), True)
        self._prefetched[-1:].fill_(False)
        return plan

    def fetch(self, wanted: torch.Tensor, implementation: str = "auto") -> CopyPlan:
        """Make up to N of the `wanted` experts ([E] bool) resident: the wanted ones already resident
        stay, missing ones replace the others (the policy's lowest keep score first). Returns the plan."""
        if implementation not in COPY_IMPLEMENTATIONS:  # before the maps change
            raise ValueError(f"copy_experts: implementation must be one of {COPY_IMPLEMENTATIONS}, got {implementation!r}")
        plan = plan_copies(wanted, self.expert_to_slot, self.slot_to_expert,
                           self.policy.keep_scores(self.slot_to_expert))  # fmt: skip
        apply_plan_to_maps(plan, self._expert_to_slot, self.slot_to_expert)
        copy_experts(plan, self.host_w13, self.slot_w13, implementation)
        copy_experts(plan, self.host_w2, self.slot_w2, implementation)
        return plan
