"""The facts scheduler/lone_row.py rests on: under the policies and budgets it names, a decode batch
of one real row keeps the model's routing bit for bit, so the routing hook may skip it."""

import pytest
import torch

from lynx_sglang.policies import ExpertBudget, get_policy
from lynx_sglang.scheduler.lone_row import budget_keeps_lone_row, policy_keeps_lone_row
from lynx_sglang.setting_values import Budget

KEEPING = [("baseline", {}), ("lynx", {}), ("lynx-v1", {}), ("oea", {}), ("budget", {}), ("topn", {}),
           ("coverage", {}), ("coverage", {"max_dropped_mass": 0.2}), ("anchor", {}),
           ("anchor", {"fill_to_k": False, "layer_caps": [1]})]  # fmt: skip


def lone_rows(num_experts, top_k, count=40):
    """One row each, routed as SGLang does: softmax top-k, renormalised."""
    generator = torch.Generator().manual_seed(num_experts * 100 + top_k)
    for _ in range(count):
        logits = torch.randn(1, num_experts, generator=generator) * 3
        weights, ids = torch.softmax(logits, -1).topk(top_k, dim=-1)
        yield logits, ids.to(torch.int32), weights / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("name,params", KEEPING)
@pytest.mark.parametrize("num_experts,top_k", [(8, 2), (64, 8)])
def test_the_policies_named_keep_a_lone_rows_routing(name, params, num_experts, top_k):
    policy = get_policy(name, num_experts, top_k, True, **params)
    assert policy_keeps_lone_row(policy)
    budget = ExpertBudget.unlimited(num_experts).set_experts(top_k)  # a cap of k leaves the row whole
    ties = [tie_in_the_top_bin()] if (num_experts, top_k) == (8, 2) else []
    for logits, ids, weights in [*lone_rows(num_experts, top_k), *ties]:
        for implementation in ("torch", "auto"):
            decision = policy.select(logits, ids, weights, num_real=torch.tensor(1), layer_id=0, budget=budget,
                                     implementation=implementation)  # fmt: skip
            assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights)


def tie_in_the_top_bin():
    """Experts 0, 5 and 6 within one bin of lynx's top (alpha 0.7: gaps below 1/0.7); its own top-2: 6, 5."""
    logits = torch.tensor([[2.8, -5, -5, -5, -5, 2.9, 3.0, -5]])
    weights, ids = torch.softmax(logits, -1).topk(2, dim=-1)
    return logits, ids.to(torch.int32), weights / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("name,params,rows", [
    ("static-topk", {}, lambda: lone_rows(8, 2)),  # fewer slots
    ("random", {"num_experts_kept": 4}, lambda: lone_rows(8, 2)),  # its own set
    ("lynx", {"tie_break": "index"}, lambda: [tie_in_the_top_bin()]),  # ties in a bin go by expert index
])  # fmt: skip
def test_the_others_are_not_trusted_with_it(name, params, rows):
    policy = get_policy(name, 8, 2, True, **params)
    assert not policy_keeps_lone_row(policy)
    moved = 0
    for logits, ids, weights in rows():
        decision = policy.select(logits, ids, weights, num_real=1, layer_id=0)
        moved += not torch.equal(decision.topk_ids, ids) or not torch.equal(decision.topk_weights, weights)
    assert moved > 0


def test_budgets_keep_a_lone_row_only_when_they_leave_it_k_experts():
    def keeps(text, top_k=2, num_experts=8):
        budget = Budget.parse(text)
        expert_budget = ExpertBudget.unlimited(num_experts)
        if budget is not None and budget.kind == "experts":
            expert_budget.set_experts(int(budget.value))
        elif budget is not None and budget.kind == "fraction":
            expert_budget.set_fraction(budget.value)
        elif budget is not None and budget.kind == "mass":
            expert_budget.set_mass(budget.value)
        return budget_keeps_lone_row(budget, expert_budget, top_k)

    assert keeps(None) and keeps("experts=2") and keeps("fraction=0.25") and keeps("mass=1")
    assert not keeps("experts=1") and not keeps("fraction=0.1") and not keeps("mass=0.99")
    assert not keeps("tpot_ms=50")


def test_a_cache_aware_policy_keeps_a_lone_row_only_without_the_cache():
    for name in ("lynx", "oea", "anchor"):
        policy = get_policy(name, 8, 2, prefer_resident=True)
        assert policy_keeps_lone_row(policy) and not policy_keeps_lone_row(policy, cache_on=True)
        assert policy_keeps_lone_row(get_policy(name, 8, 2), cache_on=True)
