"""Every launch configuration the GPU sweep (tools/launch_sweep.py) may time computes the same routing as
the default one: block sizes and warps change speed, never the result (weights up to rounding: on a
GPU the warps change the order of a row's sum). Under Triton's interpreter, or on CUDA."""

import pytest
import torch

from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.kernels.configs import device_name
from lynx_sglang.kernels.routing.launch_config import (
    bits_rows,
    default_launch_config,
    heuristic_launch_config,
    launch_config,
)
from lynx_sglang.kernels.triton_shared import INTERPRETING
from lynx_sglang.kernels.routing.triton_plan import plan_triton
from lynx_sglang.tools.bench.batches import make_batch
from lynx_sglang.policies.registry import get_policy
from lynx_sglang.tools.launch_sweep import candidates

pytestmark = pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(call, config):
    plan = plan_triton(call, config)
    plan.rows()
    plan.decide()
    return plan.result


def distinct_programs(configs, num_rows):
    """The configs that run differently here: Triton's interpreter has no warps, so configs that differ
    only in them (and in the rows' bit width they bound, where that is the same) are one run."""
    if not INTERPRETING:
        return configs
    seen, distinct = set(), []
    for config in configs:
        key = (config._replace(rows_warps=0, decide_warps=0), bits_rows(num_rows, config.decide_warps))
        if key not in seen:
            seen.add(key)
            distinct.append(config)
    return distinct


@pytest.mark.parametrize("policy,num_rows,num_experts,top_k", [("lynx", 20, 16, 4), ("coverage", 9, 32, 2)])
def test_every_candidate_routes_as_the_default(policy, num_rows, num_experts, top_k):
    logits, ids, weights = make_batch(num_rows, num_experts, top_k, DEVICE, torch.float32, seed=3)
    logits[2, 1] = float("nan")  # a row that does not vote
    call = get_policy(policy, num_experts=num_experts, top_k=top_k).fused_call(
        logits, ids, weights, torch.tensor(num_rows - 2, device=DEVICE))
    configs = candidates(num_rows, num_experts, top_k)
    assert configs[0] == launch_config(num_rows, num_experts, top_k, device_name()) and len(configs) > 5
    assert len({c.block_t for c in configs}) > 1 and len({c.decide_warps for c in configs}) > 1
    want = run(call, configs[0])
    assert want.active_mask.sum() < num_experts  # the rule does prune here: the comparison is not vacuous
    for config in distinct_programs(configs[1:], num_rows):
        got = run(call, config)
        assert torch.equal(got.topk_ids, want.topk_ids), config
        torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0, msg=str(config))
        assert torch.equal(got.active_mask, want.active_mask), config


@pytest.mark.parametrize("num_rows,num_experts,top_k,seed", [(1, 8, 2, 0), (13, 64, 8, 1), (33, 60, 4, 2), (6, 128, 8, 3)])
@pytest.mark.parametrize("options", [{}, {"alpha": 0.7, "beta": 1}, {"alpha": 3.0, "beta": 4, "tie_break": "index"}])
def test_both_ways_of_picking_agree(num_rows, num_experts, top_k, seed, options):
    """lynx's picks gathered in the batch's order with a prefix count (picks 0), read in expert order
    with a per-row rank cut (picks 1), or from bit masks by binary search (picks 2): the same routing,
    ties and non-voting rows included."""
    logits, ids, weights = make_batch(num_rows, num_experts, top_k, DEVICE, torch.float32, seed=seed)
    logits = (logits * 2).round() / 2  # many equal logits: ties in the bins and the batch order
    if num_rows > 3:
        logits[1] = float("nan")
    call = get_policy("lynx", num_experts=num_experts, top_k=top_k, **options).fused_call(
        logits, ids, weights, torch.tensor(max(1, num_rows - 1), device=DEVICE))
    default = default_launch_config(num_rows, num_experts, top_k, DEVICE)
    want = run(call, default._replace(picks=0))
    for picks in (1, 2):
        got = run(call, default._replace(picks=picks))
        assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids), picks
        torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)


