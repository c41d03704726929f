"""Decode calls of one row: under most settings a lone row keeps the model's routing, so the routing
hook launches nothing for it and its statistics are counted on the host (concurrency 1 costs nothing).

With one voter, these policies' active set is the row's own top-k, and a row whose experts are all
active keeps its routing bit for bit (policies/remap.py): baseline, lynx with tie_break "mass" (the
batch order is then the row's own), lynx-v1, oea, budget, topn, coverage and anchor. Not: static-topk
(fewer slots), random (its own set), lynx with tie_break "index" (ties in a bin go by expert index), nor
any policy of another package. The budget must leave k experts: none, experts=N or fraction=F giving
N >= k, mass=1; not a smaller cap, mass < 1 (it may cut the row's weakest expert) or tpot_ms (the
controller's cap moves).

This is the policies' own rule for a batch of one row (Policy.keeps_lone_row: the model's routing
exactly, ties at the top-k boundary and non-finite logits included), taken here without a launch.
"""

from __future__ import annotations

from lynx_sglang.config import Budget
from lynx_sglang.policies import (
    BaselinePolicy,
    BudgetPolicy,
    CoveragePolicy,
    ExpertBudget,
    LynxPolicy,
    LynxV1Policy,
    OeaPolicy,
    TopNPolicy,
)
from lynx_sglang.policies.anchor import AnchorPolicy

_KEEP_A_LONE_ROW = (BaselinePolicy, LynxV1Policy, OeaPolicy, BudgetPolicy, TopNPolicy, CoveragePolicy, AnchorPolicy)


def policy_keeps_lone_row(policy) -> bool:
    """Exact classes only: a subclass may decide otherwise."""
    if type(policy) is LynxPolicy:
        return policy.tie_break == "mass"
    return type(policy) in _KEEP_A_LONE_ROW


def budget_keeps_lone_row(budget: Budget | None, expert_budget: ExpertBudget, top_k: int) -> bool:
    """Whether the cap in `expert_budget` (as filled for `budget`) leaves a row its k experts. Reads
    two device scalars: call it on a switch, never on the step path."""
    if budget is None:
        return True
    if budget.kind == "tpot_ms":
        return False
    return int(expert_budget.max_experts) >= top_k and float(expert_budget.mass_fraction) >= 1.0
