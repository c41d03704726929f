"""`prefer_resident`: lynx, oea and anchor given an expert cache's resident mask.

What must hold: the fused paths give the torch reference's routing; without the parameter (or without
a mask) nothing changes, lone rows included; with both, each policy stays within its own rule (lynx: a
token's first expert stays in its top bin; oea: its floor is kept; anchor: its first expert is one it
accepts) and the step needs fewer copies; a lone row may change, to a resident expert.
"""

import pytest
import torch

from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.policies import ExpertBudget, PolicyConfigError, get_policy
from policies_testlib import device_for, make_logits, moved, normal_routing

IMPLEMENTATIONS = ["torch"] + [pytest.param(name, marks=pytest.mark.slow) if name == "triton" else name
                               for name in ("cpu", "triton") if fused_available(name)]
CACHE_AWARE = [("lynx", {}), ("lynx", {"alpha": 2.0, "beta": 2}), ("oea", {}), ("anchor", {}),
               ("anchor", {"fill_to_k": False}), ("anchor", {"ratio": 0.3, "min_share": 0.4})]
SHAPES = [(8, 2), (16, 4), (64, 6)]


def resident_mask(num_experts, num_slots, seed, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(num_experts, dtype=torch.bool)
    mask[torch.randperm(num_experts, generator=generator)[:num_slots]] = True
    return mask.to(device)


def batch(rows, num_experts, top_k, seed, *, grid=False):
    logits = make_logits(rows, num_experts, seed=seed, grid=grid, skew=1.0)
    ids, weights = normal_routing(logits, top_k, True)
    return logits, ids, weights


def experts_copied(ids, resident, rows=None):
    """Distinct experts the (real) rows use that the cache does not hold: the step's copies."""
    ids = ids if rows is None else ids[:rows]
    used = torch.zeros_like(resident).scatter(0, ids.long().reshape(-1).clamp_min(0), True)
    return int((used & ~resident).sum())


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name,params", CACHE_AWARE)
@pytest.mark.parametrize("num_experts,top_k", SHAPES)
def test_fused_paths_give_the_reference_routing(name, params, num_experts, top_k, implementation):
    device = device_for(implementation)
    policy = get_policy(name, num_experts, top_k, prefer_resident=True, **params)
    for seed, rows in enumerate((1, 2, 5, 13)):
        logits, ids, weights = moved(device, *batch(rows, num_experts, top_k, seed, grid=seed % 2 == 0))
        if rows > 2:
            logits[1, 0] = float("nan")  # a row that does not vote
        resident = resident_mask(num_experts, max(1, num_experts // 4), seed, device)
        num_real = torch.tensor(rows - 1 if rows > 2 else rows, device=device)  # a padding row
        budget = ExpertBudget.unlimited(num_experts, device)
        if seed == 3:
            budget.set_experts(top_k + 1)
        got = policy.select(logits, ids, weights, num_real, layer_id=0, budget=budget, implementation=implementation,
                            resident=resident)  # fmt: skip
        want = policy.select(logits.cpu(), ids.cpu(), weights.cpu(), num_real.cpu(), layer_id=0,
                             budget=ExpertBudget(num_experts, budget.max_experts.cpu(), budget.mass_fraction.cpu()),
                             implementation="torch", resident=resident.cpu())  # fmt: skip
        assert torch.equal(got.topk_ids.cpu(), want.topk_ids), (seed, rows)
        torch.testing.assert_close(got.topk_weights.cpu(), want.topk_weights, atol=1e-6, rtol=0)
        assert torch.equal(got.active_mask.cpu(), want.active_mask), (seed, rows)


@pytest.mark.parametrize("implementation", [p for p in IMPLEMENTATIONS if p != "triton"])
@pytest.mark.parametrize("name,params", CACHE_AWARE)
def test_nothing_changes_without_the_parameter_or_without_a_mask(name, params, implementation):
    plain = get_policy(name, 16, 4, **params)
    preferring = get_policy(name, 16, 4, prefer_resident=True, **params)
    for seed, rows in enumerate((1, 1, 3, 9)):
        logits, ids, weights = batch(rows, 16, 4, seed, grid=seed == 1)
        resident = resident_mask(16, 4, seed)
        want = plain.select(logits, ids, weights, implementation=implementation)
        for got in (plain.select(logits, ids, weights, implementation=implementation, resident=resident),
                    preferring.select(logits, ids, weights, implementation=implementation)):
            assert torch.equal(got.topk_ids, want.topk_ids) and torch.equal(got.topk_weights, want.topk_weights)
        if rows == 1:  # the one-row property holds for every policy without the cache's mask
            assert torch.equal(want.topk_ids, ids) and torch.equal(want.topk_weights, weights)


def test_a_lone_row_takes_a_resident_expert_it_accepts():
    """The one place a lone row changes on purpose: its second expert is not resident and lies outside
    its top bin (lynx) / beyond its floor (oea), so it takes the resident expert it rates best."""
    logits = torch.tensor([[4.0, 1.0, 0.5, 0.0, -1.0, -1.0, -2.0, -3.0]])
    ids, weights = normal_routing(logits, 2, True)  # experts 0 and 1
    resident = torch.zeros(8, dtype=torch.bool)
    resident[[0, 2, 5]] = True
    for name in ("lynx", "oea", "anchor"):
        decision = get_policy(name, 8, 2, prefer_resident=True).select(logits, ids, weights, resident=resident)
        assert decision.topk_ids.tolist() == [[0, 2]], name  # expert 2: the best resident after its top-1
        assert experts_copied(decision.topk_ids, resident) == 0
        torch.testing.assert_close(decision.topk_weights, torch.softmax(logits[:, [0, 2]], -1))
    # a resident second expert: nothing to save, the row keeps its routing
    resident[1] = True
    for name in ("lynx", "oea", "anchor"):
        decision = get_policy(name, 8, 2, prefer_resident=True).select(logits, ids, weights, resident=resident)
        assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights), name


@pytest.mark.parametrize("num_experts,top_k", SHAPES)
def test_each_policy_stays_within_its_rule_and_copies_fewer_experts(num_experts, top_k):
    slots = max(2, num_experts // 4)
    for name, params in CACHE_AWARE:
        plain = get_policy(name, num_experts, top_k, **params)
        preferring = get_policy(name, num_experts, top_k, prefer_resident=True, **params)
        copies_plain = copies_preferring = 0
        for seed in range(40):
            rows = (1, 2, 4, 8, 16)[seed % 5]
            logits, ids, weights = batch(rows, num_experts, top_k, seed)
            resident = resident_mask(num_experts, slots, seed)
            got = preferring.select(logits, ids, weights, resident=resident)
            copies_plain += experts_copied(plain.select(logits, ids, weights).topk_ids, resident)
            copies_preferring += experts_copied(got.topk_ids, resident)
            gap = logits.gather(1, got.topk_ids.long()) - logits.max(dim=1, keepdim=True).values
            if name == "lynx":  # a token's first expert stays in its top bin
                assert (torch.ceil(preferring.alpha * gap[:, 0]) >= 0).all(), (name, seed)
            elif name == "oea":  # a token's floor is kept
                floor = ids[:, : preferring.k0].long()
                assert (got.topk_ids.long().unsqueeze(2) == floor.unsqueeze(1)).any(1).all(), (name, seed)
            elif params.get("min_share", 0) == 0:  # every token's first expert is one it accepts
                assert (gap[:, 0] >= torch.log(torch.tensor(preferring.ratio[0])) - 1e-6).all(), (name, seed)
        assert copies_preferring < copies_plain, (name, params, copies_preferring, copies_plain)


def test_oea_never_copies_more_than_without_the_cache_in_view():
    policy, plain = get_policy("oea", 16, 4, prefer_resident=True), get_policy("oea", 16, 4)
    for seed in range(60):
        logits, ids, weights = batch(1 + seed % 12, 16, 4, seed)
        resident = resident_mask(16, 4, seed)
        got = policy.select(logits, ids, weights, resident=resident)
        assert experts_copied(got.topk_ids, resident) <= experts_copied(plain.select(logits, ids, weights).topk_ids, resident)


def test_the_parameter_is_checked_and_only_the_cache_aware_policies_take_it():
    with pytest.raises(PolicyConfigError, match="prefer_resident"):
        get_policy("lynx", 8, 2, prefer_resident="yes")
    for name in ("budget", "topn", "coverage", "baseline"):
        with pytest.raises(PolicyConfigError, match="prefer_resident"):
            get_policy(name, 8, 2, prefer_resident=True)
