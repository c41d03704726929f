"""The policy contract: `Policy`, its input view `RoutingContext`, its output `PolicyDecision`.

A policy subclass implements ONE method, `decide(ctx)`, returning the batch's active-expert mask
[E] bool (optionally with rows that keep their original routing). `Policy.select` does the rest,
identically for every policy: which rows are real (`num_real`), which rows may vote (real rows with
finite logits), layer filtering, guaranteeing enough active experts, and the remap (remap.py).
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import torch

from .remap import _remap_clean, ids_to_mask, sanitize_logits, stable_topk_indices


class PolicyConfigError(ValueError):
    """A policy name or parameter is invalid. Raised at construction, never per call."""


class PolicyDecision(NamedTuple):
    """What a policy returns for one layer of one batch.

    topk_ids [T, k] and topk_weights [T, k]: the routing to use (same dtypes as the inputs).
    active_mask [E] bool: every expert any real row's non-zero-weight slot uses.
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    active_mask: torch.Tensor


class RoutingContext:
    """Everything `decide` may look at, computed once per call and shared.

    Attributes:
        logits: [T, E] fp32 router logits with non-finite values replaced (remap.sanitize_logits).
        voters: [T] bool, rows that may influence the active set: real (index < num_real) AND with
            all-finite logits. Padding and NaN/inf rows never vote.
        num_experts, top_k: E and k.
        layer_id: the python int given to select (or None); static per layer.
    The methods below are computed on first use and cached, so a policy pays only for what it uses.
    The token's "own" top-k is derived from its logits with the documented tie rule (lower expert
    index first), which for softmax routing is the model's own choice.
    """

    def __init__(self, logits: torch.Tensor, voters: torch.Tensor, num_experts: int, top_k: int,
                 layer_id: int | None = None):
        self.logits = logits
        self.layer_id = layer_id
        self.voters = voters
        self.num_experts = num_experts
        self.top_k = top_k
        self._probs: torch.Tensor | None = None
        self._own_order: torch.Tensor | None = None
        self._topk_counts: torch.Tensor | None = None
        self._routed_mass: torch.Tensor | None = None

    def probs(self) -> torch.Tensor:
        """[T, E] fp32 softmax of the router logits (the full distribution)."""
        if self._probs is None:
            self._probs = torch.softmax(self.logits, dim=-1)
        return self._probs

    def own_topk_ids(self, j: int | None = None) -> torch.Tensor:
        """[T, j] each token's own j best experts (default k), best first."""
        j = self.top_k if j is None else j
        if self._own_order is None:
            # One sort of the top-k is shared by every caller; j <= k always.
            self._own_order = stable_topk_indices(self.logits, self.top_k)
        return self._own_order[:, :j]

    def num_voters(self) -> torch.Tensor:
        """0-dim int64 tensor: how many rows vote (the batch size B of the formulas)."""
        return self.voters.sum()

    def topk_counts(self) -> torch.Tensor:
        """[E] int64: how many voters have the expert among their own top-k."""
        if self._topk_counts is None:
            ids = self.own_topk_ids()
            votes = self.voters.long().unsqueeze(1).expand_as(ids)
            self._topk_counts = torch.zeros(
                self.num_experts, dtype=torch.long, device=ids.device
            ).scatter_add_(0, ids.reshape(-1), votes.reshape(-1))
        return self._topk_counts

    def routed_mass(self) -> torch.Tensor:
        """[E] fp32: the gating mass the batch sends to each expert under normal routing,
        sum over voters of the token's softmax probability of that expert when it is in the
        token's top-k (0 for experts no voter chose)."""
        if self._routed_mass is None:
            ids = self.own_topk_ids()
            mass = self.probs().gather(1, ids) * self.voters.unsqueeze(1)
            self._routed_mass = torch.zeros(
                self.num_experts, dtype=torch.float32, device=ids.device
            ).scatter_add_(0, ids.reshape(-1), mass.reshape(-1))
        return self._routed_mass


