"""The active-expert kernel through an expert->slot map, and a MoE layer computed through the expert
cache (kernels/cache/compute.py), against the dense float64 reference, on CPU tensors."""

import pytest
import torch

from kernels_testlib import assert_close_to_reference, make_problem, reference
from lynx_sglang.kernels import fused_moe_active
from lynx_sglang.kernels.cache import ExpertCache, moe_through_cache, rounds_for

IMPLEMENTATIONS = ["reference", "cpu", "triton"]


def slotted(problem, experts_in_slots, num_slots):
    """The problem's weights held in `num_slots` slots: expert experts_in_slots[i] in slot i, the other
    slots NaN (never read), and the expert->slot map."""
    num_experts = problem.w13.shape[0]
    w13 = torch.full((num_slots, *problem.w13.shape[1:]), float("nan"), dtype=problem.w13.dtype)
    w2 = torch.full((num_slots, *problem.w2.shape[1:]), float("nan"), dtype=problem.w2.dtype)
    expert_slots = torch.full((num_experts,), -1, dtype=torch.int32)
    for slot, expert in enumerate(experts_in_slots):
        w13[slot], w2[slot], expert_slots[expert] = problem.w13[expert], problem.w2[expert], slot
    return w13, w2, expert_slots


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_through_the_slot_map_equals_the_dense_kernel(implementation, dtype):
    problem = make_problem(5, 32, 16, 8, 2, dtype, num_active=4, stray_ids=True, nan_inactive=False)
    active = problem.active_mask.nonzero().flatten().tolist()
    w13, w2, expert_slots = slotted(problem, active[::-1], 6)  # reversed: slot order is not expert order
    got = fused_moe_active(problem.hidden, w13, w2, problem.topk_ids, problem.topk_weights, problem.active_mask,
                           expert_slots=expert_slots, implementation=implementation)  # fmt: skip
    assert_close_to_reference(got, reference(problem), dtype)
    if implementation != "reference":  # the same implementation on the dense weights: the same numbers
        dense = fused_moe_active(problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights,
                                 problem.active_mask, implementation=implementation)  # fmt: skip
        assert torch.equal(got, dense)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_an_expert_without_a_slot_contributes_nothing(implementation):
    problem = make_problem(4, 32, 16, 8, 2, num_active=None, nan_inactive=False)
    w13, w2, expert_slots = slotted(problem, [0, 1, 2, 3], 4)  # experts 4..7 not resident
    got = fused_moe_active(problem.hidden, w13, w2, problem.topk_ids, problem.topk_weights,
                           expert_slots=expert_slots, implementation=implementation)  # fmt: skip
    only_resident = torch.where(problem.topk_ids < 4, problem.topk_ids, -1)
    want = fused_moe_active(problem.hidden, problem.w13, problem.w2, only_resident, problem.topk_weights,
                            implementation="reference")  # fmt: skip
    assert_close_to_reference(got, want, torch.float32)


def test_slot_map_arguments_are_checked():
    problem = make_problem(2, 16, 16, 4, 2)
    args = (problem.hidden, problem.w13[:2], problem.w2[:2], problem.topk_ids, problem.topk_weights)
    with pytest.raises(ValueError, match="expert_slots must be \\[E\\] int32/int64"):
        fused_moe_active(*args, expert_slots=torch.zeros(4))
    with pytest.raises(ValueError, match="active_mask must be \\[E=4\\] bool"):
        fused_moe_active(*args, torch.ones(2, dtype=torch.bool), expert_slots=torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="an alignment groups expert ids, not slots"):
        from lynx_sglang.kernels import align_active_experts

        fused_moe_active(*args, expert_slots=torch.zeros(4, dtype=torch.int32), implementation="triton",
                         alignment=align_active_experts(problem.topk_ids, 4, 16))  # fmt: skip


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("num_tokens,num_slots", [(1, 2), (3, 2), (12, 3), (12, 1)])
def test_the_layer_through_the_cache_equals_the_dense_layer(implementation, num_tokens, num_slots):
    """A decode row within the cache (1 token, 2 slots) and calls that need more experts than slots
    (streamed in rounds), from a cold cache and then again from what the first call left."""
    problem = make_problem(num_tokens, 32, 16, 8, 2, num_active=None, stray_ids=True, nan_inactive=False, seed=num_tokens)
    cache = ExpertCache(problem.w13, problem.w2, num_slots)
    for call in range(2):
        result = moe_through_cache(cache, problem.hidden, problem.topk_ids, problem.topk_weights,
                                   implementation=implementation)  # fmt: skip
        assert result.out.dtype == (torch.float64 if implementation == "reference" else torch.float32)
        assert_close_to_reference(result.out, reference(problem), torch.float32)
        used = problem.topk_ids[problem.topk_ids >= 0].unique()
        assert int(result.needed) == used.numel()
        assert 0 <= int(result.hits) <= min(num_slots, used.numel())


def test_one_round_gives_exactly_the_dense_kernels_output():
    problem = make_problem(2, 32, 16, 8, 2, num_active=3, nan_inactive=False, seed=4)
    cache = ExpertCache(problem.w13, problem.w2, 4)
    assert rounds_for(2, 2, 8, 4) == 1
    result = moe_through_cache(cache, problem.hidden, problem.topk_ids, problem.topk_weights, implementation="cpu")
    dense = fused_moe_active(problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights,
                             implementation="cpu")  # fmt: skip
    assert torch.equal(result.out, dense)


def test_hits_and_misses_follow_the_cache_contents():
    problem = make_problem(1, 16, 16, 8, 2, num_active=None, nan_inactive=False)
    cache = ExpertCache(problem.w13, problem.w2, 2)
    ids = torch.tensor([[5, 6]], dtype=torch.int32)
    first = moe_through_cache(cache, problem.hidden, ids, problem.topk_weights[:1])
    again = moe_through_cache(cache, problem.hidden, ids, problem.topk_weights[:1])
    assert (int(first.needed), int(first.hits)) == (2, 0)  # slots held 0 and 1
    assert (int(again.needed), int(again.hits)) == (2, 2)
    padding = moe_through_cache(cache, problem.hidden, torch.full((1, 2), -1, dtype=torch.int32), problem.topk_weights[:1])
    assert int(padding.needed) == 0 and torch.equal(padding.out, torch.zeros_like(padding.out))


def test_round_count_is_static_and_enough():
    assert rounds_for(1, 2, 8, 2) == 1
    assert rounds_for(8, 2, 8, 2) == 4  # 16 pairs can name all 8 experts: 4 rounds of 2
    assert rounds_for(3, 2, 8, 4) == 2
    assert rounds_for(0, 2, 8, 2) == 0