@pytest.mark.parametrize("num_rows,num_experts,top_k,seed", [(1, 8, 2, 0), (13, 64, 8, 1), (33, 60, 4, 2), (6, 128, 8, 3)])
@pytest.mark.parametrize("options", [{}, {"alpha": 0.7, "beta": 1}, {"alpha": 3.0, "beta": 4, "tie_break": "index"}])
def test_sorted_and_counted_orders_agree(num_rows, num_experts, top_k, seed, options):
    """Launch 2 orders lynx's experts (and the top-up's) by bitonic sorts of packed keys (sort=True) or by
    O(E^2) counting: the same routing, with equal votes and equal preference keys among the experts,
    non-voting rows, columns beyond E, and a batch with no voter at all (every expert from the top-up)."""
    from lynx_sglang.kernels.routing.launch_config import rule_sorts
    from lynx_sglang.kernels.triton_shared import block_sizes

    logits, ids, weights = make_batch(num_rows, num_experts, top_k, DEVICE, torch.float32, seed=seed)
    logits = (logits * 2).round() / 2
    if num_rows > 3:
        logits[1] = float("nan")
    policy = get_policy("lynx", num_experts=num_experts, top_k=top_k, **options)
    default = default_launch_config(num_rows, num_experts, top_k, DEVICE)
    for num_real in (max(1, num_rows - 1), 0):
        call = policy.fused_call(logits, ids, weights, torch.tensor(num_real, device=DEVICE))
        assert default.sort and rule_sorts(call.rule, num_rows, block_sizes(num_experts, top_k)[0], default)
        want = run(call, default._replace(sort=False))
        got = run(call, default)
        assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids), num_real
        torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)
        if num_real == 0:
            assert int(got.active_mask.sum()) == top_k  # the top-up alone: the first k by votes, then index


@pytest.mark.parametrize("name,kept", [("budget", 4), ("budget", 7), ("budget", 60), ("topn", 5), ("topn", 60)])
def test_budget_and_topn_sorted_as_counted(name, kept):
    """budget (without a cap) and topn take the first n of their order from a sort of packed keys, or
    from O(E^2) ranks: the same routing, with equal masses and votes, n past the experts voted for."""
    from lynx_sglang.kernels.routing.launch_config import rule_sorts
    from lynx_sglang.kernels.triton_shared import block_sizes

    logits, ids, weights = make_batch(21, 60, 4, DEVICE, torch.float32, seed=5)
    logits = (logits * 2).round() / 2
    logits[3] = float("nan")
    call = get_policy(name, num_experts=60, top_k=4, num_experts_kept=kept).fused_call(
        logits, ids, weights, torch.tensor(19, device=DEVICE))
    default = default_launch_config(21, 60, 4, DEVICE)
    assert rule_sorts(call.rule, 21, block_sizes(60, 4)[0], default)
    want = run(call, default._replace(sort=False))
    got = run(call, default)
    assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids)
    torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name,params", [("coverage", {}), ("coverage", {"mass_fraction": 0.5}),
                                         ("lynx", {"alpha": 0.3, "beta": 2}), ("budget", {"num_experts_kept": 30})])
@pytest.mark.parametrize("cap", [None, (6, 1.0), (40, 0.6), (1, 0.3)])
def test_coverage_and_budget_cap_sorted_as_counted(name, params, cap):
    """coverage's prefix of the preference order and an ExpertBudget cap (count and mass of the active
    experts before each one) from prefix sums along a sorted order, or from O(E^2) counting: alike."""
    from lynx_sglang.policies import ExpertBudget

    logits, ids, weights = make_batch(21, 60, 4, DEVICE, torch.float32, seed=6)
    logits = (logits * 2).round() / 2
    logits[3] = float("nan")
    budget = None
    if cap is not None:
        budget = ExpertBudget.unlimited(60, device=DEVICE).set_experts(cap[0]).set_mass(cap[1])
    call = get_policy(name, num_experts=60, top_k=4, **params).fused_call(
        logits, ids, weights, torch.tensor(19, device=DEVICE), budget=budget)
    default = default_launch_config(21, 60, 4, DEVICE)
    want = run(call, default._replace(sort=False))
    got = run(call, default)
    assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids)
    torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)
    if cap is not None and cap[0] < 10:
        assert int(got.active_mask.sum()) <= max(cap[0], 4)  # the cap did bind: not a vacuous comparison


def test_rule_sorts_only_where_its_keys_fit():
    """The sort words hold the key above two fields of log2(BLOCK_E) bits: S <= T**(beta+1) and the
    mass tie-break's preference key must fit below 2**(63 - 2 log2(BLOCK_E)); beyond, launch 2 counts."""
    from lynx_sglang.kernels.routing import BudgetRule, CoverageRule, LynxRule, TopNRule
    from lynx_sglang.kernels.routing.launch_config import cap_sorts, rule_sorts, sort_fits
    from lynx_sglang.kernels.routing.rules import MASS_BITS

    assert sort_fits(2**49 - 1, 128) and not sort_fits(2**49, 128) and sort_fits(2**47 - 1, 256)
    config = launch_config(256, 128, 8)
    assert rule_sorts(LynxRule(1.0, 4, True), 256, 128, config)  # S < 2**41, preference key < 2**37
    assert not rule_sorts(LynxRule(1.0, 8, False), 64, 128, config)  # S up to 64**9 = 2**54
    assert rule_sorts(LynxRule(1.0, 8, False), 40, 128, config)  # 40**9 < 2**48
    assert not rule_sorts(LynxRule(1.0, 4, True), 256, 128, config._replace(picks=0))  # picks 0 reads ranks
    assert not rule_sorts(LynxRule(1.0, 4, True), 256, 128, config._replace(sort=False))
    assert (256 << MASS_BITS) * 257 + 256 < 2**49
    assert rule_sorts(TopNRule(8), 512, 256, config) and not rule_sorts(TopNRule(8), 2**14, 256, config)
    assert rule_sorts(BudgetRule(8), 512, 256, config) and rule_sorts(CoverageRule(900_000), 512, 256, config)
    assert cap_sorts(512, 256, config) and not cap_sorts(2**14, 256, config)
    assert not rule_sorts(BudgetRule(8), 2**14, 256, config) and not cap_sorts(8, 16, config._replace(sort=False))


