"""The benchmark runs end to end on tiny shapes (CPU torch path, and the Triton impls in the interpreter)."""

import math

import pytest
import torch

from lynx_sglang.kernels import bench


def test_cpu_tiny_benchmark_prints_table(capsys):
    rows = bench.run(bench.parse_args(["--tiny", "--copy-mib", "8", "--iters", "2", "--copies", "2", "--batches", "4"]))
    assert [row["active_pct"] for row in rows] == [100, 75, 50, 25]
    assert all(row["ours_us"] > 0 and row["active_mb"] > 0 for row in rows)
    # Fewer active experts: the experts with tokens and their bytes fall with the fraction.
    assert [row["experts"] for row in rows] == [8, 6, 4, 2]
    assert rows[0]["active_mb"] == pytest.approx(4 * rows[-1]["active_mb"])
    # Each time relative to full is its own time over the 100 % time of the same batch.
    for row in rows:
        assert row["rel_to_full"] == pytest.approx(row["ours_us"] / rows[0]["ours_us"])
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "ours_us" in out
    assert "# ours = lynx_sglang.kernels.fused_moe_active (CPU torch path)" in out


def test_routing_covers_the_active_set():
    topk_ids, _, mask, computed = bench.make_routing(16, bench.MODEL_SHAPES[1], 32, "cpu")
    assert computed == 32 and int(mask.sum()) == 32
    assert mask[topk_ids.long()].all()


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
