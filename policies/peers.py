"""The baseline, the peers of Lynx, and controls: baseline, oea, budget, topn, static-topk, random,
coverage. Each decides only the batch's active set; Policy.select does the rest.
See docs/policies.md for the idea, formula, parameters and source of each.
"""

from __future__ import annotations

import torch

from .base import Policy, PolicyConfigError, PolicyDecision, RoutingContext, ensure_min_active
from .remap import ids_to_mask, stable_topk_indices


class BaselinePolicy(Policy):
    """Identity: the model's routing, unchanged, whatever the logits hold."""

    name = "baseline"

    def select(self, router_logits, topk_ids, topk_weights, num_real=None, layer_id=None) -> PolicyDecision:
        self._check_shapes(router_logits, topk_ids, topk_weights)
        num_rows = router_logits.shape[0]
        row_index = torch.arange(num_rows, device=router_logits.device)
        row_is_real = row_index >= 0 if num_real is None else row_index < num_real
        return self.pass_through(topk_ids, topk_weights, row_is_real)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:  # not used: select is overridden
        return ids_to_mask(ctx.own_topk_ids(), ctx.voters, self.num_experts)


class OeaPolicy(Policy):
    """Opportunistic Expert Activation: each token keeps its own top-k0 (a batch-independent
    floor); the active set is the union of the voters' floors, and each token fills its remaining
    k - k0 slots from that union in its own router order (which is exactly the remap's top-k over
    the union, because a token's floor is its k0 best experts)."""

    name = "oea"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, k0=None):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.k0 = self.check_int("k0", max(1, top_k // 2) if k0 is None else k0, 1, top_k)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        return ids_to_mask(ctx.own_topk_ids(self.k0), ctx.voters, self.num_experts)


class BudgetPolicy(Policy):
    """Explicit expert budget (XShare-style): keep at most N experts, those receiving the most
    gating mass from the batch under normal routing (RoutingContext.routed_mass); the rest are
    remapped. Experts no voter chose are never added, so a batch already within budget is
    unchanged."""

    name = "budget"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, num_experts_kept=None,
                 fraction=None):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.num_experts_kept = self.expert_budget_from(num_experts_kept, fraction)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        mass = ctx.routed_mass()
        best = stable_topk_indices(mass, self.num_experts_kept)
        kept = torch.zeros_like(mass, dtype=torch.bool).scatter(0, best, True)
        return kept & (mass > 0)


class TopNPolicy(Policy):
    """The N experts chosen (in their own top-k) by the most voters; ties broken by routed gating
    mass, then by lower index."""

    name = "topn"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, num_experts_kept=None,
                 fraction=None):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.num_experts_kept = self.expert_budget_from(num_experts_kept, fraction)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        counts = ctx.topk_counts()
        num_rows = ctx.logits.shape[0]
        # routed mass of an expert <= its count <= T, so mass / (T + 1) < 1 only breaks count ties.
        rank_key = counts.float() + ctx.routed_mass() / (num_rows + 1)
        best = stable_topk_indices(rank_key, self.num_experts_kept)
        kept = torch.zeros_like(counts, dtype=torch.bool).scatter(0, best, True)
        return kept & (counts > 0)


