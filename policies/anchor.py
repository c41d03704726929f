"""`anchor`: every token keeps one expert it rates almost as high as its top-1, on as few experts as possible."""

from __future__ import annotations

import math

import torch

from ..kernels.routing import AnchorRule
from ..kernels.routing.batch import ids_to_mask, real_rows
from . import params
from .base import Policy, RoutingContext, ensure_min_active
from .budget import ExpertBudget, cap_active_experts
from .keys import MASS_ONE
from .params import PolicyConfigError


class AnchorPolicy(Policy):
    """The fewest experts that give every token one expert it rates almost as high as its top-1.

    Each voter accepts the experts whose router probability is at least `ratio` times its top-1's
    (always its top-1; also near-ties). The active set is a small hitting set of those acceptable sets,
    built greedily: repeatedly add the expert acceptable to the most voters not yet served (ties: more
    routed mass, then lower index) until every voter is served. Each token then re-takes its top-k over
    the set, so its first slot is its top-1 or an expert it rates almost as high; the other slots are
    filled from experts the batch computes anyway. Voters whose top-1 holds less than `min_share` of
    their own top-k weight are not served (they go wherever the others' experts are, as lynx-v1's
    non-voters do).

    `ratio` and `min_share` take one value, or a list with one per layer (the last repeating for
    deeper layers). `layer_caps` (a list of the same kind; 0 = none) caps a layer's active experts,
    below k if asked, whenever the batch has two voters or more: for layers whose experts a model can
    share across a batch almost freely (found per model with `lynx-sglang sweep`). A token then fills
    as many slots as there are active experts, as under an expert budget.

    `fill_to_k` (default true) tops the set up to k experts, so every token keeps k slots; false
    computes only the hitting set (with two voters or more), so a token may fill fewer slots when the
    set is smaller than k.

    Whenever the set would not be smaller than the experts the voters' own routing uses, the batch
    keeps its own routing: a lone voter is never changed, nor (with fill_to_k and no cap below k) a
    batch whose voters use no more than k experts in all.

    `prefer_resident` (with an expert cache): the greedy takes an acceptable expert the cache holds
    before any other, the resident experts join the set (Policy.select), and "not smaller" counts the
    experts the step must copy, so a lone voter may take a resident expert it accepts.
    """

    name = "anchor"
    keeps_lone_row = True
    # Parameters that take a list with one value per decoder layer, indexed by layer id (the server
    # checks a list's length against the model's layers).
    per_layer_parameters = ("ratio", "min_share", "layer_caps")

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, ratio=0.5, min_share=0.0,
                 layer_caps=None, fill_to_k=True, prefer_resident=False):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.fill_to_k = params.check_bool(self.name, "fill_to_k", fill_to_k)
        self.prefer_resident = params.check_bool(self.name, "prefer_resident", prefer_resident)
        # Each setting is one value or a list with one per layer (the last repeating for deeper layers).
        self.ratio = self.per_layer("ratio", ratio, lambda v: self.check_float("ratio", v, 0.0, 1.0, low_open=True))
        self.min_share = self.per_layer("min_share", min_share, lambda v: self.check_float("min_share", v, 0.0, 1.0))
        self.layer_caps = None if layer_caps is None else self.per_layer(
            "layer_caps", layer_caps, lambda v: self.check_int("layer_caps", v, 0, self.num_experts), scalar=False)
        # log(p_e / p_top1) = L_e - L_top1, so "p_e >= ratio * p_top1" is one fp32 subtraction and a
        # comparison with this constant: the same decision on every device.
        self._log_ratio = tuple(torch.tensor(math.log(r), dtype=torch.float32).item() for r in self.ratio)

    def per_layer(self, name: str, value, check, *, scalar: bool = True) -> tuple:
        if isinstance(value, (list, tuple)) and value:
            return tuple(check(v) for v in value)
        if scalar and not isinstance(value, (list, tuple)):
            return (check(value),)
        raise PolicyConfigError(f"policy '{self.name}': parameter '{name}'={value!r} is not a list "
                                f"(allowed: one value per layer{', or one for all' if scalar else ''}"
                                f"{f'; integers 0..{self.num_experts}, 0 = no cap' if name == 'layer_caps' else ''})")

    @staticmethod
    def for_layer(values: tuple, layer_id: int | None):
        return values[0 if layer_id is None else min(layer_id, len(values) - 1)]

    def layer_cap(self, layer_id: int | None) -> int | None:
        """This layer's cap; None: no cap."""
        if self.layer_caps is None or layer_id is None:
            return None
        return self.for_layer(self.layer_caps, layer_id) or None

    def select(self, router_logits, topk_ids, topk_weights, num_real=None, layer_id=None, budget=None, **options):
        cap = self.layer_cap(layer_id)
        if cap is not None and self.applies_to_layer(layer_id):
            budget = self.capped_budget(budget, cap, router_logits, num_real)
        return super().select(router_logits, topk_ids, topk_weights, num_real, layer_id, budget, **options)

    def capped_budget(self, budget: ExpertBudget | None, cap: int, router_logits, num_real) -> ExpertBudget:
        """This layer's cap joined with the caller's budget. The cap holds only with two voters or
        more, so a lone token keeps its routing even under a cap below k."""
        device = router_logits.device
        voters = (real_rows(router_logits.shape[0], num_real, device) & torch.isfinite(router_logits).all(dim=1)).sum()
        uncapped = torch.tensor(self.num_experts, dtype=torch.int64, device=device)
        layer_max = torch.where(voters >= 2, torch.tensor(cap, dtype=torch.int64, device=device), uncapped)
        if budget is None:
            return ExpertBudget(self.num_experts, layer_max, torch.tensor(1.0, dtype=torch.float32, device=device))
        return ExpertBudget(self.num_experts, torch.minimum(budget.max_experts, layer_max), budget.mass_fraction)

    def _select_fused(self, router_logits, topk_ids, topk_weights, num_real, layer_id, budget, implementation,
                      resident=None):
        # The Triton stages (and the C++ op's given rule) always fill the set up to k
        if not self.fill_to_k and (implementation != "cpu" or resident is not None):
            return self.select_reference(router_logits, topk_ids, topk_weights, num_real, layer_id, budget, resident)
        return super()._select_fused(router_logits, topk_ids, topk_weights, num_real, layer_id, budget, implementation,
                                     resident)  # fmt: skip

    def adjust_fused_call(self, call, implementation, layer_id):
        """On CPU the C++ op makes the whole decision (AnchorRule); without fill_to_k it tops the set
        up to one expert with two voters or more (else to k), as _active_set below. On CUDA `decide`
        runs in torch and only the shared stages are fused."""
        if implementation != "cpu":
            return call
        min_share = self.for_layer(self.min_share, layer_id)
        rule = AnchorRule(log_ratio=self.for_layer(self._log_ratio, layer_id),
                          min_share_units=math.ceil(min_share * MASS_ONE) if min_share > 0.0 else 0,
                          fill_to_k=self.fill_to_k)  # fmt: skip
        return call._replace(rule=rule)

    def _active_set(self, ctx: RoutingContext, topk_ids: torch.Tensor, budget: ExpertBudget | None):
        if self.fill_to_k:
            return super()._active_set(ctx, topk_ids, budget)
        needed, _ = self._decision(ctx)
        # A batch computes only what its voters need; a lone voter (or none) still gets k experts.
        active = torch.where(ctx.num_voters() >= 2, ensure_min_active(needed, ctx, 1),
                             ensure_min_active(needed, ctx, self.slots_used))
        if budget is not None:
            active = cap_active_experts(active, ctx.preference_order(), ctx.routed_mass(), budget)
        return active, None

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        logits = ctx.logits
        acceptable = (logits - logits.max(dim=1, keepdim=True).values) >= self.for_layer(self._log_ratio, ctx.layer_id)
        needs = ctx.voters & self.insisting(ctx)
        served = torch.zeros_like(needs)
        active = torch.zeros(self.num_experts, dtype=torch.bool, device=logits.device)
        # key = votes first, then routed mass (<= T * MASS_ONE), as one int64; argmax takes the first
        # (lowest index) of equal keys on every device.
        scale = logits.shape[0] * MASS_ONE + 1
        mass = ctx.routed_mass()
        experts = torch.arange(self.num_experts, device=logits.device)
        for _ in range(min(self.num_experts, logits.shape[0])):  # a hitting set never needs more picks
            waiting = (needs & ~served).unsqueeze(1) & acceptable
            votes = waiting.sum(dim=0)
            key = votes * scale + mass  # < (T + 1) * scale
            if ctx.resident is not None:  # an acceptable expert the cache holds first: it costs no copy
                key = key + ((votes > 0) & ctx.resident) * ((logits.shape[0] + 1) * scale)
            best = torch.argmax(key)
            # Not one_hot: it checks its input's range with a host sync (twice per pick on a GPU).
            pick = (experts == best) & (votes.max() > 0)
            active = active | pick
            served = served | (acceptable & pick.unsqueeze(0)).any(dim=1)
        return self.unless_no_saving(active, ctx)

    def unless_no_saving(self, hitting: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
        """The voters' own experts when the batch would compute as many experts as its own routing
        needs anyway (then nobody is moved for nothing); else the hitting set."""
        own = ids_to_mask(ctx.own_topk_ids(), ctx.voters, self.num_experts)
        if ctx.resident is not None:  # with a cache, what a set costs is the experts it must copy
            return torch.where((hitting & ~ctx.resident).sum() >= (own & ~ctx.resident).sum(), own, hitting)
        filled = hitting.sum().clamp(min=self.slots_used)
        computed = filled if self.fill_to_k else torch.where(ctx.num_voters() >= 2, hitting.sum().clamp(min=1), filled)
        return torch.where(computed >= own.sum(), own, hitting)

    def insisting(self, ctx: RoutingContext) -> torch.Tensor:
        """[T] bool: voters whose top-1 carries at least min_share of their own top-k weight."""
        min_share = self.for_layer(self.min_share, ctx.layer_id)
        if min_share == 0.0:
            return torch.ones_like(ctx.voters)
        top_share = ctx.own_weights()[:, 0]  # MASS_ONE units, best first
        return top_share >= math.ceil(min_share * MASS_ONE)
