"""The policy contract: `Policy`, its input view `RoutingContext`, its output `PolicyDecision`.

A policy subclass implements ONE method, `decide(ctx)`, returning the batch's active-expert mask
[E] bool (optionally with rows that keep their original routing). `Policy.select` does the rest,
identically for every policy: which rows are real (`num_real`), which rows may vote (real rows with
finite logits), layer filtering, guaranteeing enough active experts, and the remap (remap.py).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch

from . import params
from .budget import ExpertBudget, cap_active_experts
from .keys import own_topk_indices, own_weight_units, preference_order, rank_of, unique_descending_keys
from .params import PolicyConfigError
from .remap import _remap_clean, sanitize_logits
from .router import RouterModel, join_shared, split_shared
from ..kernels.backend import fused_backend
from ..kernels.routing import GivenRule, RoutingCall, RoutingRule, fused_route, fused_supports
from ..kernels.routing.batch import ids_to_mask, real_rows


class PolicyDecision(NamedTuple):
    """What a policy returns for one layer of one batch.

    topk_ids [T, k] and topk_weights [T, k]: the routing to use (same dtypes as the inputs).
    active_mask [E] bool: every expert any real row's non-zero-weight slot uses (a real row's ids are
        the model's, in [0, E); -1 marks padding rows only, past num_real). With no real rows the
        top-up, which runs on static shapes, may still name experts that no row uses.
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    active_mask: torch.Tensor


class RoutingContext:
    """Everything `decide` may look at, computed once per call on first use and cached.

    Attributes:
        logits: [T, E] fp32 router logits with non-finite values replaced (remap.sanitize_logits).
        voters: [T] bool, rows that may influence the active set: real (index < num_real) AND with
            all-finite logits. Padding and NaN/inf rows never vote.
        num_experts, top_k: E and k.
        layer_id: the python int given to select (or None); static per layer.
        resident: [E] bool, the experts an expert cache holds on the device now, for a policy with
            prefer_resident (else None): among the experts a token accepts, those cost no copy.
        model_ids: [T, k] the model's own routing, or None.
    A token's "own" top-k is the top-k of its logits, which for softmax routing is the model's own
    choice: the model's ids where they are a top-k of the logits (a tie at the boundary goes the
    model's way), else the tie rule of keys.own_topk_indices (lower expert index first).
    """

    def __init__(self, logits: torch.Tensor, voters: torch.Tensor, num_experts: int, top_k: int,
                 layer_id: int | None = None, row_is_finite: torch.Tensor | None = None,
                 resident: torch.Tensor | None = None, model_ids: torch.Tensor | None = None):
        self.logits = logits
        self.model_ids = model_ids
        self.resident = resident
        self.layer_id = layer_id
        self.voters = voters
        self.row_is_finite = row_is_finite
        self.num_experts = num_experts
        self.top_k = top_k
        self._cache: dict[str, torch.Tensor] = {}

    def _cached(self, name: str, compute) -> torch.Tensor:
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    def probs(self) -> torch.Tensor:
        """[T, E] fp32 softmax of the router logits (the full distribution)."""
        return self._cached("probs", lambda: torch.softmax(self.logits, dim=-1))

    def own_topk_ids(self, j: int | None = None) -> torch.Tensor:
        """[T, j] each token's own j best experts (default k), best first."""
        j = self.top_k if j is None else j
        return self._cached("own", lambda: own_topk_indices(self.logits, self.top_k, self.model_ids))[:, :j]

    def num_voters(self) -> torch.Tensor:
        """0-dim int64 tensor: how many rows vote (the batch size B of the formulas)."""
        return self.voters.sum()

    def topk_counts(self) -> torch.Tensor:
        """[E] int64: how many voters have the expert among their own top-k."""
        return self._cached("counts", lambda: self._scatter_per_expert(self.voters.long().unsqueeze(1)))

    def own_weights(self) -> torch.Tensor:
        """[T, k] int64: each voter's own top-k weights renormalised to MASS_ONE units (0 for
        rows that do not vote). See keys.own_weight_units."""
        return self._cached("weights", lambda: own_weight_units(self.logits, self.own_topk_ids())
                            * self.voters.unsqueeze(1))

    def routed_mass(self) -> torch.Tensor:
        """[E] int64: the routed weight the batch sends to each expert under normal routing, in
        MASS_ONE units per token (sum over voters of their renormalised top-k weight for it)."""
        return self._cached("mass", lambda: self._scatter_per_expert(self.own_weights()))

    def preference_order(self) -> torch.Tensor:
        """[E] experts best first: routed mass, then vote count (descending), then lower index."""
        return self._cached("order", lambda: preference_order(
            self.routed_mass(), self.topk_counts(), self.logits.shape[0]))

    def preference_rank(self) -> torch.Tensor:
        """[E] int64: each expert's position in `preference_order` (0 = most preferred)."""
        return self._cached("rank", lambda: rank_of(self.preference_order()))

    def _scatter_per_expert(self, values: torch.Tensor) -> torch.Tensor:
        ids = self.own_topk_ids()
        values = values.expand_as(ids)
        out = torch.zeros(self.num_experts, dtype=values.dtype, device=ids.device)
        return out.scatter_add_(0, ids.reshape(-1), values.reshape(-1))