class StaticTopKPolicy(Policy):
    """Every token uses only its own top-k' (k' < k), as llama.cpp's --moe-n-expert. The unused
    k - k' slots repeat the token's first expert with weight 0 (they add no expert and contribute
    nothing); weights of the k' used slots are renormalised (or rescaled to the original mass)."""

    name = "static-topk"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, top_k_used=None):
        super().__init__(num_experts, top_k, renormalize, layers)
        if top_k < 2:
            raise PolicyConfigError(
                f"policy '{self.name}': needs a model with top_k >= 2 to use fewer experts (top_k={top_k})"
            )
        default = max(1, top_k // 2)
        self.top_k_used = self.check_int("top_k_used", default if top_k_used is None else top_k_used,
                                         1, top_k - 1)
        self.slots_used = self.top_k_used

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        return ids_to_mask(ctx.own_topk_ids(self.top_k_used), ctx.voters, self.num_experts)


_MASK31 = (1 << 31) - 1


def _mix31(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash (xorshift-multiply rounds). Operands stay below 2**62, so int64
    arithmetic never overflows and CPU and CUDA give the same bits."""
    x = x & _MASK31
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _MASK31
    x = ((x ^ (x >> 12)) * 0x297A2D39) & _MASK31
    return x ^ (x >> 15)


def _mix31_int(x: int) -> int:
    """`_mix31` on a python int (for the seed and layer, which are static)."""
    x &= _MASK31
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _MASK31
    x = ((x ^ (x >> 12)) * 0x297A2D39) & _MASK31
    return x ^ (x >> 15)


class RandomPolicy(Policy):
    """Control: exactly N pseudo-random experts per batch.

    The random priorities are a hash of (seed, layer_id, the multiset of the voters' ranked own
    top-k ids), computed with integer tensor ops: no generator state, so the same input always gives
    the same output, different batches and layers get different sets, padding rows cannot change
    it, and it is graph safe. The set ignores routing quality by design; N is exact.
    """

    name = "random"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, num_experts_kept=None,
                 fraction=None, seed=0):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.num_experts_kept = self.expert_budget_from(num_experts_kept, fraction)
        self.seed = self.check_int("seed", seed, 0, 2**31 - 1)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        own_ids = ctx.own_topk_ids()
        device = own_ids.device
        # Hash each voter's ranked choices; summing makes the code independent of row order.
        slot = torch.arange(self.top_k, device=device).unsqueeze(0)
        token_codes = _mix31(own_ids + self.num_experts * slot) * ctx.voters.unsqueeze(1)
        batch_code = token_codes.sum() & _MASK31  # at most T*k values below 2**31: no overflow
        layer_code = 0 if ctx.layer_id is None else ctx.layer_id + 1  # python int: static per layer
        static_code = _mix31_int(self.seed * 7919 + _mix31_int(layer_code))
        expert_ids = torch.arange(self.num_experts, device=device)
        priority = _mix31(_mix31(expert_ids + static_code) ^ batch_code)
        chosen = stable_topk_indices(priority, self.num_experts_kept)
        return torch.zeros(self.num_experts, dtype=torch.bool, device=device).scatter(0, chosen, True)


class CoveragePolicy(Policy):
    """Accuracy budget: the fewest experts covering a fraction p of the batch's routed gating mass
    (RoutingContext.routed_mass), taken greedily from the most massive. Optionally a cap on any
    token's dropped mass: a voter whose own top-k experts outside the active set carry more than
    `max_dropped_mass` of its router probability keeps its own routing (its experts join the set).
    """

    name = "coverage"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, mass_fraction=0.9,
                 max_dropped_mass=None):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.mass_fraction = self.check_float("mass_fraction", mass_fraction, 0.0, 1.0, low_open=True)
        self.max_dropped_mass = (
            None if max_dropped_mass is None
            else self.check_float("max_dropped_mass", max_dropped_mass, 0.0, 1.0)
        )

    def decide(self, ctx: RoutingContext):
        mass = ctx.routed_mass()
        sorted_mass, order = torch.sort(mass, descending=True, stable=True)
        mass_before = torch.cumsum(sorted_mass, dim=0) - sorted_mass  # exclusive prefix sum
        # Expert i (in mass order) is needed while the ones before it cover less than p.
        needed = (mass_before < self.mass_fraction * mass.sum()) & (sorted_mass > 0)
        active = torch.zeros_like(needed).scatter(0, order, needed)
        if self.max_dropped_mass is None:
            return active
        # Apply the cap to the set tokens will really see (after the shared top-up to k).
        active = ensure_min_active(active, ctx, self.slots_used)
        own_ids = ctx.own_topk_ids()
        own_probs = ctx.probs().gather(1, own_ids)
        dropped = (own_probs * ~active[own_ids]).sum(dim=-1)
        return active, dropped > self.max_dropped_mass
