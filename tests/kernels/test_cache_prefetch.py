"""Prefetch for the expert cache (kernels/cache/prefetch.py, ExpertCache.prefetch) on CPU tensors: the
co-activation prediction, what a prefetch copies, and the accuracy figures of the next call."""

import torch

from kernels_testlib import make_problem, reference
from lynx_sglang.kernels.cache import CoactivationPredictor, ExpertCache, expert_usage, moe_through_cache


def test_usage_marks_each_tokens_experts_and_ignores_padding():
    usage = expert_usage(torch.tensor([[1, 3], [-1, 2], [-1, -1]]), 4)
    assert usage.tolist() == [[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_the_prediction_follows_recorded_transitions():
    predictor = CoactivationPredictor(4, 6, "cpu")
    assert not predictor.likely(expert_usage(torch.tensor([[0, 1]]), 4), 2).any()  # nothing recorded yet
    for _ in range(3):  # expert 0 leads to 5, expert 1 to 2 (and once to 4)
        predictor.record(expert_usage(torch.tensor([[0], [1]]), 4), expert_usage(torch.tensor([[5], [2]]), 6))
    predictor.record(expert_usage(torch.tensor([[1]]), 4), expert_usage(torch.tensor([[4]]), 6))
    likely = predictor.likely(expert_usage(torch.tensor([[0, 1]]), 4), 2)
    assert likely.nonzero().flatten().tolist() == [2, 5]
    assert predictor.likely(expert_usage(torch.tensor([[1, -1]]), 4), 1).nonzero().flatten().tolist() == [2]
    assert not predictor.likely(expert_usage(torch.tensor([[3, -1]]), 4), 2).any()  # 3 never seen: no guess
    predictor.reset()
    assert predictor.counts.sum() == 0


def test_a_prefetch_is_counted_at_the_next_call_and_changes_no_output():
    problem = make_problem(1, 32, 16, 8, 2, num_active=None, nan_inactive=False)
    cache = ExpertCache(problem.w13, problem.w2, 2)
    likely = torch.zeros(8, dtype=torch.bool)
    likely[[4, 6]] = True
    plan = cache.prefetch(likely)
    assert int(plan.num_copies) == 2 and cache.prefetched.nonzero().flatten().tolist() == [4, 6]
    ids = torch.tensor([[4, 7]], dtype=torch.int32)  # 4 was right, 6 was not
    result = moe_through_cache(cache, problem.hidden, ids, problem.topk_weights[:1])
    assert (int(result.prefetched), int(result.prefetch_used), int(result.hits)) == (2, 1, 1)
    assert not cache.prefetched.any()  # cleared for the next call
    assert cache.expert_to_slot[6] == -1  # the wrong guess left first
    problem.topk_ids, problem.topk_weights = ids, problem.topk_weights[:1]
    torch.testing.assert_close(result.out.double(), reference(problem), rtol=1e-5, atol=1e-6)
    again = moe_through_cache(cache, problem.hidden, ids, problem.topk_weights[:1])
    assert int(again.prefetched) == 0 and int(again.prefetch_used) == 0
