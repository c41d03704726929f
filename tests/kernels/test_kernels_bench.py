"""The benchmark runs end to end on tiny shapes (CPU torch path, and the Triton impls in the interpreter)."""

import math

import pytest
import torch

from lynx_sglang.tools.bench import kernels as bench


def test_cpu_mode_runs_the_embedded_shape_and_refuses_a_shape_it_lacks(capsys):
    rows = bench.run(bench.parse_args(["--cpu", "--shapes", "embedded", "--dtype", "fp32", "--copy-mib", "8",
                                       "--iters", "1", "--copies", "1", "--batches", "2", "--fractions", "100"]))
    assert [(row["shape"], row["experts"]) for row in rows] == [("embedded", 4)]
    with pytest.raises(SystemExit):
        bench.parse_args(["--cpu", "--shapes", "mixtral-8x7b"])
    assert "--shapes: mixtral-8x7b not among cpu-memory-bound, embedded" in capsys.readouterr().err


def test_cpu_tiny_benchmark_prints_table(capsys):
    rows = bench.run(bench.parse_args(["--tiny", "--copy-mib", "8", "--iters", "2", "--copies", "2", "--batches", "4"]))
    assert [(row["B"], row["active_pct"]) for row in rows] == [(4, 100), (4, 75), (4, 50), (4, 25)]
    assert all(row["ours_us"] > 0 for row in rows)
    # Fewer active experts: the experts with tokens and their bytes fall with the fraction; an expert's
    # bytes are its three matrices (gate, up, down: 3 * H * I) in bf16.
    assert [row["experts"] for row in rows] == [8, 6, 4, 2]
    shape = bench.TINY_SHAPE
    expert_bytes = 3 * shape.hidden * shape.intermediate * 2
    assert [row["active_mb"] for row in rows] == [e * expert_bytes / 1e6 for e in (8, 6, 4, 2)]
    # Each time relative to full is its own time over the 100 % time of the same batch.
    for row in rows:
        assert row["rel_to_full"] == pytest.approx(row["ours_us"] / rows[0]["ours_us"])
        assert row["gbs"] == pytest.approx(row["active_mb"] * 1e6 / (row["ours_us"] * 1e-6) / 1e9)
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "ours_us" in out
    assert "# ours = lynx_sglang.kernels.fused_moe_active (CPU torch path)" in out
    header = next(line for line in out.splitlines() if line.startswith("shape |")).split(" | ")
    printed = [line.split(" | ") for line in out.splitlines() if line.startswith("tiny |")]
    want = [["tiny", "4", f"{pct}%", str(experts)] for pct, experts in ((100, 8), (75, 6), (50, 4), (25, 2))]
    assert [cells[:4] for cells in printed] == want
    assert all(len(cells) == len(header) for cells in printed) and header[-1] == "x_grouped_mm"


def test_every_timed_implementation_computes_the_reference(monkeypatch):
    """What the table times is the MoE of its routing: each case's output (ours, and each comparison)
    agrees with the float64 reference run on the same inputs, for every fraction and weight copy."""
    from lynx_sglang.kernels import fused_moe_active

    outputs = {}

    def run_once(timer, cases):
        for name, closures in cases.items():
            outputs[name] = [closure() for closure in closures]
        return {name: 1e-6 for name in cases}

    def reference(device):
        return {"reference": ("float64", lambda *a: fused_moe_active(*a, implementation="reference"))}

    monkeypatch.setattr(bench.Timer, "median_seconds", run_once)
    bench.run(bench.parse_args(["--tiny", "--copy-mib", "1", "--iters", "1", "--copies", "2", "--batches", "3",
                                "--fractions", "100", "25", "--dtype", "fp32"]), reference)  # fmt: skip
    assert sorted(outputs) == [(f, name) for f in (25, 100) for name in ("grouped_mm", "ours", "reference")]
    for fraction in (100, 25):
        for copy in range(2):
            want = outputs[fraction, "reference"][copy].float()
            for name in ("ours", "grouped_mm"):
                torch.testing.assert_close(outputs[fraction, name][copy], want, rtol=1e-4, atol=1e-5)
        assert not torch.equal(outputs[100, "ours"][0], outputs[100, "ours"][1])  # each copy its own weights
    assert not torch.equal(outputs[100, "ours"][0], outputs[25, "ours"][0])  # each fraction its own routing


def test_routing_covers_the_active_set():
    topk_ids, _, mask, computed = bench.make_routing(16, bench.MODEL_SHAPES[1], 32, "cpu")
    assert computed == 32 and int(mask.sum()) == 32
    assert mask[topk_ids.long()].all()


@pytest.mark.parametrize("shape_index, num_active, num_tokens", [(2, 32, 32), (2, 16, 32), (1, 17, 32), (0, 3, 5)])
def test_a_tokens_experts_are_distinct_and_the_active_set_is_covered(shape_index, num_active, num_tokens):
    """Slices of back-to-back permutations gave some tokens one expert twice (3 of 32 at deepseek-v2-lite's
    64 experts top-6, half active), which no router does; SGLang's native MoE failed on it."""
    shape = bench.MODEL_SHAPES[shape_index]
    topk_ids, weights, mask, computed = bench.make_routing(num_tokens, shape, num_active, "cpu")
    assert topk_ids.shape == (num_tokens, shape.top_k) and mask[topk_ids.long()].all()
    assert all(len(set(row)) == shape.top_k for row in topk_ids.tolist())
    assert computed == num_active and torch.allclose(weights.sum(dim=1), torch.ones(num_tokens))


def test_fewer_active_experts_than_k_fill_the_spare_slots_as_the_remap_does():
    topk_ids, weights, _, computed = bench.make_routing(4, bench.MODEL_SHAPES[1], 3, "cpu")  # top-8
    assert computed == 3 and all(len(set(row)) == 3 for row in topk_ids.tolist())
    assert (topk_ids[:, 3:] == topk_ids[:, :1]).all() and (weights[:, 3:] == 0).all()


def test_extra_implementations_are_named_and_timed(capsys):
    def extra(device):
        return {"twice": ("ours called twice", lambda *a: [bench.grouped_mm_moe(*a[:5]) for _ in range(2)])}

    rows = bench.run(bench.parse_args(["--tiny", "--copy-mib", "8", "--iters", "2", "--copies", "1",
                                       "--batches", "2", "--fractions", "100"]), extra)  # fmt: skip
    assert math.isfinite(rows[0]["x_twice"]) and rows[0]["x_twice"] > 0
    assert "# twice = ours called twice" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="runs the kernels in Triton's interpreter; a GPU runs them in test_kernels_triton")
def test_triton_and_stock_in_the_interpreter(capsys):
    args = bench.parse_args(["--tiny", "--triton-on-cpu", "--copy-mib", "8", "--iters", "1", "--copies", "1",
                             "--batches", "2", "--fractions", "100", "50"])  # fmt: skip
    rows = bench.run(args)
    assert len(rows) == 2
    assert all(math.isfinite(row["x_stock"]) and row["x_stock"] > 0 for row in rows), "stock did not run"
    out = capsys.readouterr().out
    assert "# stock = lynx_sglang.kernels.moe.stock.fused_moe_stock" in out
    assert "fused_moe_active, implementation='triton' (Triton)" in out
