"""`lynx-sglang bench policies` end to end on tiny shapes: CPU eager and fast-path tables, the target
line, and launches per call counted with the Triton kernels in the interpreter (no GPU here)."""

import re

import pytest
import torch

from lynx_sglang.cli import main as cli_main
from lynx_sglang.kernels.routing import fused_available

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only report")


@pytest.mark.skipif(not (fused_available("cpu") and fused_available("triton")), reason="needs both fused paths")
def test_bench_policies_reports_cpu_tables_and_interpreter_launch_counts(capsys):
    code = cli_main(["bench", "policies", "--repeats", "2", "--policies", "lynx,random,baseline",
                     "--tokens", "1,4", "--experts", "8"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "no CUDA device here" in out and "Triton's interpreter" in out
    assert "## torch reference (CPU eager)" in out and "## fused path: CPU fast path (C++ op)" in out
    assert re.search(r"# target CPU fast path, one core: lynx, worst cell .*: (met|MISSED)", out)
    launches = {line.split()[0]: line for line in out[out.index("## launches per layer call"):].splitlines()
                if re.match(r"(lynx|random|baseline) ", line)}  # fmt: skip
    assert launches["lynx"].split()[3:8] == ["2", "+", "0", "/", "2"]  # two Triton launches, no torch op
    assert launches["random"].split()[3:5] == ["2", "+"]  # decide in torch, shared stages fused
    assert launches["baseline"].split()[3:5] == ["0", "+"]  # pass-through: no fused launch


def test_bench_policies_with_a_biased_routers_ids_says_so(capsys):
    code = cli_main(["bench", "policies", "--repeats", "2", "--policies", "lynx", "--tokens", "4", "--experts", "8",
                     "--ids", "biased", "--no-launch-counts"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "model ids: a biased router (not the logits top-k)" in out
    assert re.search(r"^lynx +8 +2 +\d+\.\d", out, re.MULTILINE)


def test_a_biased_routers_ids_differ_from_the_softmax_top_k():
    from lynx_sglang.policies.bench import make_batch

    logits, router_ids, _ = make_batch(64, 128, 8, "cpu", torch.float32)
    same_logits, biased_ids, weights = make_batch(64, 128, 8, "cpu", torch.float32, ids="biased")
    assert torch.equal(logits, same_logits)
    assert torch.equal(router_ids, logits.topk(8, dim=-1).indices)
    assert not torch.equal(biased_ids.sort(dim=-1).values, router_ids.sort(dim=-1).values)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(64))


def test_per_launch_times_need_a_gpu(capsys):
    with pytest.raises(SystemExit):
        cli_main(["bench", "policies", "--per-launch"])
    assert "--per-launch times the Triton launches on a GPU: it needs a CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
def test_per_launch_table_splits_each_fused_rule_into_its_two_launches(capsys):
    """The table's code path with the launches interpreted and timed on the host (on a GPU: graph replay)."""
    from lynx_sglang.policies.bench import parse_args, per_launch_table, time_cpu

    args = parse_args(["--device", "cpu", "--repeats", "1", "--policies", "lynx,lynx-v1", "--tokens", "1,5",
                       "--experts", "8"])  # fmt: skip
    per_launch_table(args, torch.device("cpu"), torch.float32, time_cpu)
    rows = {line.split()[0]: line.split()[3:] for line in capsys.readouterr().out.splitlines()
            if re.match(r"lynx(-v1)? ", line)}  # fmt: skip
    assert len(rows["lynx"]) == 6 and rows["lynx"][1::3] == ["/", "/"]  # launch 1 / launch 2, per T
    assert all(float(value) > 0 for value in rows["lynx"][0::3] + rows["lynx"][2::3])
    assert rows["lynx-v1"] == ["-", "-"]  # decides in torch: not a pair of launches


@pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
def test_layer_launch_table_times_the_servers_bookkeeping(capsys):
    from lynx_sglang.policies.bench import layer_launch_table, parse_args, time_cpu

    args = parse_args(["--device", "cpu", "--repeats", "1", "--tokens", "1,5", "--experts", "8,16"])
    layer_launch_table(args, torch.device("cpu"), torch.float32, time_cpu)
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("layer ")]
    assert [row[1:3] for row in rows] == [["8", "2"], ["16", "8"]]
    assert all(float(value) > 0 for row in rows for value in row[3:]) and all(len(row) == 5 for row in rows)


def test_cpu_cells_report_the_lowest_median_of_their_rounds(capsys, monkeypatch):
    """Rounds alternate over a row's cells; each cell shows its lowest round (interference only adds)."""
    from lynx_sglang.policies import bench
    from lynx_sglang.policies.bench import CPU_ROUNDS, Table, parse_args, run_table

    monkeypatch.setattr(bench, "CPU_TABLE_SECONDS", 0.0)  # the minimum of rounds only

    args = parse_args(["--device", "cpu", "--repeats", "1", "--policies", "lynx", "--tokens", "1,4", "--experts", "8"])
    medians = iter([90.0, 40.0, 30.0, 70.0, 60.0, 50.0][: 2 * CPU_ROUNDS])  # T=1, T=4, T=1, T=4, ...

    def timer(call, repeats):
        call()
        return next(medians)

    run_table(Table("t", args.tokens), args, torch.device("cpu"), torch.float32, timer, "cpu")
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lynx")][0]
    assert CPU_ROUNDS == 3 and row.split()[3:] == ["30.0", "40.0"]


def test_cpu_rounds_go_over_the_table_until_they_span_its_seconds(capsys, monkeypatch):
    """A slow spell of the machine can outlast three quick rounds: the rounds go over every row of the
    table, again and again until they span CPU_TABLE_SECONDS, and each cell reports its lowest round."""
    from lynx_sglang.policies import bench
    from lynx_sglang.policies.bench import Table, parse_args, run_table

    clock = [0.0]
    monkeypatch.setattr(bench, "clock", lambda: clock[0])
    args = parse_args(["--device", "cpu", "--repeats", "1", "--policies", "lynx,oea", "--tokens", "1",
                       "--experts", "8"])  # fmt: skip
    medians = {"lynx": iter([90.0, 80.0, 85.0, 70.0, 60.0, 75.0, 10.0]),
               "oea": iter([50.0, 55.0, 40.0, 45.0, 30.0, 35.0, 5.0])}
    calls = []

    def timer(call, repeats):
        name = "lynx" if len(calls) % 2 == 0 else "oea"  # the table's cells, round after round
        call()
        calls.append((name, clock[0]))
        clock[0] += 0.25  # each cell takes a quarter of a second: a round of the table, half a second
        return next(medians[name])

    run_table(Table("t", args.tokens), args, torch.device("cpu"), torch.float32, timer, "cpu")
    rows = {line.split()[0]: line.split()[3:] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("lynx", "oea"))}  # fmt: skip
    # rounds start at 0, 0.5, 1.0, 1.5, 2.0, 2.5 s; none at 3 s
    assert bench.CPU_TABLE_SECONDS == 3.0 and [n for n, _ in calls] == ["lynx", "oea"] * 6
    assert rows == {"lynx": ["60.0"], "oea": ["30.0"]}
