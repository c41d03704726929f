"""Fused routing decisions: the rules the fused implementations know, and one entry point.

A batch-aware policy decides a decode batch's active experts and re-routes every token over them.
`lynx_sglang.policies` defines the semantics in plain torch (the reference); this module runs the same
decision in one piece: two Triton launches on CUDA (`routing_triton`), one C++ call on CPU
(`routing_cpu`). Both reproduce the reference exactly because every comparison is made on integers or
on floats produced by single IEEE operations (see docs/policies.md, "Routed mass").

Stages, identical for every rule: clean the logits (NaN/inf), voters (real rows with finite logits),
each voter's own top-k and its renormalised weights in fixed point, per-expert vote counts and routed
mass, the rule's active set, the top-up to `slots` experts, kept rows, the expert budget cap, and the
remap (each token re-takes its top-`slots` over the active set; unfillable slots repeat its first choice
at weight 0; weights renormalised or rescaled to the original top-k mass).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

# Fixed point of the routed mass: one token's routed weight is 2**MASS_BITS units; exp(gap) is scaled by
# 2**RATIO_BITS before truncation (docs/policies.md).
MASS_BITS = 20
RATIO_BITS = 40
# The fused kernels are compiled and tested up to this many experts; beyond, policies run the reference.
MAX_FUSED_EXPERTS = 256
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


class RoutingResult(NamedTuple):
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    active_mask: torch.Tensor


class RoutingCall(NamedTuple):
    """One layer call: the inputs every implementation takes (so the argument list exists once).
    Rules and calls are NamedTuples: built per layer call, they must cost next to nothing."""

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


def fused_supports(call: RoutingCall) -> bool:
    """Whether the fused implementations cover this call (static: rule and shapes only)."""
    if isinstance(call.rule, LynxRule) and call.logits.shape[0] > max_lynx_rows(call.rule.beta):
        return False  # beyond the int64 vote, the reference switches to float64 sums
    # k <= E: launch 2 counts the voters as their votes over k (each votes for k distinct experts).
    return (call.logits.shape[0] >= 1 and call.num_experts <= MAX_FUSED_EXPERTS
            and call.top_k <= min(64, call.num_experts))


def fused_available(implementation: str) -> bool:
    """Whether "triton" (Triton imports, with CUDA or its interpreter) or "cpu" (the C++ op built and
    loaded) can run here; checked once per process."""
    if implementation == "triton":
        return _triton_available()
    return _cpu_op_available()


@functools.cache
def _triton_available() -> bool:
    try:
        from . import routing_triton  # noqa: F401
    except Exception:  # noqa: BLE001 - no usable Triton: the torch reference runs instead
        return False
    return True


@functools.cache
def _cpu_op_available() -> bool:
    from .routing_cpu import load_cpu_op

    return load_cpu_op() is not None


def fused_route(call: RoutingCall, implementation: str = "auto") -> RoutingResult:
    """The decision on the device of the logits: "triton" (CUDA, or CPU tensors under
    TRITON_INTERPRET=1), "cpu" (the C++ op), or "auto" (triton on CUDA, cpu otherwise)."""
    if implementation == "auto":
        implementation = "triton" if call.logits.is_cuda else "cpu"
    if implementation == "triton":
        from .routing_triton import route_triton

        return route_triton(call)
    if implementation == "cpu":
        from .routing_cpu import route_cpu

        return route_cpu(call)
    raise ValueError(f"implementation must be 'auto', 'triton' or 'cpu', got {implementation!r}")
