"""Triton kernels against the fp64 reference: on a GPU when there is one, else in Triton's interpreter.

Interpreter runs execute one program after another in numpy, so shapes stay tiny (H, I <= 64, T <= 8)
and tile sizes small (16; never below 16 so the same configs compile for Hopper's tl.dot).
"""

import pytest
import torch

from kernels_testlib import assert_close_to_reference, make_problem, poisoned_output, reference
from lynx_sglang.kernels import MoeKernelConfig, align_active_experts, fused_moe_active
from lynx_sglang.kernels.moe.config import choose_config, sm_count

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SMALL_CONFIG = MoeKernelConfig(block_m=16, gate_up_block_n=16, gate_up_block_k=16, down_block_n=32, down_block_k=16,
                               combine_block_h=32)


def _run_and_check(problem, dtype, activation="silu", config=SMALL_CONFIG, **kwargs):
    num_tokens, hidden_size = problem.hidden.shape
    out = poisoned_output(num_tokens, hidden_size, dtype, DEVICE)
    got = fused_moe_active(
        problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights, problem.active_mask,
        activation, out=out, implementation="triton", config=config, **kwargs,
    )  # fmt: skip
    assert got.data_ptr() == out.data_ptr()
    assert_close_to_reference(got, reference(problem, activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_half_active_nan_inactive_weights_and_stray_ids(dtype):
    problem = make_problem(6, 32, 32, 8, 2, dtype, num_active=4, stray_ids=True, device=DEVICE)
    _run_and_check(problem, dtype)


def test_gelu():
    problem = make_problem(4, 32, 48, 8, 2, torch.float32, num_active=5, stray_ids=True, device=DEVICE)
    _run_and_check(problem, torch.float32, activation="gelu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_token_top8_of_128(dtype):
    problem = make_problem(1, 32, 32, 128, 8, dtype, num_active=20, device=DEVICE)
    _run_and_check(problem, dtype)


def test_two_tokens_top8_of_128_with_budget_bound():
    problem = make_problem(2, 32, 32, 128, 8, torch.float32, num_active=12, stray_ids=True, device=DEVICE)
    _run_and_check(problem, torch.float32, max_active_experts=12)


def test_all_experts_active_mask_none():
    problem = make_problem(8, 32, 32, 4, 2, torch.float16, num_active=None, device=DEVICE)
    _run_and_check(problem, torch.float16)


def test_more_tokens_than_block_and_zero_token_experts():
    # 20 tokens x top-3 over 3 active experts: 20 pairs per expert (two blocks each), and three more
    # experts active with no token at all.
    problem = make_problem(20, 32, 32, 16, 3, torch.float32, num_active=3, device=DEVICE)
    mask = problem.active_mask.clone()
    idle = (~mask).nonzero().flatten()[:3]
    problem.w13[idle] = 0.5
    problem.w2[idle] = 0.5
    mask[idle] = True
    problem.active_mask = mask
    alignment = align_active_experts(problem.topk_ids, 16, 16, mask)
    assert int(alignment.num_blocks) > 3  # some expert spans two blocks
    _run_and_check(problem, torch.float32)


def test_default_config():
    problem = make_problem(5, 32, 32, 8, 2, torch.float32, num_active=6, stray_ids=True, device=DEVICE)
    config = choose_config(5, 2, 8, 32, 32, num_sms=sm_count(torch.device(DEVICE)))
    assert min(config.block_m, config.gate_up_block_k, config.down_block_k) >= 16
    _run_and_check(problem, torch.float32, config=config)


def test_wrong_expert_bound_drops_pairs_instead_of_writing_out_of_bounds():
    """A max_active_experts below the experts really used: the grid holds fewer blocks than needed.
    The output is exactly the MoE over the pairs that fit (the rest contribute 0), all written."""
    problem = make_problem(6, 32, 32, 16, 2, torch.float32, num_active=10, device=DEVICE)
    config = SMALL_CONFIG
    alignment = align_active_experts(problem.topk_ids, 16, config.block_m, problem.active_mask, max_active_experts=2)
    dropped = ~alignment.pair_is_computed.view(6, 2)
    assert dropped.any() and not dropped.all()
    out = poisoned_output(6, 32, torch.float32, DEVICE)
    fused_moe_active(problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights,
                     problem.active_mask, out=out, implementation="triton", config=config, max_active_experts=2)
    kept_weights = torch.where(dropped, torch.zeros_like(problem.topk_weights), problem.topk_weights)
    assert_close_to_reference(out, reference(problem, topk_weights=kept_weights), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stock_reimplementation_matches_reference(dtype):
    from lynx_sglang.kernels.moe.stock import fused_moe_stock

    problem = make_problem(6, 32, 32, 8, 2, dtype, num_active=None, device=DEVICE)
    config = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 16, "BLOCK_SIZE_K": 16, "GROUP_SIZE_M": 1}
    got = fused_moe_stock(problem.hidden, problem.w13, problem.w2, problem.topk_ids, problem.topk_weights, config=config)
    assert_close_to_reference(got, reference(problem), dtype)


def test_config_rejects_tiles_below_16():
    with pytest.raises(ValueError):
        MoeKernelConfig(block_m=8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wider_shapes_top6_of_64(dtype):
    problem = make_problem(8, 64, 64, 64, 6, dtype, num_active=16, stray_ids=True, device=DEVICE)
    config = MoeKernelConfig(block_m=16, gate_up_block_n=32, gate_up_block_k=32, down_block_n=32, down_block_k=32)
    _run_and_check(problem, dtype, config=config)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_larger_shapes_top8_of_128_default_config(dtype):
    problem = make_problem(16, 128, 96, 128, 8, dtype, num_active=48, stray_ids=True, device=DEVICE)
    config = choose_config(16, 8, 128, 128, 96, num_sms=sm_count(torch.device(DEVICE)))
    _run_and_check(problem, dtype, config=config)
