"""The baseline, the peers of Lynx, and controls: baseline, oea, budget, topn, static-topk, random,
coverage. Each decides only the batch's active set; Policy.select does the rest.
See docs/policies.md for the idea, formula, parameters and source of each.
"""

from __future__ import annotations

import math

import torch

from ..kernels.routing import BudgetRule, CoverageRule, OwnTopRule, TopNRule
from ..kernels.routing.batch import ids_to_mask, real_rows
from .base import Policy, PolicyConfigError, PolicyDecision, RoutingContext, ensure_min_active
from .keys import MASS_BITS, MASS_ONE, unique_descending_keys
from .params import check_bool, experts_kept
from .router import split_shared


class BaselinePolicy(Policy):
    """Identity: the model's routing, unchanged, whatever the logits hold (and whatever budget)."""

    name = "baseline"
    keeps_lone_row = True

    def select(self, router_logits, topk_ids, topk_weights, num_real=None, layer_id=None, budget=None, *,
               implementation="auto", router=None, resident=None) -> PolicyDecision:
        if router is None or not router.shared_slots:
            return self.select_reference(router_logits, topk_ids, topk_weights, num_real, layer_id, budget)
        routed = self.select_reference(router_logits, *(split_shared(t, router.shared_slots)[0]
                                                        for t in (topk_ids, topk_weights)), num_real, layer_id, budget)
        return PolicyDecision(topk_ids, topk_weights, routed.active_mask)  # shared experts are never the policy's

    def select_reference(self, router_logits, topk_ids, topk_weights, num_real=None, layer_id=None,
                         budget=None, resident=None) -> PolicyDecision:
        self._check_shapes(router_logits, topk_ids, topk_weights, budget)
        return self.pass_through(topk_ids, topk_weights, real_rows(router_logits.shape[0], num_real, router_logits.device))


class OeaPolicy(Policy):
    """Opportunistic Expert Activation: each token keeps its own top-k0 (a batch-independent
    floor); the active set is the union of the voters' floors, and each token fills its remaining
    k - k0 slots from that union in its own router order (which is exactly the remap's top-k over
    the union, because a token's floor is its k0 best experts).

    `prefer_resident` (with an expert cache): the experts the cache holds join the union (Policy.select),
    so the remaining slots also take them where the token rates them higher: the floors are all the
    step must copy."""

    name = "oea"
    keeps_lone_row = True

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, k0=None, prefer_resident=False):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.k0 = self.check_int("k0", max(1, top_k // 2) if k0 is None else k0, 1, top_k)
        self.prefer_resident = check_bool(self.name, "prefer_resident", prefer_resident)

    def fused_rule(self) -> OwnTopRule:
        return OwnTopRule(self.k0)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        return ids_to_mask(ctx.own_topk_ids(self.k0), ctx.voters, self.num_experts)


class BudgetPolicy(Policy):
    """Explicit expert budget (XShare-style): keep at most N experts, those receiving the most
    routed mass from the batch (RoutingContext.preference_order: mass, then votes, then index);
    the rest are remapped. Experts no voter chose are never added, so a batch already within
    budget is unchanged."""

    name = "budget"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, num_experts_kept=None,
                 fraction=None):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.num_experts_kept = experts_kept(self.name, num_experts, top_k, num_experts_kept, fraction)
        self.keeps_lone_row = self.num_experts_kept >= top_k  # a cap below k is an explicit budget

    def fused_rule(self) -> BudgetRule:
        return BudgetRule(self.num_experts_kept)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        return (ctx.preference_rank() < self.num_experts_kept) & (ctx.topk_counts() > 0)


class TopNPolicy(Policy):
    """The N experts chosen (in their own top-k) by the most voters; ties broken by routed mass,
    then by lower index."""

    name = "topn"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, num_experts_kept=None,
                 fraction=None, n=None):
        super().__init__(num_experts, top_k, renormalize, layers)
        if n is not None:  # the N of its name, as `topn:n=3..7` spells it: num_experts_kept
            if num_experts_kept is not None:
                raise PolicyConfigError(f"policy '{self.name}': 'n' is 'num_experts_kept'; give one of them")
            num_experts_kept = self.check_int("n", n, top_k, num_experts)
        self.num_experts_kept = experts_kept(self.name, num_experts, top_k, num_experts_kept, fraction)
        self.keeps_lone_row = self.num_experts_kept >= top_k  # a cap below k is an explicit budget

    def fused_rule(self) -> TopNRule:
        return TopNRule(self.num_experts_kept)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        counts = ctx.topk_counts()
        # routed mass <= T * MASS_ONE: one integer key, count first.
        rank_key = counts * (ctx.logits.shape[0] * MASS_ONE + 1) + ctx.routed_mass()
        best = torch.topk(unique_descending_keys(rank_key, self.num_experts), self.num_experts_kept).indices
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

    def fused_rule(self) -> OwnTopRule:
        return OwnTopRule(self.top_k_used)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        return ids_to_mask(ctx.own_topk_ids(self.top_k_used), ctx.voters, self.num_experts)


