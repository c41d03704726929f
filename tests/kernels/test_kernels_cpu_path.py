"""CPU torch path (and the public dispatch on CPU tensors) against the fp64 reference."""

import pytest
import torch

from kernels_testlib import assert_close_to_reference, make_problem, poisoned_output, reference
from lynx_sglang.kernels import fused_moe_active

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _run_and_check(problem, dtype, activation="silu", **kwargs):
    out = poisoned_output(problem.hidden.shape[0], problem.w2.shape[1], dtype)
    got = fused_moe_active(
        problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights,
        problem.active_mask, activation, out=out, **kwargs,
    )  # fmt: skip
    assert got.data_ptr() == out.data_ptr()
    assert_close_to_reference(got, reference(problem, activation), dtype)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_half_active_with_nan_inactive_weights(dtype, activation):
    problem = make_problem(12, 64, 48, 16, 4, dtype, num_active=8, stray_ids=True)
    _run_and_check(problem, dtype, activation)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_expert_count_top8(dtype):
    problem = make_problem(32, 64, 32, 128, 8, dtype, num_active=40, stray_ids=True)
    _run_and_check(problem, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_token(dtype):
    problem = make_problem(1, 64, 32, 8, 2, dtype, num_active=3)
    _run_and_check(problem, dtype)


def test_all_experts_active_mask_none():
    problem = make_problem(16, 32, 32, 8, 2, torch.float32, num_active=None, stray_ids=True)
    _run_and_check(problem, torch.float32)


def test_active_experts_with_zero_tokens():
    problem = make_problem(3, 32, 32, 16, 1, torch.float32, num_active=2)
    mask = problem.active_mask.clone()
    # Activate four more experts that no token chose (their weights stay finite but unused).
    extra = (~problem.active_mask).nonzero().flatten()[:4]
    problem.w13[extra] = 1.0
    problem.w2[extra] = 1.0
    mask[extra] = True
    problem.active_mask = mask
    _run_and_check(problem, torch.float32)


def test_inactive_choice_contributes_zero():
    problem = make_problem(4, 32, 32, 8, 2, torch.float32, num_active=8, nan_inactive=False)
    mask = torch.ones(8, dtype=torch.bool)
    dropped = int(problem.topk_ids[0, 0])
    mask[dropped] = False
    full = fused_moe_active(problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights, None)
    masked = fused_moe_active(problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights, mask)
    # Equal to zeroing the routing weight of every slot that points at the dropped expert.
    weights = torch.where(problem.topk_ids == dropped, 0.0, problem.topk_weights)
    expected = fused_moe_active(problem.hidden, problem.w13, problem.w2, problem.topk_ids, weights, None)
    assert torch.allclose(masked, expected, atol=1e-6)
    assert not torch.allclose(masked, full)


def test_no_active_expert_writes_zeros():
    problem = make_problem(3, 32, 32, 4, 2, torch.float32, num_active=0)
    out = poisoned_output(3, 32, torch.float32)
    fused_moe_active(problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights,
                     problem.active_mask, out=out, implementation="cpu")  # fmt: skip
    assert torch.equal(out, torch.zeros_like(out))