def ensure_min_active(active: torch.Tensor, ctx: RoutingContext, min_active: int) -> torch.Tensor:
    """Grow `active` to at least `min_active` experts (a no-op when it already has that many).

    A token needs k distinct active experts to fill k slots, so every policy is topped up with the
    batch's most-chosen experts (most voters having it in their own top-k; ties: lower index). The
    count is an integer, so the rule is exact and identical on every device. With one voter this
    restores exactly its own top-k.
    """
    num_rows = ctx.logits.shape[0]
    # Active experts rank first, then by vote count; an integer key keeps the order exact.
    rank_key = active.long() * (num_rows + 1) + ctx.topk_counts()
    top_up = stable_topk_indices(rank_key, min_active)
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
    # How many slots of each token get an expert; static-topk lowers it (extra slots get weight 0).
    slots_used: int

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        renormalize: bool = True,
        layers: Iterable[int] | None = None,
    ):
        self.num_experts = self.check_int("num_experts", num_experts, 1, None)
        self.top_k = self.check_int("top_k", top_k, 1, self.num_experts)
        if not isinstance(renormalize, bool):
            raise PolicyConfigError(
                f"policy '{self.name}': parameter 'renormalize'={renormalize!r} must be True or False"
            )
        self.renormalize = renormalize
        self.layers = None if layers is None else self._check_layers(layers)
        self.slots_used = self.top_k

    # ---- parameter validation (construction time only) -------------------------------------
    def check_int(self, param: str, value, low: int, high: int | None) -> int:
        """Validate an integer parameter in [low, high] (high None = unbounded); return it."""
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyConfigError(
                f"policy '{self.name}': parameter '{param}'={value!r} must be an integer "
                f"(allowed: {allowed})"
            )
        if value < low or (high is not None and value > high):
            raise PolicyConfigError(
                f"policy '{self.name}': parameter '{param}'={value!r} out of range (allowed: {allowed})"
            )
        return value

    def check_float(
        self, param: str, value, low: float, high: float, *, low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        """Validate a real parameter in the interval given (open or closed ends); return it."""
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        allowed = f"{left}{low}, {high}{right}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyConfigError(
                f"policy '{self.name}': parameter '{param}'={value!r} must be a number "
                f"(allowed: {allowed})"
            )
        value = float(value)
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            raise PolicyConfigError(
                f"policy '{self.name}': parameter '{param}'={value!r} out of range (allowed: {allowed})"
            )
        return value

    def _check_layers(self, layers) -> frozenset[int]:
        try:
            layer_set = frozenset(layers)
        except TypeError:
            raise PolicyConfigError(
                f"policy '{self.name}': parameter 'layers'={layers!r} must be None or a list of "
                "layer ids >= 0"
            ) from None
        for layer in layer_set:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise PolicyConfigError(
                    f"policy '{self.name}': parameter 'layers' holds {layer!r}; layer ids are "
                    "integers >= 0"
                )
        return layer_set

    def expert_budget_from(self, num_experts_kept, fraction) -> int:
        """Shared by budget-style policies: an expert count from either an absolute number or a
        fraction of E (never below k, so every token can still fill its k slots)."""
        if num_experts_kept is not None and fraction is not None:
            raise PolicyConfigError(
                f"policy '{self.name}': give either 'num_experts_kept' or 'fraction', not both"
            )
        if num_experts_kept is not None:
            return self.check_int("num_experts_kept", num_experts_kept, self.top_k, self.num_experts)
        fraction = self.check_float("fraction", 0.5 if fraction is None else fraction, 0.0, 1.0,
                                    low_open=True)
        return min(self.num_experts, max(self.top_k, math.ceil(fraction * self.num_experts)))

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
            raise ValueError(
                f"policy '{self.name}' is limited to layers {sorted(self.layers)}; "
                "select() needs layer_id"
            )
        return layer_id in self.layers

    def select(
        self,
        router_logits: torch.Tensor,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
        num_real: int | torch.Tensor | None = None,
        layer_id: int | None = None,
    ) -> PolicyDecision:
        """Decide the batch's routing for one layer.

        router_logits [T, E] (fp32/bf16/fp16); topk_ids [T, k] int; topk_weights [T, k] float: the
        model's normal routing. Rows >= num_real (python int or 0-dim tensor; None = all real) are
        padding: they never influence the active set and are returned unchanged. Real rows whose
        logits hold NaN or +-inf do not vote and are routed inside the active set.
        """
        self._check_shapes(router_logits, topk_ids, topk_weights)
        num_rows = router_logits.shape[0]
        device = router_logits.device
        row_index = torch.arange(num_rows, device=device)
        row_is_real = row_index >= 0 if num_real is None else row_index < num_real

        if not self.applies_to_layer(layer_id):
            return self.pass_through(topk_ids, topk_weights, row_is_real)

        clean_logits, row_is_finite = sanitize_logits(router_logits)
        voters = row_is_real & row_is_finite
        ctx = RoutingContext(clean_logits, voters, self.num_experts, self.top_k, layer_id)

        decided = self.decide(ctx)
        if isinstance(decided, tuple):
            active, keep_rows = decided
            keep_rows = keep_rows & voters  # only trusted rows may insist on their own experts
        else:
            active, keep_rows = decided, None
        active = ensure_min_active(active, ctx, self.slots_used)
        if keep_rows is not None:
            active = active | ids_to_mask(topk_ids, keep_rows, self.num_experts)

        # Padding rows pass through unchanged (SGLang marks them with id -1, which we keep).
        keep_original = ~row_is_real if keep_rows is None else (~row_is_real | keep_rows)
        ids, weights = _remap_clean(
            clean_logits, row_is_finite, topk_ids, topk_weights, active, keep_original,
            self.renormalize, self.slots_used,
        )
        return PolicyDecision(ids, weights, active)

    def pass_through(self, topk_ids, topk_weights, row_is_real) -> PolicyDecision:
        """The model's own routing; active mask = experts used by the real rows."""
        return PolicyDecision(topk_ids, topk_weights, ids_to_mask(topk_ids, row_is_real, self.num_experts))

    def _check_shapes(self, router_logits, topk_ids, topk_weights) -> None:
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(E={self.num_experts}, k={self.top_k}, renormalize={self.renormalize})"
