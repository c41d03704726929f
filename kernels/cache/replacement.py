"""Replacement policies of the expert cache: which resident expert leaves when a missing one comes in.

One small interface: `record(used, pairs)` after each layer call (the experts it computed and how many
(token, slot) pairs each had), and `keep_scores(slot_to_expert)`, one float per slot, lowest evicted
first. State lives on the device and every update is a tensor op: graph safe.

* `lru`: the layer call that last used each expert (a device clock); the oldest leaves.
* `activation`: a decayed count of the pairs routed to each expert, the per-expert form of
  MoE-Infinity's activation statistics (its request-level matrices ask which experts the requests in
  flight keep using; a count that decays with a half-life of `half_life` layer calls asks the same of
  the recent batches, with no per-request state). Ties go to recency, so a fresh cache behaves as LRU.
"""

from __future__ import annotations

import torch

CACHE_POLICIES = ("lru", "activation")


class ReplacementPolicy:
    name = ""

    def __init__(self, num_experts: int, device):
        self.last_use = torch.zeros(num_experts, dtype=torch.float64, device=device)
        self.clock = torch.zeros((), dtype=torch.float64, device=device)

    def record(self, used: torch.Tensor, pairs: torch.Tensor) -> None:
        """used [E] bool: the experts a layer call computed; pairs [E]: its (token, slot) pairs per expert."""
        self.clock.add_(1)
        self.last_use.copy_(torch.where(used, self.clock, self.last_use))

    def keep_scores(self, slot_to_expert: torch.Tensor) -> torch.Tensor:
        """[N] float64: how much each slot's expert is worth keeping (a slot's value when empty is unused)."""
        raise NotImplementedError

    def reset(self) -> None:
        self.last_use.zero_()
        self.clock.zero_()


class LeastRecentlyUsed(ReplacementPolicy):
    name = "lru"

    def keep_scores(self, slot_to_expert: torch.Tensor) -> torch.Tensor:
        return self.last_use[slot_to_expert.long().clamp(min=0)]


class ActivationAware(ReplacementPolicy):
    name = "activation"

    def __init__(self, num_experts: int, device, half_life: float = 64.0):
        if not half_life > 0:
            raise ValueError(f"activation cache policy: half_life must be > 0, got {half_life!r}")
        super().__init__(num_experts, device)
        self.decay = 0.5 ** (1.0 / half_life)
        self.activation = torch.zeros(num_experts, dtype=torch.float64, device=device)

    def record(self, used: torch.Tensor, pairs: torch.Tensor) -> None:
        super().record(used, pairs)
        self.activation.mul_(self.decay).add_(pairs.to(torch.float64))

    def keep_scores(self, slot_to_expert: torch.Tensor) -> torch.Tensor:
        experts = slot_to_expert.long().clamp(min=0)
        # Recency breaks ties: clock values stay far below 2**52, so last_use / 2**52 < 1 pair.
        return self.activation[experts] + self.last_use[experts] / 2.0**52

    def reset(self) -> None:
        super().reset()
        self.activation.zero_()


def replacement_policy(name: str, num_experts: int, device) -> ReplacementPolicy:
    if name == "lru":
        return LeastRecentlyUsed(num_experts, device)
    if name == "activation":
        return ActivationAware(num_experts, device)
    raise ValueError(f"cache policy must be one of {', '.join(CACHE_POLICIES)}, got {name!r}")
