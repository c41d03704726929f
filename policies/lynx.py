"""Lynx (Gupta et al., arXiv 2411.08982): batch-aware expert reduction for MoE decode.

`lynx`    affinity binning, the authors' current algorithm (paper v3, their vLLM plugin).
`lynx-v1` confidence-gated voting, the earlier Mixtral-focused version (paper v1).
See docs/policies.md for formulas and defaults.
"""

from __future__ import annotations

import torch

from ..kernels.routing import LynxRule
from ..kernels.routing.batch import ids_to_mask
from .base import Policy, PolicyConfigError, RoutingContext
from .keys import rank_of
from .params import check_bool, check_choice, check_router_kind
from .router import router_family

# (alpha, beta) shipped by the authors, matched by model name (lower-case substring, first match) and
# only on the shapes (num_experts, top_k) that name was tuned on: a folder named `tiny-mixtral` with 6
# experts top-1 is not Mixtral. Order matters: the more specific names come first.
_LYNX_DEFAULTS_BY_NAME: tuple[tuple[str, tuple[tuple[int, int], ...], tuple[float, int]], ...] = (
    ("mixtral-8x22b", ((8, 2),), (1.0, 1)),
    ("mixtral", ((8, 2),), (0.7, 1)),
    ("qwen2-57b", ((64, 8),), (3.0, 4)),
    ("qwen3-235b-a22b-thinking", ((128, 8),), (1.0, 2)),
    ("qwen3", ((128, 8),), (3.0, 2)),
    ("deepseek", ((160, 6), (64, 6)), (1.0, 2)),
    ("gpt-oss", ((128, 4), (32, 4)), (3.0, 2)),
)

# The same defaults keyed by (num_experts, top_k) when no name is given or it is unknown.
_LYNX_DEFAULTS_BY_SHAPE: dict[tuple[int, int], tuple[float, int]] = {
    (8, 2): (0.7, 1),  # Mixtral-8x7B
    (64, 8): (3.0, 4),  # Qwen2-57B-A14B
    (128, 8): (3.0, 2),  # Qwen3-30B-A3B, Qwen3-235B-A22B-Instruct
    (160, 6): (1.0, 2),  # DeepSeek-V2 / DeepSeek-Coder-V2
    (64, 6): (1.0, 2),  # DeepSeek-V2-Lite
    (128, 4): (3.0, 2),  # GPT-OSS-120B
}

# Routers that score each expert alone (sigmoid: DeepSeek-V3, GLM-4.5, Kimi-K2, Llama-4) give flatter
# scores than a softmax: on the trained GLM-4.5-style model (docs/results/biased-router) the top 8 of 16
# experts lie within about one e-fold of the top-1, so alpha 1 binned most of a token's top-4 together
# and lost 2.7 points [-4.4, -1.2] at concurrency 32; alpha 2 (half-e-fold bins) kept accuracy (+0.1
# [-0.5, +0.8]), alpha 1.5 fell to -0.5 [-1.5, +0.4].
_LYNX_DEFAULTS_BY_ROUTER_FAMILY: dict[str, tuple[float, int]] = {"sigmoid": (2.0, 2)}

# Unknown models: DeepSeek's setting, the middle of the shipped range (bins one e-fold of router
# probability wide, two bins below the top).
LYNX_FALLBACK = (1.0, 2)


def lynx_defaults(num_experts: int, top_k: int, model_name: str | None = None,
                  router_kind: str | None = None) -> tuple[float, int]:
    """(alpha, beta) for a model: for a sigmoid-family router (router.router_family) the measured
    setting of that family; else the authors' by name if it is known with this (E, k), else by
    (E, k), else LYNX_FALLBACK = (1.0, 2). (The authors' settings were tuned on softmax logits.)"""
    family = router_family(router_kind)
    if family in _LYNX_DEFAULTS_BY_ROUTER_FAMILY:
        return _LYNX_DEFAULTS_BY_ROUTER_FAMILY[family]
    if model_name:
        lowered = model_name.lower()
        for fragment, shapes, pair in _LYNX_DEFAULTS_BY_NAME:
            if fragment in lowered and (num_experts, top_k) in shapes:
                return pair
    return _LYNX_DEFAULTS_BY_SHAPE.get((num_experts, top_k), LYNX_FALLBACK)


