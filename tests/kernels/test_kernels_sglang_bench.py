"""`lynx-sglang bench kernels` compares with SGLang's own MoE: the call convention gives the right
numbers, and the table says which SGLang implementation ran (imports SGLang, so marked slow)."""

import math

import pytest
import torch

from kernels_testlib import assert_close_to_reference, make_problem, reference

pytestmark = pytest.mark.slow


def test_sglang_cpu_moe_matches_the_reference():
    from lynx_sglang.tools.bench.sglang_moe import sglang_moe_forward_native

    problem = make_problem(6, 32, 48, 8, 2, torch.float32, num_active=None)
    got = sglang_moe_forward_native()(problem.hidden, problem.w13, problem.w2, problem.topk_ids,
                                      problem.topk_weights, None)  # fmt: skip
    assert_close_to_reference(got, reference(problem), torch.float32)


def test_kernel_bench_names_sglang_and_times_it(capsys):
    from lynx_sglang.tools.bench import kernels as bench
    from lynx_sglang.tools.bench import sglang_moe as kernel_bench

    args = bench.parse_args(["--tiny", "--copy-mib", "8", "--iters", "2", "--copies", "1", "--batches", "4",
                             "--fractions", "100", "50"])  # fmt: skip
    rows = bench.run(args, kernel_bench.sglang_implementations)
    assert all(math.isfinite(row["x_sglang"]) and row["x_sglang"] > 0 for row in rows)
    assert "# sglang = sglang.srt.layers.moe.fused_moe_native.moe_forward_native" in capsys.readouterr().out
