"""`bench serve --profile`: the split of a profiler trace by category (the trace itself comes from
SGLang's profiler in tests/integration/test_bench_serve.py)."""

import pytest

from lynx_sglang.tools.bench.profile import category_of, own_times, shares_line, summarize_trace


@pytest.mark.parametrize("name, category", [
    ("fused_moe_kernel", "expert_gemm"), ("_gate_up_activation_kernel", "expert_gemm"),
    ("_moe_sum_reduce_kernel", "expert_gemm"), ("_align_kernel", "moe_align"),
    ("routing_decide_kernel", "lynx_routing"), ("routing_rows_kernel", "lynx_routing"),
    ("_layer_kernel", "lynx_bookkeeping"), ("_router_triton_kernel", "model_routing"),
    ("void at::native::(anonymous namespace)::softmax_warp_forward<float>", "model_routing"),
    ("_fwd_grouped_kernel_stage1", "attention"), ("_fwd_kernel_stage2", "attention"),
    ("nvjet_tst_128x64_64x4_1x2_h_bz_coopA_NNT", "dense_gemm"), ("sm90_xmma_gemm_bf16bf16", "dense_gemm"),
    ("aten::mm", "dense_gemm"), ("void at::native::vectorized_elementwise_kernel<4>", "other"),
    ("_moe_align_small_numel_kernel", "moe_align"),
    ("cutlass3x_sm90_tensorop_s64x128x16gemm_bf16_bf16_f32_bf16_bf16_128x128x64_1x1x1_0_tnn_align8", "dense_gemm"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy_aligned16_contig<int>", "other"),
])  # fmt: skip
def test_kernel_and_operator_names_fall_in_their_category(name, category):
    assert category_of(name) == category


def kernel(name, ts, dur):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": 7}


def step(ts, dur, batch=32, mode="DECODE"):
    return {"ph": "X", "cat": "user_annotation", "name": f"step[{mode} bs={batch}]", "ts": ts, "dur": dur, "tid": 1}


def test_gpu_kernels_split_the_span_of_the_recorded_decode_steps_with_the_idle_time_between_them():
    trace = {"traceEvents": [step(0, 5), step(50, 5), kernel("fused_moe_kernel", 0, 60),
                             kernel("_fwd_kernel_stage1", 70, 20), kernel("nvjet_tst", 90, 10),
                             {"ph": "i", "name": "marker", "ts": 5}]}  # fmt: skip
    summary = summarize_trace(trace)
    assert summary["source"] == "kernels" and (summary["steps_recorded"], summary["batch_sizes"]) == (2, [32])
    assert summary["step_ms"] == 0.05  # 100 us of kernels' span over 2 steps
    assert summary["shares"]["expert_gemm"] == 0.6 and summary["shares"]["attention"] == 0.2
    assert summary["shares"]["dense_gemm"] == 0.1 and summary["shares"]["idle"] == 0.1
    assert summary["ms_per_step"]["expert_gemm"] == 0.03
    assert sum(summary["ms_per_step"].values()) == pytest.approx(summary["step_ms"])
    assert summary["top"][0] == {"name": "fused_moe_kernel", "category": "expert_gemm", "share": 0.6}
    assert shares_line(summary["shares"]).startswith("expert_gemm 60% · attention 20%")


def test_cpu_operators_count_their_own_time_inside_the_decode_steps_and_the_rest_is_idle():
    def op(name, ts, dur, tid=1):
        return {"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid}

    nested = [op("aten::linear", 0, 100), op("aten::mm", 10, 70), op("aten::add", 85, 10), op("aten::mm", 0, 50, tid=2)]
    assert sorted(own_times(nested)) == [("aten::add", 10.0), ("aten::linear", 20.0), ("aten::mm", 50.0), ("aten::mm", 70.0)]
    # a 200 us decode step holds the linear (100 us of operators); a prefill and an operator outside count for nothing
    events = [step(0, 200, batch=4), step(300, 100, mode="EXTEND"), op("aten::linear", 0, 100), op("aten::mm", 10, 70),
              op("aten::add", 85, 10), op("aten::mm", 300, 50)]  # fmt: skip
    summary = summarize_trace({"traceEvents": events})
    assert summary["source"] == "cpu operators" and (summary["steps_recorded"], summary["batch_sizes"]) == (1, [4])
    assert summary["step_ms"] == 0.2
    assert summary["shares"]["dense_gemm"] == 0.45 and summary["shares"]["other"] == 0.05
    assert summary["shares"]["idle"] == 0.5


def test_overlapping_streams_leave_idle_only_where_no_kernel_runs_and_a_gpu_trace_needs_kernels():
    shared = dict(kernel("fused_moe_kernel", 10, 30), tid=8)  # another stream, beside the routed experts
    trace = {"traceEvents": [step(0, 5), kernel("fused_moe_kernel", 0, 40), shared, kernel("nvjet_tst", 60, 40)]}
    summary = summarize_trace(trace, on_gpu=True)
    assert summary["shares"]["idle"] == 0.2 and summary["shares"]["expert_gemm"] == 0.7
    with pytest.raises(ValueError, match="no GPU kernels"):
        summarize_trace({"traceEvents": [step(0, 5), {**kernel("aten::mm", 0, 5), "cat": "cpu_op"}]}, on_gpu=True)


def test_a_trace_without_decode_steps_says_the_requests_ended_first():
    with pytest.raises(ValueError, match=r"no decode step: the requests ended before the profile began \(raise --output-tokens\)"):
        summarize_trace({"traceEvents": [kernel("fused_moe_kernel", 0, 5), step(0, 5, mode="EXTEND")]})
