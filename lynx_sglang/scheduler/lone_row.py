"""Decode calls of one row: under most settings a lone row keeps the model's routing, so the routing
hook launches nothing for it and its statistics are counted on the host (concurrency 1 costs nothing).

Which policies keep a lone row is the policies' own fact (Policy.keeps_lone_row, which `select`
enforces: the model's routing exactly, ties at the top-k boundary and non-finite logits included):
baseline, lynx with tie_break "mass", lynx-v1, oea, coverage, anchor, and budget/topn keeping N >= k.
Not static-topk (fewer slots), random (its own set) or lynx with tie_break "index"; a policy of another
package says so with the same attribute. The budget must leave k experts: none, experts=N or
fraction=F giving N >= k, mass=1; not a smaller cap, mass < 1 (it may cut the row's weakest expert) or
tpot_ms (the controller's cap moves). Nor a policy with prefer_resident under --lynx-expert-cache.
"""

from __future__ import annotations

from lynx_sglang.policies import ExpertBudget
from lynx_sglang.setting_values import Budget


def policy_keeps_lone_row(policy, cache_on: bool = False) -> bool:
    """What `policy.select` does with one row and no cap: keep the model's routing (skipping it here
    is then the same as calling it). Not with prefer_resident and an expert cache: a lone row may then
    take a resident expert it accepts, to save a copy."""
    if cache_on and getattr(policy, "prefer_resident", False):
        return False
    return bool(getattr(policy, "keeps_lone_row", False))


def budget_keeps_lone_row(budget: Budget | None, expert_budget: ExpertBudget, top_k: int) -> bool:
    """Whether the cap in `expert_budget` (as filled for `budget`) leaves a row its k experts. Reads
    two device scalars: call it on a switch, never on the step path."""
    if budget is None:
        return True
    if budget.kind == "tpot_ms":
        return False
    return int(expert_budget.max_experts) >= top_k and float(expert_budget.mass_fraction) >= 1.0
