"""The Triton kernels (the active-expert MoE and the fused routing decision) compile for an H100/H200
(sm_90) at the tile sizes the code picks for the benchmark shapes, and fit in its shared memory: checked
ahead of time, no GPU needed."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_kernels_compile_for_hopper():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the interpreter would replace the kernels with Python
    proc = subprocess.run(
        [sys.executable, "-m", "lynx_sglang.tools.hopper_compile", "--quick", "--dtypes", "bf16", "fp32"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 failed" in proc.stdout
    assert "FAIL" not in proc.stdout
    for kernel in ("_gate_up_activation_kernel", "routing_rows_kernel", "routing_decide_kernel"):
        assert f"ok   bf16 {kernel}" in proc.stdout and f"ok   fp32 {kernel}" in proc.stdout, kernel
    for kernel in ("routing_rows_kernel", "routing_decide_kernel"):  # also at the largest shape (T 512, E 256)
        assert re.search(rf"ok   (bf16|fp32) {kernel} \(.*T=512 E=256", proc.stdout), kernel


def test_real_calls_compile_for_hopper():
    """The launches as real calls make them (Triton's specialisation on alignment and divisibility),
    at the shapes where Triton 3.6 crashed on an H100 before the kernels avoided it: top-8 of 64 at
    one row (LLVM's SLP vectorizer), top-1 of 64 at five rows (the scan lowering). Each call compiles
    in a child process, so a compiler abort is reported as that call's failure."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lynx_sglang.tools.hopper_compile", "--calls", "--quick", "--dtypes", "bf16",
         "--workers", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "12 calls compiled for sm_90, 0 failed" in proc.stdout, proc.stdout[-3000:]
    assert "ok   call bf16 lynx, E=64 k=8 T=1 budget" in proc.stdout
    assert "ok   call bf16 lynx, E=64 k=1 T=5 budget" in proc.stdout


def test_fp32_tiles_are_shrunk_to_fit_shared_memory():
    from lynx_sglang.kernels.moe.config import SHARED_MEMORY_BUDGET, MoeKernelConfig, choose_config

    for element_size in (2, 4):
        cfg = choose_config(128, 8, 128, 2048, 768, num_sms=132, element_size=element_size)
        stages = MoeKernelConfig.num_stages - 1
        gate_up = stages * (cfg.block_m * cfg.gate_up_block_k + 2 * cfg.gate_up_block_k * cfg.gate_up_block_n)
        assert gate_up * element_size <= SHARED_MEMORY_BUDGET, cfg


def test_sass_report_counts_what_each_launch_compiles_to():
    """`sass_report` disassembles both launches (Triton's own nvdisasm) and attributes instructions to
    the functions of kernels/routing/triton_*.py: lynx's launch 2 has the batch order (sorted with picks 2, ranked
    by counting with picks 0) and a loop over every row's bit masks (picks 2), which picks 0 replaces by
    a wider loop over every row's bins."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    outputs = {}
    for picks in (0, 2):
        proc = subprocess.run(
            [sys.executable, "-m", "lynx_sglang.tools.sass_report", "--experts", "64", "--top-k", "4", "--tokens",
             "40", "--set", f"picks={picks}", "--top", "30"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs[picks] = proc.stdout
    for picks, out in outputs.items():
        launch = re.search(r"launch 2 \(routing_decide_kernel\): (\d+) instructions, (\d+) registers", out)
        assert launch and int(launch.group(1)) > 500 and 16 <= int(launch.group(2)) <= 255, out
        waits = re.search(r"launch 2 .*\n  barriers (\d+), shared-memory stores (\d+), loads (\d+)", out)
        assert waits and 0 < int(waits.group(1)) < int(launch.group(1)), out  # launch 2 reduces across warps
        order = "sort_desc" if picks == 2 else "rank_desc"
        assert re.search(rf"by function: .*{order} \d+", out), out
    loop = lambda out, name: max(int(n) for n in re.findall(rf"{name} (\d+)", out.split("loop bodies:")[-1]))  # noqa: E731
    assert loop(outputs[2], "lynx_picks_by_bits") < loop(outputs[0], "lynx_picks_gathered"), outputs
