"""Fused routing decisions: the rules a policy's decision can be run as (rules.py), and the entry point
that runs one layer call's decision in one piece (dispatch.py): two Triton launches on CUDA
(triton_*.py, sized by launch_config.py), one C++ call on CPU (cpu.py, cpu.cpp).

Stages, identical for every rule: clean the logits (NaN/inf), voters (real rows with finite logits),
each voter's own top-k and its renormalised weights in fixed point, per-expert vote counts and routed
mass, the rule's active set, the top-up to `slots` experts, kept rows, the expert budget cap, and the
remap (each token re-takes its top-`slots` over the active set; unfillable slots repeat its first choice
at weight 0; weights renormalised or rescaled to the original top-k mass).
"""

from .dispatch import fused_available, fused_route, fused_supports
from .rules import (
    AnchorRule,
    BudgetRule,
    CoverageRule,
    GivenRule,
    LynxRule,
    OwnTopRule,
    RoutingCall,
    RoutingResult,
    RoutingRule,
    TopNRule,
)

__all__ = [
    "AnchorRule",
    "BudgetRule",
    "CoverageRule",
    "GivenRule",
    "LynxRule",
    "OwnTopRule",
    "RoutingCall",
    "RoutingResult",
    "RoutingRule",
    "TopNRule",
    "fused_available",
    "fused_route",
    "fused_supports",
]
