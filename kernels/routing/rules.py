"""The rules the fused routing implementations know, one layer call's inputs and result, and the codes
the kernels know the rules by.

A batch-aware policy decides a decode batch's active experts and re-routes every token over them.
`lynx_sglang.policies` defines the semantics in plain torch (the reference); a rule here names the
policy's decision so that a fused implementation (Triton, the C++ op) can run it in one piece.
Rules and calls are NamedTuples: built per layer call, they must cost next to nothing.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

# Fixed point of the routed mass: one token's routed weight is 2**MASS_BITS units; exp(gap) is scaled by
# 2**RATIO_BITS before truncation (docs/policies.md).
MASS_BITS = 20
RATIO_BITS = 40
# The fused kernels are compiled and tested up to this many experts and slots; beyond, policies run the
# reference.
MAX_FUSED_EXPERTS = 256
MAX_TOP_K = 64
# Non-finite logits are replaced by +-FP32_BIG (a quarter of the fp32 range keeps x - max(x) finite).
FP32_BIG = torch.finfo(torch.float32).max / 4


class LynxRule(NamedTuple):
    """Affinity binning: bins q = max(-beta, ceil(alpha * (L - max L))), batch vote S; each voter
    takes its top-k by (q, S, tie order); tie order = preference order (mass) or expert index."""

    alpha: float
    beta: int
    tie_by_mass: bool = True


class OwnTopRule(NamedTuple):
    """Active set = union of the voters' own top-j (OEA's floor, static-topk's k')."""

    j: int


class BudgetRule(NamedTuple):
    """The first n experts of the preference order that some voter chose."""

    n: int


class TopNRule(NamedTuple):
    """The n experts with the most votes (ties: routed mass, then lower index) that some voter chose."""

    n: int


class CoverageRule(NamedTuple):
    """The fewest experts of the preference order covering fraction_units / 2**MASS_BITS of the routed
    mass; optionally voters dropping more than dropped_cap_units of their routed weight keep their
    routing (keep_on_any_drop: voters dropping any expert keep it)."""

    fraction_units: int
    dropped_cap_units: int | None = None
    keep_on_any_drop: bool = False


class AnchorRule(NamedTuple):
    """anchor's decision (policies/anchor.py): the greedy hitting set of the voters' acceptable
    experts (logit within log_ratio of the top-1; voters whose top-1 weight is below
    min_share_units do not insist), unless it is not smaller than the voters' own experts. Without
    fill_to_k the set is topped up to one expert (two voters or more) instead of `slots`, so tokens
    may fill fewer slots. The C++ op only: on CUDA anchor decides in torch (GivenRule)."""

    log_ratio: float
    min_share_units: int
    fill_to_k: bool


class GivenRule(NamedTuple):
    """The active set (and kept rows) were decided elsewhere (a policy's torch `decide`); only the
    shared stages run fused."""


RoutingRule = LynxRule | OwnTopRule | BudgetRule | TopNRule | CoverageRule | AnchorRule | GivenRule

# The one definition of the codes the kernels know the rules by: the Triton kernels take them as
# constexprs, the C++ op as macros LYNX_MODE_<NAME> and LYNX_KEEP_<NAME> (kernels/cpu_library.py).
MODES = {"LYNX": 0, "OWN_TOP": 1, "BUDGET": 2, "TOPN": 3, "COVERAGE": 4, "GIVEN": 5, "ANCHOR": 6}
_MODE_OF_RULE = {LynxRule: "LYNX", OwnTopRule: "OWN_TOP", BudgetRule: "BUDGET", TopNRule: "TOPN",
                 CoverageRule: "COVERAGE", GivenRule: "GIVEN", AnchorRule: "ANCHOR"}  # fmt: skip
# Which rows keep the model's routing: none, voters over coverage's dropped-weight cap, or the rows a
# policy's torch `decide` returned.
KEEP_MODES = {"NONE": 0, "DROPPED_CAP": 1, "GIVEN": 2}


def mode_of(rule: RoutingRule) -> int:
    """The rule's mode code. By type: rules are tuples, and BudgetRule(8) == TopNRule(8)."""
    return MODES[_MODE_OF_RULE[type(rule)]]


class RoutingResult(NamedTuple):
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    active_mask: torch.Tensor


class RoutingCall(NamedTuple):
    """One layer call: the inputs every implementation takes (so the argument list exists once)."""

    rule: RoutingRule
    logits: torch.Tensor  # [T, E] fp32 / bf16 / fp16
    topk_ids: torch.Tensor  # [T, k] int32 / int64
    topk_weights: torch.Tensor  # [T, k] float
    num_real: int | torch.Tensor | None  # rows >= num_real are padding
    slots: int  # experts per token (k, or k' for static-topk)
    renormalize: bool
    budget_max_experts: torch.Tensor | None = None  # 0-dim int64
    budget_mass_fraction: torch.Tensor | None = None  # 0-dim fp32
    given_active: torch.Tensor | None = None  # [E] bool (GivenRule)
    given_keep: torch.Tensor | None = None  # [T] bool or None (GivenRule)

    @property
    def num_experts(self) -> int:
        return self.logits.shape[1]

    @property
    def top_k(self) -> int:
        return self.topk_ids.shape[1]


@functools.cache
def max_lynx_rows(beta: int) -> int:
    """The largest T with T**(beta+1) < 2**62: lynx's batch vote S <= T**(beta+1) is then an exact int64."""
    rows = int(2 ** (62 / (beta + 1)))
    while rows ** (beta + 1) >= 2**62:
        rows -= 1
    while (rows + 1) ** (beta + 1) < 2**62:
        rows += 1
    return rows
