"""A token's own top-k follows the model where the model's ids are a top-k of its logits: a tie at the
top-k boundary goes the way the model broke it (SGLang's torch.topk on the softmax does not take the
lower index first). With bf16 logits such rows are a few % at E=128, k=8; before, a policy that could
save nothing on a batch (oea k0=k, topn/budget keeping every expert, coverage 1.0) still moved them
onto the tied lower-index expert. On every implementation, which must agree exactly."""

import pytest
import torch
from policies_testlib import policies_under_test

from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.policies import get_policy
from lynx_sglang.policies.keys import own_topk_indices, stable_topk_indices

IMPLEMENTATIONS = ["torch"] + [pytest.param(name, marks=pytest.mark.slow) if name == "triton" else name
                               for name in ("cpu", "triton") if fused_available(name)]


def tied_batch(seed: int, num_rows: int, num_experts: int, top_k: int):
    """bf16-rounded logits (ties are common) and a model's softmax top-k that breaks every tie by the
    HIGHER index, as a router kernel may (torch.topk documents no order among ties)."""
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(num_rows, num_experts, generator=generator) * 2).bfloat16().float()
    ids = num_experts - 1 - stable_topk_indices(logits.flip(-1), top_k)
    weights = torch.softmax(logits, -1).gather(1, ids)
    return logits, ids.to(torch.int32), weights / weights.sum(-1, keepdim=True)


def rows_split_otherwise(logits, ids, top_k):
    """Rows where the model's set differs from the lower-index top-k (a tie it broke the other way)."""
    lower = stable_topk_indices(logits, top_k).sort(-1).values
    return (lower != ids.long().sort(-1).values).any(-1)


def test_own_top_k_is_the_models_where_it_is_a_top_k_and_lower_index_elsewhere():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0, 1.0, -1.0]] * 5)
    ids = torch.tensor([
        [0, 2],    # a top-k: 2 ties with 1 and 4 at the boundary -> the model's
        [2, 0],    # the same set, given worst first -> best first
        [0, 3],    # 3 is below 1, 2 and 4: not a top-k -> lower index
        [0, 0],    # repeated -> lower index
        [0, -1],   # a padding id -> lower index
    ])
    assert own_topk_indices(logits, 2, ids).tolist() == [[0, 2], [0, 2], [0, 1], [0, 1], [0, 1]]
    assert own_topk_indices(logits, 2).tolist() == [[0, 1]] * 5
    every = torch.arange(6).flip(0).unsqueeze(0)  # k = E: any order of every expert is the top-k
    assert own_topk_indices(logits[:1], 6, every).tolist() == [[0, 1, 2, 4, 3, 5]]


SMALL_BATCH = dict(seed=10, num_rows=12, num_experts=64, top_k=6)  # few rows: a tied expert is no one else's


def test_the_batches_below_do_tie():
    logits, ids, _ = tied_batch(**SMALL_BATCH)
    assert int(rows_split_otherwise(logits, ids, 6).sum()) >= 2  # else the tests below prove nothing


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name, params", [("oea", {"k0": 6}), ("topn", {"num_experts_kept": 64}),
                                          ("budget", {"num_experts_kept": 64}), ("coverage", {"mass_fraction": 1.0})])
def test_a_policy_that_keeps_every_own_expert_keeps_the_models_routing(name, params, implementation):
    logits, ids, weights = tied_batch(**SMALL_BATCH)
    policy = get_policy(name, 64, 6, True, **params)
    decision = policy.select(logits, ids, weights, num_real=torch.tensor(12), implementation=implementation)
    assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights)
    used = torch.zeros(64, dtype=torch.bool).scatter(0, ids.reshape(-1).long(), True)
    assert torch.equal(decision.active_mask, used)


@pytest.mark.parametrize("implementation", [impl for impl in IMPLEMENTATIONS if impl != "torch"])
def test_every_policy_agrees_with_the_reference_on_tied_batches(implementation):
    for seed, (num_rows, num_experts, top_k) in enumerate([(24, 16, 4), (40, 64, 6), (9, 8, 2), (12, 128, 8)]):
        logits, ids, weights = tied_batch(seed, num_rows, num_experts, top_k)
        num_real = torch.tensor(num_rows - 2)
        for label, policy, _ in policies_under_test(num_experts, top_k, True):
            fused = policy.select(logits, ids, weights, num_real, implementation=implementation)
            reference = policy.select(logits, ids, weights, num_real, implementation="torch")
            assert torch.equal(fused.active_mask, reference.active_mask), label
            assert torch.equal(fused.topk_ids, reference.topk_ids), label
            torch.testing.assert_close(fused.topk_weights, reference.topk_weights, rtol=1e-6, atol=0, msg=label)


def test_a_remapped_row_keeps_its_own_tied_expert_where_it_stays_active():
    # Row 0 took 2 (tied with 1 and 3); the cap drops expert 0, which the other rows do not use. Re-taking
    # its top-2 over {1, 2, 3} keeps 2, its own, and fills with 1 (lower index than 3): not 1 and 3.
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0], [0.0, 3.0, 3.0, 0.0], [0.0, 0.0, 3.0, 3.0], [0.0, 3.0, 0.0, 3.0]])
    ids = torch.tensor([[0, 2], [1, 2], [2, 3], [1, 3]], dtype=torch.int32)
    weights = torch.softmax(logits, -1).gather(1, ids.long())
    budget = get_policy("budget", 4, 2, True, num_experts_kept=3)
    for implementation in [impl if isinstance(impl, str) else impl.values[0] for impl in IMPLEMENTATIONS]:
        decision = budget.select(logits, ids, weights / weights.sum(-1, keepdim=True), implementation=implementation)
        assert decision.active_mask.tolist() == [False, True, True, True], implementation
        assert decision.topk_ids[0].tolist() == [2, 1], implementation
