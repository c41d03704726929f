"""`ExpertBudget`: a per-step cap on a batch's active experts, changeable without recapturing graphs.

The two limits are 0-dim device tensors filled in place (`fill_`, never reallocated), so a CUDA graph
captured once reads whatever values the caller set before each replay. `Policy.select(...,
budget=...)` applies the cap after the policy's own decision (see `cap_active_experts`).
"""

from __future__ import annotations

import math

import torch

from .keys import MASS_BITS


class ExpertBudget:
    """max_experts: 0-dim int64, E or more = no cap. mass_fraction: 0-dim fp32, >= 1 = no cap."""

    def __init__(self, num_experts: int, max_experts: torch.Tensor, mass_fraction: torch.Tensor):
        if max_experts.dim() != 0 or max_experts.dtype != torch.int64:
            raise ValueError(f"max_experts must be a 0-dim int64 tensor, got {max_experts.dtype} {tuple(max_experts.shape)}")
        if mass_fraction.dim() != 0 or mass_fraction.dtype != torch.float32:
            raise ValueError(f"mass_fraction must be a 0-dim float32 tensor, got {mass_fraction.dtype} {tuple(mass_fraction.shape)}")
        self.num_experts = num_experts
        self.max_experts = max_experts
        self.mass_fraction = mass_fraction

    @classmethod
    def unlimited(cls, num_experts: int, device=None) -> "ExpertBudget":
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"num_experts must be an integer >= 1, got {num_experts!r}")
        return cls(num_experts, torch.tensor(num_experts, dtype=torch.int64, device=device),
                   torch.tensor(1.0, dtype=torch.float32, device=device))

    def set_experts(self, n: int) -> "ExpertBudget":
        """At most n active experts (1..E)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.num_experts:
            raise ValueError(f"expert budget: experts={n!r} must be an integer in 1..{self.num_experts}")
        self.max_experts.fill_(n)
        return self

    def set_fraction(self, f: float) -> "ExpertBudget":
        """At most ceil(f * E) active experts, f in (0, 1]."""
        f = _fraction("fraction", f)
        return self.set_experts(max(1, math.ceil(f * self.num_experts)))

    def set_mass(self, p: float) -> "ExpertBudget":
        """The fewest top-ranked active experts covering a fraction p in (0, 1] of the routed mass."""
        self.mass_fraction.fill_(_fraction("mass", p))
        return self

    def set_unlimited(self) -> "ExpertBudget":
        self.max_experts.fill_(self.num_experts)
        self.mass_fraction.fill_(1.0)
        return self

    def __repr__(self) -> str:  # reads device scalars: for logs and debugging, never per step
        return (f"ExpertBudget(E={self.num_experts}, max_experts={int(self.max_experts)}, "
                f"mass_fraction={float(self.mass_fraction)})")


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"expert budget: {name}={value!r} must be a number in (0, 1]")
    return float(value)


def mass_threshold_units(mass_fraction: torch.Tensor) -> torch.Tensor:
    """floor(f * 2**MASS_BITS) as int64: the fraction in the fixed point of the mass comparisons."""
    return (mass_fraction.float() * float(1 << MASS_BITS)).floor().long()


def cap_active_experts(active: torch.Tensor, preference_order: torch.Tensor, mass: torch.Tensor,
                       budget: ExpertBudget) -> torch.Tensor:
    """Keep the active expert of rank r (0-based among active experts in `preference_order`) iff
    r < max_experts and (mass_fraction >= 1 or the mass of the active experts ranked before it
    < mass_fraction * total mass); the top-ranked one is always kept. Exact integer arithmetic."""
    active_in_order = active[preference_order]
    mass_in_order = mass[preference_order] * active_in_order
    rank = torch.cumsum(active_in_order.long(), 0) - 1
    mass_before = torch.cumsum(mass_in_order, 0) - mass_in_order
    # mass_before < f * total, with f rounded down to the fixed point of the mass (no float sums).
    covering = (mass_before << MASS_BITS) < mass_threshold_units(budget.mass_fraction) * mass.sum()
    wanted = (rank < budget.max_experts) & ((budget.mass_fraction >= 1.0) | covering)
    keep_in_order = active_in_order & (wanted | (rank == 0))
    return torch.zeros_like(active).scatter(0, preference_order, keep_in_order)
