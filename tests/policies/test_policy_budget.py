"""ExpertBudget: validation, the cap rule against a python reference, in-place updates, graph safety."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lynx_sglang.policies import ExpertBudget, MASS_ONE, PolicyConfigError, get_policy, ids_to_mask
from policies_testlib import (
    _rows,
    _voters,
    make_logits,
    normal_routing,
    policies_under_test,
    reference_mass_and_counts,
)
from test_policy_graph_safety import assert_static, recording_backend

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_cap(active, rows, voters, top_k, max_experts, mass_fraction):
    """docs/policies.md: rank the active experts by (mass, votes, -index); keep rank r iff
    r < max_experts and (f >= 1 or mass before it < f * total), and always rank 0."""
    mass, counts = reference_mass_and_counts(rows, voters, top_k)
    order = [e for e in sorted(range(len(active)), key=lambda e: (-mass[e], -counts[e], e)) if active[e]]
    threshold_units = math.floor(float(torch.tensor(mass_fraction, dtype=torch.float32)) * MASS_ONE)
    kept, before = [False] * len(active), 0
    for rank, e in enumerate(order):
        covering = mass_fraction >= 1 or before * MASS_ONE < threshold_units * sum(mass)
        kept[e] = rank == 0 or (rank < max_experts and covering)
        before += mass[e]
    return kept


@st.composite
def budgeted_batches(draw):
    num_experts = draw(st.sampled_from([4, 8, 16, 64]))
    top_k = draw(st.sampled_from([k for k in (1, 2, 4, 8) if k < num_experts]))
    num_rows = draw(st.integers(1, 24))
    logits = make_logits(num_rows, num_experts, seed=draw(st.integers(0, 2**31 - 1)),
                         dtype=draw(st.sampled_from([torch.float32, torch.bfloat16])),
                         skew=draw(st.sampled_from([0.0, 2.0])), grid=draw(st.booleans()))
    num_real = draw(st.integers(0, num_rows))
    renormalize = draw(st.booleans())
    ids, weights = normal_routing(logits, top_k, renormalize)
    max_experts = draw(st.integers(1, num_experts + 2))
    mass_fraction = draw(st.sampled_from([0.3, 0.6, 0.9, 1.0, 1.5]))
    return logits, ids, weights, num_real, renormalize, max_experts, mass_fraction


def budget_of(num_experts, max_experts, mass_fraction):
    budget = ExpertBudget.unlimited(num_experts)
    budget.max_experts.fill_(max_experts)  # raw fill: values above E and fractions >= 1 mean "no cap"
    budget.mass_fraction.fill_(mass_fraction)
    return budget


@SETTINGS
@given(batch=budgeted_batches())
def test_cap_follows_the_rule_and_routing_stays_inside(batch):
    logits, ids, weights, num_real, renormalize, max_experts, mass_fraction = batch
    num_experts, top_k = logits.shape[1], ids.shape[1]
    budget = budget_of(num_experts, max_experts, mass_fraction)
    rows, voters = _rows(logits), _voters(logits, num_real)
    for label, policy, _ in policies_under_test(num_experts, top_k, renormalize):
        if label == "baseline":
            continue
        free = policy.select(logits, ids, weights, num_real=num_real)
        capped = policy.select(logits, ids, weights, num_real=num_real, budget=budget)
        expected = reference_cap(free.active_mask.tolist(), rows, voters, top_k, max_experts, mass_fraction)
        assert capped.active_mask.tolist() == expected, label
        assert 1 <= int(capped.active_mask.sum()) <= max(1, min(max_experts, num_experts)), label
        # Every slot of a real row names an active expert; slots beyond the active count weigh 0.
        real_ids, real_weights = capped.topk_ids[:num_real].long(), capped.topk_weights[:num_real]
        assert capped.active_mask[real_ids].all(), label
        filled = min(policy.slots_used, int(capped.active_mask.sum()))
        assert ((real_weights > 0).sum(-1) <= filled).all(), label
        target = torch.ones(num_real) if renormalize else weights[:num_real].sum(-1)
        torch.testing.assert_close(real_weights.sum(-1), target, rtol=2e-2, atol=1e-6)
        if int(free.active_mask.sum()) <= max_experts and mass_fraction >= 1:
            assert all(torch.equal(a, b) for a, b in zip(free, capped)), f"{label}: a fitting batch changed"


@SETTINGS
@given(batch=budgeted_batches())
def test_unlimited_budget_is_no_budget_bit_for_bit(batch):
    logits, ids, weights, num_real, renormalize, _, _ = batch
    unlimited = ExpertBudget.unlimited(logits.shape[1])
    for label, policy, _ in policies_under_test(logits.shape[1], ids.shape[1], renormalize):
        free = policy.select(logits, ids, weights, num_real=num_real)
        capped = policy.select(logits, ids, weights, num_real=num_real, budget=unlimited)
        assert all(torch.equal(a, b) for a, b in zip(free, capped)), label


def test_budget_changed_in_place_takes_effect():
    logits = make_logits(32, 64, seed=3)
    ids, weights = normal_routing(logits, 8, True)
    policy = get_policy("lynx", 64, 8, True)
    budget = ExpertBudget.unlimited(64)
    tensors = (budget.max_experts, budget.mass_fraction)
    free = int(policy.select(logits, ids, weights, budget=budget).active_mask.sum())
    sizes = []
    for n in (20, 8, 2):
        budget.set_experts(n)
        sizes.append(int(policy.select(logits, ids, weights, budget=budget).active_mask.sum()))
    assert free > 20 and sizes == [20, 8, 2]
    budget.set_unlimited().set_mass(0.5)
    by_mass = int(policy.select(logits, ids, weights, budget=budget).active_mask.sum())
    assert 1 <= by_mass < free
    assert (budget.max_experts, budget.mass_fraction) == tensors  # filled, never reallocated


def test_budget_below_k_fills_the_other_slots_with_the_first_choice_at_weight_zero():
    logits = make_logits(6, 16, seed=4)
    ids, weights = normal_routing(logits, 4, True)
    decision = get_policy("oea", 16, 4, True).select(logits, ids, weights,
                                                      budget=ExpertBudget.unlimited(16).set_experts(1))
    (only,) = decision.active_mask.nonzero().flatten().tolist()
    assert (decision.topk_ids == only).all()
    assert (decision.topk_weights[:, 0] == 1).all() and (decision.topk_weights[:, 1:] == 0).all()


def test_kept_rows_lose_their_status_when_the_cap_drops_their_experts():
    logits = make_logits(16, 64, seed=4, scale=3.0)
    ids, weights = normal_routing(logits, 8, True)
    policy = get_policy("coverage", 64, 8, True, mass_fraction=0.3, max_dropped_mass=0.0)
    decision = policy.select(logits, ids, weights, budget=ExpertBudget.unlimited(64).set_experts(10))
    assert int(decision.active_mask.sum()) == 10
    assert decision.active_mask[decision.topk_ids.long()].all()


@pytest.mark.parametrize("call, message", [
    (lambda b: b.set_experts(0), r"experts=0 must be an integer in 1..8"),
    (lambda b: b.set_experts(9), r"experts=9 must be an integer in 1..8"),
    (lambda b: b.set_experts(2.0), r"experts=2.0 must be an integer"),
    (lambda b: b.set_fraction(0.0), r"fraction=0.0 must be a number in \(0, 1\]"),
    (lambda b: b.set_fraction(1.5), r"fraction=1.5 must be a number in \(0, 1\]"),
    (lambda b: b.set_mass(float("nan")), r"mass=nan must be a number in \(0, 1\]"),
    (lambda b: b.set_mass("half"), r"mass='half' must be a number"),
])
def test_budget_setters_validate(call, message):
    with pytest.raises(ValueError, match=message):
        call(ExpertBudget.unlimited(8))


def test_set_fraction_rounds_up_and_budget_must_match_the_layer():
    budget = ExpertBudget.unlimited(10).set_fraction(0.25)
    assert int(budget.max_experts) == 3 and float(budget.mass_fraction) == 1.0
    logits = make_logits(4, 8, seed=0)
    ids, weights = normal_routing(logits, 2, True)
    with pytest.raises(ValueError, match="budget is for 10 experts, the layer has 8"):
        get_policy("lynx", 8, 2).select(logits, ids, weights, budget=budget)


def test_budget_compiles_fullgraph_and_reads_new_values():
    logits = make_logits(12, 16, seed=5, dtype=torch.bfloat16)
    ids, weights = normal_routing(logits, 4, True)
    chosen = ("lynx", "oea", "coverage mass_fraction=0.6 max_dropped_mass=0.3")  # compiling is slow
    for label, policy, _ in policies_under_test(16, 4, True):
        if label not in chosen:
            continue
        torch._dynamo.reset()
        graphs = []
        compiled = torch.compile(policy.select, fullgraph=True, backend=recording_backend(graphs))
        budget = ExpertBudget.unlimited(16)
        for n in (16, 5, 4):
            budget.set_experts(n).set_mass(0.7 if n == 4 else 1.0)
            got = compiled(logits, ids, weights, torch.tensor(10), layer_id=0, budget=budget)
            want = policy.select(logits, ids, weights, torch.tensor(10), layer_id=0, budget=budget,
                                 implementation="torch")
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (label, n)
        assert len(graphs) == 1, f"{label}: new budget values recompiled"
        assert_static(graphs[0], label)


@SETTINGS
@given(batch=budgeted_batches(), data=st.data())
def test_a_lone_real_row_keeps_its_routing(batch, data):
    """Policies that are not explicit budgets never move a token that is alone in its batch; budget
    and topn leave a batch alone when its union already fits."""
    logits, ids, weights, _, renormalize, _, _ = batch
    num_experts, top_k = logits.shape[1], ids.shape[1]
    row = data.draw(st.integers(0, logits.shape[0] - 1))
    lone = torch.cat([logits[row:row + 1], logits]), torch.cat([ids[row:row + 1], ids])
    lone_weights = torch.cat([weights[row:row + 1], weights])
    for label, policy, kind in policies_under_test(num_experts, top_k, renormalize):
        if kind != "free":
            continue
        decision = policy.select(lone[0], lone[1], lone_weights, num_real=1)
        assert torch.equal(decision.topk_ids[0], ids[row]), label
        assert torch.equal(decision.topk_weights[0], weights[row]), label
    union = int(ids_to_mask(ids, None, num_experts).sum())
    for name in ("budget", "topn"):
        policy = get_policy(name, num_experts, top_k, renormalize, num_experts_kept=max(union, top_k))
        decision = policy.select(logits, ids, weights)
        assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights), name


def test_topn_takes_its_n_as_the_sweep_example_spells_it():
    """`topn:n=3..7` (the A/B issue's sweep example): n is num_experts_kept, in its range, not beside it."""
    assert get_policy("topn", 16, 4, n=6).num_experts_kept == 6
    with pytest.raises(PolicyConfigError, match=r"parameter 'n'=2 out of range \(allowed: 4\.\.16\)"):
        get_policy("topn", 16, 4, n=2)
    with pytest.raises(PolicyConfigError, match="'n' is 'num_experts_kept'; give one of them"):
        get_policy("topn", 16, 4, n=6, num_experts_kept=6)
