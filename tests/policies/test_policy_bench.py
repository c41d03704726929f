"""`lynx-sglang bench policies` end to end on tiny shapes: CPU eager and fast-path tables, the target
line, and launches per call counted with the Triton kernels in the interpreter (no GPU here)."""

import re

import pytest
import torch

from lynx_sglang.cli import main as cli_main
from lynx_sglang.kernels.routing import fused_available

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only report")


def table_rows(out: str, title: str) -> tuple[list[str], dict[str, list[str]]]:
    """(the header's columns, {policy: its row's cells}) of one printed table: the rows up to the first
    blank or comment line."""
    lines = out[out.index(f"## {title}"):].splitlines()
    rows = {}
    for line in lines[3:]:
        if not line.strip() or line.startswith("#"):
            break
        rows[line.split()[0]] = line.split()
    return lines[1].split(), rows


@pytest.mark.skipif(not (fused_available("cpu") and fused_available("triton")), reason="needs both fused paths")
def test_bench_policies_reports_cpu_tables_and_interpreter_launch_counts(capsys):
    code = cli_main(["bench", "policies", "--repeats", "2", "--policies", "lynx,random,baseline",
                     "--tokens", "1,4", "--experts", "8"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "no CUDA device here" in out and "Triton's interpreter" in out
    for title in ("torch reference (CPU eager)", "fused path: CPU fast path (C++ op)"):
        header, rows = table_rows(out, title)
        assert header == ["policy", "E", "k", "T=1", "T=4"], title  # a column per T asked for
        assert list(rows) == ["lynx", "random", "baseline"], title  # a row per policy asked for, in order
        assert all(row[1:3] == ["8", "2"] and len(row) == 5 for row in rows.values()), rows
    # The verdict follows from the printed cells and the target: the worst lynx cell against 150 us.
    _, fused = table_rows(out, "fused path: CPU fast path (C++ op)")
    worst = max(float(cell) for cell in fused["lynx"][3:])
    target = re.search(r"# target CPU fast path, one core: lynx, worst cell at E <= 128, T <= 256: "
                       r"([\d.]+) us \(target 150 us\): (met|MISSED)", out)  # fmt: skip
    assert target and float(target.group(1)) == worst
    assert target.group(2) == ("met" if worst <= 150 else "MISSED")
    # Launches per call, at T 1 / T 4, as docs/policies.md says: a fused rule is two Triton launches and
    # no torch op; a policy deciding in torch adds its own ops to the shared stages' two launches; a
    # pass-through launches nothing of Triton and the same torch ops as its reference. At T 1 with the real
    # row count a device tensor (as under CUDA graphs) a policy that keeps a lone row adds the torch ops
    # that keep it (the server launches nothing for such a row: scheduler/lone_row.py).
    launches = {line.split()[0]: line.split()[3:] for line in out[out.index("## launches per layer call"):].splitlines()
                if re.match(r"(lynx|random|baseline) ", line)}  # fmt: skip
    assert launches["lynx"][4:7] == ["2", "+", "0"] and launches["lynx"][:2] == ["2", "+"] and int(launches["lynx"][2]) > 0
    random_ops = launches["random"][:7]
    assert random_ops[:2] == ["2", "+"] and random_ops[4:6] == ["2", "+"] and int(random_ops[2]) > 0
    baseline = launches["baseline"]
    assert baseline[:2] == ["0", "+"] and baseline[2] == baseline[7] and baseline[6] == baseline[9], baseline


def test_the_target_verdict_follows_the_worst_cell_inside_the_target_shapes():
    from lynx_sglang.tools.bench.policies import Table, target_line

    table = Table("t", [1, 256, 512])
    table.row("lynx", 128, [10.0, 150.0, 900.0])  # T 512 is outside the target's shapes
    table.row("lynx", 256, [900.0, 900.0, 900.0])  # so is E 256
    table.row("oea", 64, [900.0, 900.0, 900.0])  # and another policy
    met = target_line("x", table, 150.0)
    assert met.endswith("lynx, worst cell at E <= 128, T <= 256: 150.0 us (target 150 us): met")
    assert target_line("x", table, 149.9).endswith("150.0 us (target 150 us): MISSED")
    table.row("lynx", 8, [float("nan"), 1.0, 1.0])  # a failed cell
    assert "lynx FAILED in a cell" in target_line("x", table, 150.0)
    assert "lynx not measured" in target_line("x", Table("t", [1]), 150.0)


def test_bench_policies_with_a_biased_routers_ids_says_so(capsys):
    code = cli_main(["bench", "policies", "--repeats", "2", "--policies", "lynx", "--tokens", "4", "--experts", "8",
                     "--ids", "biased", "--no-launch-counts"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "model ids: a biased router (not the logits top-k)" in out
    assert re.search(r"^lynx +8 +2 +\d+\.\d", out, re.MULTILINE)


def test_a_biased_routers_ids_differ_from_the_softmax_top_k():
    from lynx_sglang.tools.bench.batches import make_batch

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


@pytest.mark.parametrize("num_experts, top_k, groups", [(256, 8, (8, 4)), (64, 8, (8, 4)), (60, 8, (4, 2)),
                                                       (20, 8, (4, 2)), (12, 8, (4, 3)), (6, 2, (2, 1))])
def test_the_grouped_router_splits_any_expert_count_it_can_and_leaves_a_token_its_k(num_experts, top_k, groups):
    from lynx_sglang.tools.bench.batches import expert_groups

    assert expert_groups(num_experts, top_k) == groups
    assert groups[1] * (num_experts // groups[0]) >= top_k


def test_a_grouped_router_an_expert_count_cannot_take_is_one_line(capsys):
    """A fixed 8 groups, 4 kept (4 and 2 below 16 experts) crashed with a traceback at 6, 20 or 60 experts."""
    with pytest.raises(SystemExit) as ended:
        cli_main(["bench", "policies", "--experts", "8,3", "--router", "biased-grouped-sigmoid"])
    assert ended.value.code == 2
    assert capsys.readouterr().err == ("lynx-sglang bench policies: error: --router biased-grouped-sigmoid: 3 experts "
                                       "do not split into 2, 4 or 8 equal groups of two or more\n")


class RecordingTimer:
    """A timer that runs each call once, keeps it, and reports 1.0, 2.0, ... in the order it was asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, call, repeats):
        call()
        self.calls.append(call)
        return float(len(self.calls))


@pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
def test_per_launch_table_splits_each_fused_rule_into_its_two_launches(capsys, monkeypatch):
    """The table's code path with the launches interpreted on the host (on a GPU: graph replay): a cell
    per T asked for, launch 1 then launch 2 of the same call, and the two launches timed route as the
    torch reference does."""
    from lynx_sglang.kernels.routing import triton_plan
    from lynx_sglang.policies import get_policy
    from lynx_sglang.tools.bench.policies import parse_args, per_launch_table

    plans, plan_triton = [], triton_plan.plan_triton

    def recording_plan(call, config=None):
        plans.append((call, plan_triton(call, config)))
        return plans[-1][1]

    monkeypatch.setattr(triton_plan, "plan_triton", recording_plan)  # per_launch_table imports it when it runs
    args = parse_args(["--device", "cpu", "--repeats", "1", "--policies", "lynx,lynx-v1", "--tokens", "1,5",
                       "--experts", "8"])  # fmt: skip
    timer = RecordingTimer()
    per_launch_table(args, torch.device("cpu"), torch.float32, timer)
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if re.match(r"lynx(-v1)? ", line)}  # fmt: skip
    assert rows["lynx"] == ["8", "2", "1.0", "/", "2.0", "3.0", "/", "4.0"]  # (launch 1 / launch 2) per T
    assert rows["lynx-v1"] == ["8", "2", "-", "-"]  # decides in torch: not a pair of launches
    assert [timed for _, plan in plans for timed in (plan.rows, plan.decide)] == timer.calls
    policy = get_policy("lynx", num_experts=8, top_k=2)
    for call, plan in plans:
        want = policy.select(call.logits, call.topk_ids, call.topk_weights, call.num_real, implementation="torch")
        assert torch.equal(plan.result.topk_ids, want.topk_ids.to(plan.result.topk_ids.dtype))
        assert torch.equal(plan.result.active_mask, want.active_mask)
        torch.testing.assert_close(plan.result.topk_weights, want.topk_weights, rtol=1e-6, atol=0)


@pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
def test_layer_launch_table_times_the_servers_bookkeeping(capsys, monkeypatch):
    """A row per E asked for, a cell per T, and each launch timed adds to its table what the torch
    reference adds for the same call."""
    from lynx_sglang.kernels.bookkeeping import finalize_torch, triton_launch
    from lynx_sglang.kernels.bookkeeping.layout import FIELDS
    from lynx_sglang.tools.bench.policies import layer_launch_table, parse_args

    launched = []

    def recording_finalize(*args, **kwargs):
        launched.append((args, kwargs))
        return finalize_triton(*args, **kwargs)

    finalize_triton = triton_launch.finalize_triton
    monkeypatch.setattr(triton_launch, "finalize_triton", recording_finalize)  # imported when the table runs
    args = parse_args(["--device", "cpu", "--repeats", "1", "--tokens", "1,5", "--experts", "8,16"])
    layer_launch_table(args, torch.device("cpu"), torch.float32, RecordingTimer())
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("layer ")]
    assert rows == [["layer", "8", "2", "1.0", "2.0"], ["layer", "16", "8", "3.0", "4.0"]]
    assert [(a[0].shape, a[1].shape[1]) for a, _ in launched] == [((1, 8), 2), ((5, 8), 2), ((1, 16), 8), ((5, 16), 8)]
    for args, kwargs in launched:  # each timed once: its table holds one call's figures
        want = torch.zeros_like(kwargs["table_row"])
        finalize_torch(*args, mask=True, table_row=want, step_fell_back=torch.zeros((), dtype=torch.float64))
        torch.testing.assert_close(kwargs["table_row"], want, rtol=1e-5, atol=1e-7)
        figures = dict(zip(FIELDS, want.tolist()))
        assert figures["steps"] == 1 and figures["tokens"] == args[0].shape[0] and figures["fallbacks"] == 0


def test_cpu_cells_report_the_lowest_median_of_their_rounds(capsys, monkeypatch):
    """Rounds alternate over a row's cells; each cell shows its lowest round (interference only adds)."""
    from lynx_sglang.tools.bench import policies as bench
    from lynx_sglang.tools.bench.policies import CPU_ROUNDS, Table, parse_args, run_table

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
    from lynx_sglang.tools.bench import policies as bench
    from lynx_sglang.tools.bench.policies import Table, parse_args, run_table

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


@pytest.mark.parametrize("flags, message", [(["--experts", "0"], "argument --experts: '0' is not a positive integer"),
                                            (["--tokens", "1,x"], "argument --tokens: 'x' is not an integer"),
                                            (["--repeats", "-2"], "argument --repeats: '-2' is not a positive")])
def test_bench_flags_take_positive_integers_only(flags, message, capsys):
    from lynx_sglang.tools.bench.bookkeeping import main
    from lynx_sglang.tools.bench.policies import parse_args

    for parse in (lambda: parse_args(["--device", "cpu", *flags]), lambda: main(flags)):
        with pytest.raises(SystemExit) as stopped:
            parse()
        assert stopped.value.code == 2 and message in capsys.readouterr().err