_MASK31 = (1 << 31) - 1


def _mix31(x):
    """A 31-bit integer hash (xorshift-multiply rounds) of a python int or an int64 tensor.
    Operands stay below 2**62, so int64 arithmetic never overflows and CPU and CUDA agree."""
    x = x & _MASK31
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
        self.num_experts_kept = experts_kept(self.name, num_experts, top_k, num_experts_kept, fraction)
        self.seed = self.check_int("seed", seed, 0, 2**31 - 1)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        own_ids = ctx.own_topk_ids()
        device = own_ids.device
        # Hash each voter's ranked choices; summing makes the code independent of row order.
        slot = torch.arange(self.top_k, device=device).unsqueeze(0)
        token_codes = _mix31(own_ids + self.num_experts * slot) * ctx.voters.unsqueeze(1)
        batch_code = token_codes.sum() & _MASK31  # at most T*k values below 2**31: no overflow
        layer_code = 0 if ctx.layer_id is None else ctx.layer_id + 1  # python int: static per layer
        static_code = _mix31(self.seed * 7919 + _mix31(layer_code))
        expert_ids = torch.arange(self.num_experts, device=device)
        priority = _mix31(_mix31(expert_ids + static_code) ^ batch_code)
        chosen = torch.topk(unique_descending_keys(priority, self.num_experts), self.num_experts_kept).indices
        return torch.zeros(self.num_experts, dtype=torch.bool, device=device).scatter(0, chosen, True)


class CoveragePolicy(Policy):
    """Accuracy budget: the fewest experts covering a fraction p of the batch's routed mass, taken
    greedily in RoutingContext.preference_order. Optionally a cap on any token's dropped weight: a
    voter whose own top-k experts outside the active set carry more than `max_dropped_mass` of its
    (renormalised) routed weight keeps its own routing (its experts join the set).
    """

    name = "coverage"
    keeps_lone_row = True

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, mass_fraction=0.9,
                 max_dropped_mass=None):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.mass_fraction = self.check_float("mass_fraction", mass_fraction, 0.0, 1.0, low_open=True)
        self.max_dropped_mass = (
            None if max_dropped_mass is None
            else self.check_float("max_dropped_mass", max_dropped_mass, 0.0, 1.0)
        )

    def fused_rule(self) -> CoverageRule:
        if self.max_dropped_mass is None:
            return CoverageRule(fraction_units(self.mass_fraction))
        return CoverageRule(fraction_units(self.mass_fraction), fraction_units(self.max_dropped_mass),
                            keep_on_any_drop=self.max_dropped_mass == 0)

    def decide(self, ctx: RoutingContext):
        active = covering_experts(ctx.routed_mass(), ctx.preference_order(), self.mass_fraction)
        if self.max_dropped_mass is None:
            return active
        # Apply the cap to the set tokens will really see (after the shared top-up to k).
        active = ensure_min_active(active, ctx, self.slots_used)
        return active, tokens_over_dropped_cap(ctx, active, self.max_dropped_mass)


def fraction_units(fraction: float) -> int:
    """A fraction in MASS_ONE fixed point, rounded down (a python int: static per policy)."""
    return math.floor(fraction * MASS_ONE)


def covering_experts(mass: torch.Tensor, order: torch.Tensor, fraction: float) -> torch.Tensor:
    """[E] bool: expert i of `order` is kept while the mass of those before it is < fraction *
    total (and its own mass is > 0); integer arithmetic, so the cut is exact."""
    mass_in_order = mass[order]
    mass_before = torch.cumsum(mass_in_order, dim=0) - mass_in_order
    needed = ((mass_before << MASS_BITS) < fraction_units(fraction) * mass.sum()) & (mass_in_order > 0)
    return torch.zeros_like(needed).scatter(0, order, needed)


def tokens_over_dropped_cap(ctx: RoutingContext, active: torch.Tensor, cap: float) -> torch.Tensor:
    """[T] bool: voters whose own experts outside `active` carry more than `cap` of their routed
    weight. cap 0 means no token may drop any expert (even one whose weight rounds to 0 units)."""
    own_inactive = ~active[ctx.own_topk_ids()]
    if cap == 0:
        return own_inactive.any(dim=-1)
    dropped = (ctx.own_weights() * own_inactive).sum(dim=-1)
    return dropped > fraction_units(cap)