class LynxPolicy(Policy):
    """Affinity binning.

    q[t,e] = max(-beta, ceil(alpha * (L[t,e] - max_e L[t,e])))  in {0, -1, ..., -beta}
    h[t,e] = B ** q[t,e];  S[e] = sum over voters of h[t,e]  (B = number of voters)
    m[t,e] = q[t,e] + (S[e] - h[t,e]) / B
    each voter takes the top-k of m; the active set is the union of those picks.

    Within one token's bin h is constant and (S - h) / B < 1, so the top-k of m is the top-k of
    the pair (q, S): bin first, then the batch vote S, compared exactly as integers. Equal pairs are
    broken by one order shared by the batch: `tie_break="mass"` (default) the batch's routed mass,
    then vote count, then lower index (at B = 1 that is the token's own order, so a lone token is
    never moved); `"index"` the lower expert index (the authors' plugin).

    `prefer_resident` (with an expert cache): within a token's bin, the experts the cache holds come
    first, then the batch's order: a token trades an expert only for one it rates in the same bin.
    """

    name = "lynx"
    TIE_BREAKS = ("mass", "index")

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, alpha=None, beta=None,
                 model_name=None, router_kind=None, tie_break="mass", prefer_resident=False):
        super().__init__(num_experts, top_k, renormalize, layers)
        if model_name is not None and not isinstance(model_name, str):
            raise PolicyConfigError(
                f"policy '{self.name}': parameter 'model_name'={model_name!r} must be a string"
            )
        self.router_kind = check_router_kind(self.name, router_kind)
        default_alpha, default_beta = lynx_defaults(num_experts, top_k, model_name, router_kind)
        self.alpha = self.check_float("alpha", default_alpha if alpha is None else alpha, 0.0, 100.0,
                                      low_open=True)
        self.beta = self.check_int("beta", default_beta if beta is None else beta, 1, 8)
        self.tie_break = check_choice(self.name, "tie_break", tie_break, self.TIE_BREAKS)
        self.prefer_resident = check_bool(self.name, "prefer_resident", prefer_resident)
        # by expert index, a lone row's tied bins may go to another expert than its own top-k: by design
        self.keeps_lone_row = self.tie_break == "mass"

    def bins(self, logits: torch.Tensor) -> torch.Tensor:
        """[T, E] int64 q in [-beta, 0]. Only alpha * (L - max L) is rounded (fp32, one product)."""
        gap = logits - logits.max(dim=-1, keepdim=True).values  # log(p_e / p_top1) <= 0
        return torch.ceil(self.alpha * gap).clamp_min(-self.beta).long()

    def batch_votes(self, bins: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
        """[E] S in units of B**-beta: sum over voters of B**(q + beta). Exact in int64 while
        B**(beta+1) < 2**62 (static check on T); beyond, float64 (exact up to 2**53)."""
        exact = bins.shape[0] ** (self.beta + 1) < 2**62
        batch = ctx.num_voters() if exact else ctx.num_voters().double()
        powers = batch ** torch.arange(self.beta + 1, device=bins.device, dtype=batch.dtype)
        return (powers[bins + self.beta] * ctx.voters.unsqueeze(1)).sum(dim=0)

    def expert_order(self, votes: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
        """[E] experts by batch vote descending, ties by the shared tie-break order."""
        if self.tie_break == "mass":
            tie_order = ctx.preference_order()
        else:
            tie_order = torch.arange(self.num_experts, device=votes.device)
        by_votes = torch.sort(votes[tie_order], descending=True, stable=True).indices
        return tie_order[by_votes]

    def fused_rule(self) -> LynxRule:
        return LynxRule(self.alpha, self.beta, tie_by_mass=self.tie_break == "mass")

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        bins = self.bins(ctx.logits)
        rank = rank_of(self.expert_order(self.batch_votes(bins, ctx), ctx))
        # Unique per token: bin first, then the batch's order (rank 0 = best); with a cache, resident
        # experts before the others within a bin.
        order = self.num_experts - 1 - rank
        width = self.num_experts
        if ctx.resident is not None:
            order = order + ctx.resident.long() * self.num_experts
            width = 2 * self.num_experts
        key = bins * width + order
        picks = torch.topk(key, self.top_k, dim=-1).indices
        return ids_to_mask(picks, ctx.voters, self.num_experts)


class LynxV1Policy(Policy):
    """Confidence-gated voting.

    Each token's top-k weights, renormalised and sorted, are split into a top half (first ceil(k/2)
    slots) and a bottom half; confidence = (top mass - bottom mass) / top mass, i.e. (w1-w2)/w1 for
    top-2 (k = 1: confidence 1). Tokens with confidence > threshold vote for their top-half
    experts; the active set is the voted experts (topped up to k by the shared rule when fewer).
    """

    name = "lynx-v1"
    keeps_lone_row = True

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, threshold=0.5):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.threshold = self.check_float("threshold", threshold, 0.0, 1.0)

    def decide(self, ctx: RoutingContext) -> torch.Tensor:
        top_half = (self.top_k + 1) // 2
        own_ids = ctx.own_topk_ids()
        weights = torch.softmax(ctx.logits.gather(1, own_ids), dim=-1)  # renormalised, best first
        top_mass = weights[:, :top_half].sum(dim=-1)
        bottom_mass = weights[:, top_half:].sum(dim=-1)
        confidence = (top_mass - bottom_mass) / top_mass  # top_mass >= 1/k > 0
        confident = ctx.voters & (confidence > self.threshold)
        return ids_to_mask(own_ids[:, :top_half], confident, self.num_experts)
