"""Every launch configuration the GPU sweep (policies/launch_sweep.py) may time computes the same routing as
the default one: block sizes and warps change speed, never the result (weights up to rounding: on a
GPU the warps change the order of a row's sum). Under Triton's interpreter, or on CUDA."""

import pytest
import torch

from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.kernels.routing_triton import launch_config, plan_triton
from lynx_sglang.policies.bench import make_batch
from lynx_sglang.policies.registry import get_policy
from lynx_sglang.policies.launch_sweep import candidates

pytestmark = pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(call, config):
    plan = plan_triton(call, config)
    plan.rows()
    plan.decide()
    return plan.result


@pytest.mark.parametrize("policy,num_rows,num_experts,top_k", [("lynx", 20, 16, 4), ("coverage", 9, 32, 2)])
def test_every_candidate_routes_as_the_default(policy, num_rows, num_experts, top_k):
    logits, ids, weights = make_batch(num_rows, num_experts, top_k, DEVICE, torch.float32, seed=3)
    logits[2, 1] = float("nan")  # a row that does not vote
    call = get_policy(policy, num_experts=num_experts, top_k=top_k).fused_call(
        logits, ids, weights, torch.tensor(num_rows - 2, device=DEVICE))
    configs = candidates(num_rows, num_experts, top_k)
    assert configs[0] == launch_config(num_rows, num_experts, top_k) and len(configs) > 5
    assert len({c.block_t for c in configs}) > 1 and len({c.decide_warps for c in configs}) > 1
    want = run(call, configs[0])
    assert want.active_mask.sum() < num_experts  # the rule does prune here: the comparison is not vacuous
    for config in configs[1:]:
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
    default = launch_config(num_rows, num_experts, top_k)
    want = run(call, default._replace(picks=0))
    for picks in (1, 2):
        got = run(call, default._replace(picks=picks))
        assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids), picks
        torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)


def test_mass_partials_are_int64_only_where_int32_could_overflow(monkeypatch):
    """Launch 1's routed-mass partials are int32 up to T 2047 (the total is at most T << MASS_BITS) and
    int64 beyond; both kinds of partial route alike (int64 forced here at a small T)."""
    from lynx_sglang.kernels import routing_triton
    from lynx_sglang.kernels.routing import MASS_BITS

    assert routing_triton.mass_partial_dtype(2047) == torch.int32 and 2047 << MASS_BITS < 2**31
    assert routing_triton.mass_partial_dtype(2048) == torch.int64
    logits, ids, weights = make_batch(24, 32, 4, DEVICE, torch.float32, seed=8)
    for name in ("lynx", "coverage"):
        call = get_policy(name, num_experts=32, top_k=4).fused_call(logits, ids, weights,
                                                                    torch.tensor(24, device=DEVICE))
        want = run(call, launch_config(24, 32, 4))
        monkeypatch.setattr(routing_triton, "mass_partial_dtype", lambda num_rows: torch.int64)
        got = run(call, launch_config(24, 32, 4))
        monkeypatch.undo()
        assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids), name
        torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)