def ensure_min_active(active: torch.Tensor, ctx: RoutingContext, min_active: int) -> torch.Tensor:
    """Grow `active` to at least `min_active` experts (a no-op when it already has that many).

    A token needs k distinct active experts to fill k slots, so every policy is topped up with the
    batch's most-chosen experts (most voters having it in their own top-k; ties: lower index). The
    count is an integer, so the rule is exact. With one voter this restores exactly its own top-k.
    """
    num_rows = ctx.logits.shape[0]
    # Active experts rank first, then by vote count; an integer key keeps the order exact.
    rank_key = active.long() * (num_rows + 1) + ctx.topk_counts()
    top_up = torch.topk(unique_descending_keys(rank_key, ctx.num_experts), min_active).indices
    return active.scatter(0, top_up, True)


class Policy:
    """Base class of every policy. Subclass it, set `name`, implement `decide`.

    Constructor parameters shared by all policies (passed by `get_policy`):
        num_experts: E.  top_k: k.
        renormalize: True if the model renormalises its top-k weights (weights then sum to 1);
            False to rescale new weights to the token's original top-k mass.
        layers: None (every layer) or an iterable of layer ids the policy applies to; on any other
            layer `select` passes the routing through unchanged.
    A subclass adds its own keyword parameters to `__init__`, validates them there with
    `self.check_int` / `self.check_float` (python values only; never per call), and calls
    `super().__init__(num_experts, top_k, renormalize, layers)` first.
    """

    name = "policy"
    # Whether a batch of one row keeps the model's routing (a subclass whose rule cannot change a lone
    # row says so; explicit budgets, fewer slots or a random set do not): `select` then keeps it exactly.
    keeps_lone_row = False
    # How many slots of each token get an expert; static-topk lowers it (extra slots get weight 0).
    slots_used: int
    # Whether `select` reads the resident mask of an expert cache (the opt-in `prefer_resident` of lynx,
    # oea and anchor): the policy then prefers resident experts within its own rule, and a lone row may
    # change on purpose (to save a copy).
    prefer_resident = False

    def __init__(self, num_experts: int, top_k: int, renormalize: bool = True,
                 layers: Iterable[int] | None = None):
        self.num_experts = self.check_int("num_experts", num_experts, 1, None)
        self.top_k = self.check_int("top_k", top_k, 1, self.num_experts)
        self.renormalize = params.check_bool(self.name, "renormalize", renormalize)
        self.layers = params.check_layers(self.name, layers)
        self.slots_used = self.top_k

    def check_int(self, param: str, value, low: int, high: int | None) -> int:
        """Validate an integer parameter in [low, high] (high None = unbounded); return it."""
        return params.check_int(self.name, param, value, low, high)

    def check_float(self, param: str, value, low: float, high: float, *, low_open: bool = False,
                    high_open: bool = False) -> float:
        """Validate a real parameter in the interval given (open or closed ends); return it."""
        return params.check_float(self.name, param, value, low, high, low_open=low_open, high_open=high_open)

    # ---- the one method a policy implements -------------------------------------------------
    def decide(self, ctx: RoutingContext):
        """Return the active mask [E] bool, or (active mask, keep_original_rows [T] bool).

        Rows in keep_original_rows keep the model's routing; their experts are added to the
        active set. Must be static-shape tensor code (see docs/policies.md, graph safety).
        """
        raise NotImplementedError

    # ---- the shared driver ------------------------------------------------------------------
    def applies_to_layer(self, layer_id: int | None) -> bool:
        if self.layers is None:
            return True
        if layer_id is None:
            raise ValueError(f"policy '{self.name}' is limited to layers {sorted(self.layers)}; select() needs layer_id")
        return layer_id in self.layers

    def select(
        self,
        router_logits: torch.Tensor,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
        num_real: int | torch.Tensor | None = None,
        layer_id: int | None = None,
        budget: ExpertBudget | None = None,
        *,
        implementation: str = "auto",
        router: RouterModel | None = None,
        resident: torch.Tensor | None = None,
    ) -> PolicyDecision:
        """Decide the batch's routing for one layer.

        router_logits [T, E] (fp32/bf16/fp16); topk_ids [T, k] int; topk_weights [T, k] float: the
        model's normal routing. Rows >= num_real (python int or 0-dim tensor; None = all real) are
        padding: they never influence the active set and are returned unchanged. Real rows whose
        logits hold NaN or +-inf do not vote and are routed inside the active set. `budget` caps
        the active set after the policy's decision (its tensors live on the logits' device).
        implementation: "auto" (the fused path where there is one: Triton on CUDA, the C++ op on
        CPU), "torch" (the reference), "triton" or "cpu" (that fused path, for tests and benchmarks).
        router: the layer's router when it is not plain softmax top-k (router.py): the policy then
        decides on its log-choices and the remapped rows get its weights; fused shared-expert slots
        (the last router.shared_slots columns of the ids and weights) are returned unchanged.
        resident: [E] bool on the logits' device, the experts an expert cache holds now; read only by a
        policy with prefer_resident (ignored otherwise): resident experts then join the active set, as
        they cost no copy, and the policy prefers them within its own rule.
        """
        resident = resident if self.prefer_resident else None
        if router is not None and not router.is_plain:
            return self._select_modelled(router, router_logits, topk_ids, topk_weights, num_real, layer_id, budget,
                                         implementation, resident)  # fmt: skip
        self._check_shapes(router_logits, topk_ids, topk_weights, budget)
        if not self.applies_to_layer(layer_id):
            return self.pass_through(topk_ids, topk_weights, real_rows(router_logits.shape[0], num_real, router_logits.device))
        # static: the shape, the class and whether a cache is read (a lone row may then change on purpose)
        lone_row = router_logits.shape[0] == 1 and self.keeps_lone_row and resident is None
        if lone_row and budget is None and (num_real is None or (type(num_real) is int and num_real >= 1)):
            # one real row and nothing to cap (known on the host): the model's routing, nothing launched
            real = real_rows(1, num_real, router_logits.device)
            return PolicyDecision(topk_ids, topk_weights, ids_to_mask(topk_ids, real, self.num_experts))
        chosen = self._implementation(router_logits, implementation)
        if chosen == "torch":
            decision = self.select_reference(router_logits, topk_ids, topk_weights, num_real, layer_id, budget,
                                             resident)  # fmt: skip
        else:
            decision = self._select_fused(router_logits, topk_ids, topk_weights, num_real, layer_id, budget, chosen,
                                          resident)  # fmt: skip
        return self._lone_row_kept(decision, topk_ids, topk_weights, num_real, budget) if lone_row else decision

    def _select_modelled(self, router: RouterModel, router_logits, topk_ids, topk_weights, num_real, layer_id,
                         budget, implementation, resident=None) -> PolicyDecision:
        """`select` for a router that is not plain softmax: the plain select on its log-choices (in torch
        or fused alike), then its weights for the rows that moved (router.py)."""
        router.check(self.num_experts)
        if topk_ids.dim() != 2 or topk_ids.shape[-1] != self.top_k + router.shared_slots:
            raise ValueError(f"policy '{self.name}': topk_ids must have {self.top_k} routed + {router.shared_slots} "
                             f"shared columns, got {list(topk_ids.shape)}")
        ids, shared_ids = split_shared(topk_ids, router.shared_slots)
        weights, shared_weights = split_shared(topk_weights, router.shared_slots)
        # Policy.select, not self.select: an override (anchor's layer caps) has run already
        decision = Policy.select(self, router.choice_logits(router_logits), ids, weights, num_real, layer_id, budget,
                                 implementation=implementation, resident=resident)  # fmt: skip
        new_weights = decision.topk_weights
        if decision.topk_ids is not ids:  # the model's routing as it is needs no new weights
            new_weights = router.weights(router_logits, ids, weights, decision.topk_ids, new_weights, self.renormalize)
        return PolicyDecision(join_shared(decision.topk_ids, shared_ids), join_shared(new_weights, shared_weights),
                              decision.active_mask)  # fmt: skip

    def _lone_row_kept(self, decision: PolicyDecision, topk_ids, topk_weights, num_real, budget) -> PolicyDecision:
        """A batch of one row has nothing to share: it keeps the model's routing exactly, the model's
        ids winning every tie at the top-k boundary that the policy's own ranking (lower index first)
        would break another way, unless a budget cap leaves it fewer than k experts. Tensor ops only."""
        real = real_rows(1, num_real, topk_ids.device)
        keep = real[0]
        if budget is not None:
            keep = keep & (budget.max_experts >= self.top_k) & (budget.mass_fraction >= 1.0)
        ids = torch.where(keep, topk_ids.to(decision.topk_ids.dtype), decision.topk_ids)
        weights = torch.where(keep, topk_weights.to(decision.topk_weights.dtype), decision.topk_weights)
        active = torch.where(keep, ids_to_mask(topk_ids, real, self.num_experts), decision.active_mask)
        return PolicyDecision(ids, weights, active)

    def select_reference(self, router_logits, topk_ids, topk_weights, num_real=None, layer_id=None,
                         budget=None, resident=None) -> PolicyDecision:
        """`select` in plain torch: the definition every fused path reproduces exactly."""
        row_is_real = real_rows(router_logits.shape[0], num_real, router_logits.device)
        ctx = self._context(router_logits, row_is_real, layer_id, resident, topk_ids)
        active, keep_rows = self._active_set(ctx, topk_ids, budget)
        # Padding rows pass through unchanged (SGLang marks them with id -1, which we keep).
        keep_original = ~row_is_real if keep_rows is None else (~row_is_real | keep_rows)
        ids, weights = _remap_clean(
            ctx.logits, ctx.row_is_finite, topk_ids, topk_weights, active, keep_original,
            self.renormalize, self.slots_used, ctx.own_topk_ids(),
        )
        return PolicyDecision(ids, weights, active)

    # ---- the fused path -----------------------------------------------------------------------
    def fused_rule(self) -> RoutingRule | None:
        """The rule the fused implementations run in place of `decide`, or None: `decide` runs in
        torch and only the shared stages (top-up, kept rows, budget cap, remap) run fused."""
        return None

    def adjust_fused_call(self, call: RoutingCall, implementation: str, layer_id: int | None) -> RoutingCall:
        """The fused call as this policy needs it on `implementation` (default: unchanged). anchor
        gives the C++ op its own rule there, and without fill_to_k asks for the top-up to one expert."""
        return call

    def _implementation(self, router_logits: torch.Tensor, requested: str) -> str:
        if requested not in ("auto", "torch", "triton", "cpu"):
            raise ValueError(f"implementation must be 'auto', 'torch', 'triton' or 'cpu', got {requested!r}")
        if torch.compiler.is_compiling():
            return "torch"  # a compiled graph traces the reference (the fused ops are opaque to dynamo)
        return fused_backend(router_logits.device) if requested == "auto" else requested

    def fused_call(self, router_logits, topk_ids, topk_weights, num_real=None, layer_id=None, budget=None,
                   implementation: str = "triton") -> RoutingCall:
        """The call `select` hands to a fused implementation (a `GivenRule` one when `decide` runs in
        torch: its result is added before the call runs)."""
        rule = self.fused_rule()
        call = RoutingCall(
            GivenRule() if rule is None else rule, router_logits, topk_ids, topk_weights, num_real, self.slots_used,
            self.renormalize, None if budget is None else budget.max_experts,
            None if budget is None else budget.mass_fraction,
        )  # fmt: skip
        return self.adjust_fused_call(call, implementation, layer_id)

    def _select_fused(self, router_logits, topk_ids, topk_weights, num_real, layer_id, budget,
                      implementation: str, resident=None) -> PolicyDecision:
        call = self.fused_call(router_logits, topk_ids, topk_weights, num_real, layer_id, budget, implementation)
        if not fused_supports(call) or (budget is not None and budget.max_experts.device != router_logits.device):
            return self.select_reference(router_logits, topk_ids, topk_weights, num_real, layer_id, budget, resident)
        if resident is not None:  # the fused rules know nothing of a cache: decide in torch, fuse the rest
            call = call._replace(rule=GivenRule())
        if isinstance(call.rule, GivenRule):  # decide in torch; the shared stages still run fused
            row_is_real = real_rows(router_logits.shape[0], num_real, router_logits.device)
            active, keep_rows = self._decision(self._context(router_logits, row_is_real, layer_id, resident, topk_ids))
            call = call._replace(given_active=active, given_keep=keep_rows)
        return PolicyDecision(*fused_route(call, implementation))

    def _context(self, router_logits, row_is_real, layer_id, resident=None, topk_ids=None) -> RoutingContext:
        clean_logits, row_is_finite = sanitize_logits(router_logits)
        return RoutingContext(clean_logits, row_is_real & row_is_finite, self.num_experts, self.top_k, layer_id,
                              row_is_finite=row_is_finite, resident=resident, model_ids=topk_ids)

    def _decision(self, ctx: RoutingContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`decide` as (active, keep_rows or None). With a resident mask the resident experts join the
        active set: they cost no copy, and a token takes one only where it rates it above the batch's
        other experts, so its routing only comes closer to its own."""
        decided = self.decide(ctx)
        active, keep_rows = decided if isinstance(decided, tuple) else (decided, None)
        if ctx.resident is not None:
            active = active | ctx.resident
        return active, keep_rows

    def _active_set(self, ctx: RoutingContext, topk_ids: torch.Tensor, budget: ExpertBudget | None):
        """decide -> top-up to slots_used -> add the kept rows' experts -> budget cap."""
        active, keep_rows = self._decision(ctx)
        if keep_rows is not None:
            keep_rows = keep_rows & ctx.voters  # only trusted rows may insist on their own experts
        active = ensure_min_active(active, ctx, self.slots_used)
        if keep_rows is not None:
            active = active | ids_to_mask(topk_ids, keep_rows, self.num_experts)
        if budget is not None:
            active = cap_active_experts(active, ctx.preference_order(), ctx.routed_mass(), budget)
            if keep_rows is not None:  # a kept row whose experts the cap dropped is remapped
                keep_rows = keep_rows & active[topk_ids.long().clamp(0, self.num_experts - 1)].all(dim=-1)
        return active, keep_rows

    def pass_through(self, topk_ids, topk_weights, row_is_real) -> PolicyDecision:
        """The model's own routing; active mask = experts used by the real rows."""
        return PolicyDecision(topk_ids, topk_weights, ids_to_mask(topk_ids, row_is_real, self.num_experts))

    def _check_shapes(self, router_logits, topk_ids, topk_weights, budget=None) -> None:
        # Shapes are static, so these python checks are free under CUDA graphs and torch.compile.
        if router_logits.dim() != 2 or router_logits.shape[1] != self.num_experts:
            raise ValueError(
                f"policy '{self.name}': router_logits must be [T, {self.num_experts}], got "
                f"{tuple(router_logits.shape)}"
            )
        expected = (router_logits.shape[0], self.top_k)
        if tuple(topk_ids.shape) != expected or tuple(topk_weights.shape) != expected:
            raise ValueError(
                f"policy '{self.name}': topk_ids and topk_weights must be {list(expected)}, got "
                f"{list(topk_ids.shape)} and {list(topk_weights.shape)}"
            )
        if topk_ids.dtype.is_floating_point or topk_ids.dtype.is_complex or topk_ids.dtype == torch.bool:
            # the C++ and Triton paths read the ids' bits as integers: float ids gave another routing, silently
            raise ValueError(f"policy '{self.name}': topk_ids must be integer expert ids, got {topk_ids.dtype}")
        if budget is not None and budget.num_experts != self.num_experts:
            raise ValueError(f"policy '{self.name}': budget is for {budget.num_experts} experts, the layer has {self.num_experts}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(E={self.num_experts}, k={self.top_k}, renormalize={self.renormalize})"