def test_lynx_whose_keys_do_not_fit_a_sort_counts_and_matches_the_reference():
    """beta 8 at T 50, E 128: S up to 50**9 > 2**49, so the default launches rank lynx's experts by
    counting (and scatter the ranks into the order its bit-mask picks read); the routing is the torch
    reference's."""
    from lynx_sglang.kernels.routing.launch_config import rule_sorts

    logits, ids, weights = make_batch(50, 128, 8, DEVICE, torch.float32, seed=11)
    logits = (logits * 2).round() / 2
    policy = get_policy("lynx", num_experts=128, top_k=8, alpha=0.5, beta=8)
    num_real = torch.tensor(47, device=DEVICE)
    call = policy.fused_call(logits, ids, weights, num_real)
    assert not rule_sorts(call.rule, 50, 128, launch_config(50, 128, 8))
    fused = policy.select(logits, ids, weights, num_real, implementation="triton")
    reference = policy.select(logits, ids, weights, num_real, implementation="torch")
    assert torch.equal(fused.active_mask, reference.active_mask) and torch.equal(fused.topk_ids, reference.topk_ids)
    torch.testing.assert_close(fused.topk_weights, reference.topk_weights, rtol=1e-6, atol=0)
    assert int(reference.active_mask.sum()) < int(torch.unique(ids[:47]).numel())  # it did prune


def test_mass_partials_are_int64_only_where_int32_could_overflow(monkeypatch):
    """Launch 1's routed-mass partials are int32 up to T 2047 (the total is at most T << MASS_BITS) and
    int64 beyond; both kinds of partial route alike (int64 forced here at a small T)."""
    from lynx_sglang.kernels.routing import triton_plan
    from lynx_sglang.kernels.routing.rules import MASS_BITS

    assert triton_plan.mass_partial_dtype(2047) == torch.int32 and 2047 << MASS_BITS < 2**31
    assert triton_plan.mass_partial_dtype(2048) == torch.int64
    logits, ids, weights = make_batch(24, 32, 4, DEVICE, torch.float32, seed=8)
    for name in ("lynx", "coverage"):
        call = get_policy(name, num_experts=32, top_k=4).fused_call(logits, ids, weights,
                                                                    torch.tensor(24, device=DEVICE))
        want = run(call, default_launch_config(24, 32, 4, DEVICE))
        monkeypatch.setattr(triton_plan, "mass_partial_dtype", lambda num_rows: torch.int64)
        got = run(call, default_launch_config(24, 32, 4, DEVICE))
        monkeypatch.undo()
        assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids), name
        torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)


@pytest.mark.parametrize("block_t,parts", [(2, 8), (4, 4)])
def test_partials_added_a_tile_at_a_time_route_as_in_one_load(block_t, parts):
    """More launch-1 programs than launch 2 loads at once (T > 256 at four rows per program on a GPU):
    launch 2 adds their partial sums a tile at a time, the last tile part-filled, as one load would."""
    num_rows, num_experts, top_k = 42, 16, 4
    logits, ids, weights = make_batch(num_rows, num_experts, top_k, DEVICE, torch.float32, seed=9)
    logits[5, 3] = float("nan")
    default = heuristic_launch_config(num_rows, num_experts, top_k, block_t=16)
    assert -(-num_rows // default.block_t) <= default.parts  # the reference: every partial in one load
    tiled = default._replace(block_t=block_t, parts=parts)
    assert (-(-num_rows // block_t)) % parts != 0  # several tiles, the last one part-filled
    for name in ("lynx", "coverage"):
        call = get_policy(name, num_experts=num_experts, top_k=top_k).fused_call(
            logits, ids, weights, torch.tensor(num_rows - 3, device=DEVICE))
        want, got = run(call, default), run(call, tiled)
        assert want.active_mask.sum() < num_experts, name  # it prunes: the comparison is not vacuous
        assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids), name
        torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0, msg=name)
