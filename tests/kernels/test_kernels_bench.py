"""The benchmark runs end to end on tiny shapes (CPU torch path, and the Triton impls in the interpreter)."""

import pytest

from lynx_sglang.kernels import bench


def test_cpu_tiny_benchmark_prints_table(capsys):
    rows = bench.run(bench.parse_args(["--tiny", "--copy-mib", "8", "--iters", "2", "--copies", "2", "--batches", "4"]))
    assert [row["active_pct"] for row in rows] == [100, 75, 50, 25]
    assert all(row["ours_us"] > 0 and row["active_mb"] > 0 for row in rows)
    assert rows[0]["rel_to_full"] == 1.0
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "ours_us" in out


def test_routing_covers_the_active_set():
    topk_ids, _, mask, computed = bench.make_routing(16, bench.MODEL_SHAPES[1], 32, "cpu")
    assert computed == 32 and int(mask.sum()) == 32
    assert mask[topk_ids.long()].all()


@pytest.mark.slow
def test_triton_and_stock_in_the_interpreter(capsys):
    args = bench.parse_args(["--tiny", "--triton-on-cpu", "--copy-mib", "8", "--iters", "1", "--copies", "1",
                             "--batches", "2", "--fractions", "100", "50"])  # fmt: skip
    rows = bench.run(args)
    assert len(rows) == 2 and "x_stock" in rows[0]
    assert rows[0]["x_stock"] == rows[0]["x_stock"]  # not NaN: the stock implementation ran
