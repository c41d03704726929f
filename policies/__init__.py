"""Batch-aware active-expert policies for MoE decode (pure torch; knows nothing of SGLang).

    from lynx_sglang.policies import get_policy, available_policies
    policy = get_policy("lynx", num_experts=E, top_k=k, renormalize=True)
    d = policy.select(router_logits, topk_ids, topk_weights, num_real=None, layer_id=None, budget=None)
    d.topk_ids [T, k], d.topk_weights [T, k], d.active_mask [E] bool
    budget = ExpertBudget.unlimited(E, device).set_experts(16)   # a cap changeable in place

See docs/policies.md for every policy, the rules a policy must follow, and how to add your own.
"""

from .base import Policy, PolicyDecision, RoutingContext, ensure_min_active
from .budget import ExpertBudget
from .keys import MASS_ONE, stable_topk_indices
from .params import PolicyConfigError
from .lynx import LYNX_FALLBACK, LynxPolicy, LynxV1Policy, lynx_defaults
from .peers import (
    BaselinePolicy,
    BudgetPolicy,
    CoveragePolicy,
    OeaPolicy,
    RandomPolicy,
    StaticTopKPolicy,
    TopNPolicy,
)
from .registry import (
    BUILTIN_POLICIES,
    ENTRY_POINT_GROUP,
    accepted_parameters,
    available_policies,
    get_policy,
    resolve_policy_class,
)
from ..kernels.routing.batch import ids_to_mask
from .remap import remap_topk, sanitize_logits
from .router import SCORING_FUNCTIONS, RouterModel, router_family

__all__ = [
    "BUILTIN_POLICIES",
    "ENTRY_POINT_GROUP",
    "LYNX_FALLBACK",
    "MASS_ONE",
    "BaselinePolicy",
    "BudgetPolicy",
    "CoveragePolicy",
    "ExpertBudget",
    "LynxPolicy",
    "LynxV1Policy",
    "OeaPolicy",
    "Policy",
    "PolicyConfigError",
    "PolicyDecision",
    "RouterModel",
    "SCORING_FUNCTIONS",
    "RandomPolicy",
    "RoutingContext",
    "StaticTopKPolicy",
    "TopNPolicy",
    "accepted_parameters",
    "available_policies",
    "ensure_min_active",
    "get_policy",
    "ids_to_mask",
    "lynx_defaults",
    "remap_topk",
    "resolve_policy_class",
    "router_family",
    "sanitize_logits",
    "stable_topk_indices",
]
