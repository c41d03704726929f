"""`lynx-sglang ab` and `sweep` end to end against one real server on the embedded model: report
files, the statistics of an A/A run, a pruning arm, resume, and the one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from live_server import RunningServer

from lynx_sglang.local_server import free_port

pytestmark = pytest.mark.slow

TOKEN = "experiments-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--lynx-policy", "baseline", "--lynx-admin-token", TOKEN],
                        tmp_path_factory.mktemp("experiments") / "server.log")
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def lynx_sglang(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "lynx_sglang.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def against(server):
    return ["--url", server.url, "--admin-token", TOKEN]


def test_a_a_run_has_zero_difference_and_p_one(server, tmp_path):
    out = tmp_path / "aa"
    done = lynx_sglang("ab", *against(server), "--a", "baseline", "--b", "baseline", "--n", "48",
                       "--concurrency", "1,8", "--blocks", "2", "--bootstrap", "300", "--out", str(out))
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and [c["concurrency"] for c in results["comparisons"]] == [1, 8]
    for comparison in results["comparisons"]:
        assert comparison["items"] == 48
        assert comparison["accuracy_diff"] == 0 and comparison["mcnemar_p"] == 1
        low, high = comparison["accuracy_diff_ci"]
        assert low < 0 < high
        assert comparison["expert_bytes_per_decode_token_a"] > 0 and comparison["tpot_median_ms_a"] > 0
    for name in ("report.md", "measurements.jsonl", "accuracy_vs_expert_bytes.png", "experts_per_layer.png", "latency.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "# A/B: A = baseline (A), B = baseline (B)" in report and "no significant difference" in report
    assert "A = baseline (A)" in done.stdout  # the summary table in the terminal


def test_pruning_arm_reads_fewer_expert_bytes_and_per_task_figures_add_up(server, tmp_path):
    out = tmp_path / "ab"
    done = lynx_sglang("ab", *against(server), "--a", "baseline", "--b", "budget", "--b-param", "num_experts_kept=2",
                       "--n", "64", "--concurrency", "16", "--blocks", "2", "--bootstrap", "300", "--out", str(out))
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    (comparison,) = results["comparisons"]
    assert comparison["expert_bytes_per_decode_token_b"] < comparison["expert_bytes_per_decode_token_a"]
    by_task = comparison["by_task"]
    assert set(by_task) == {"add", "sub", "mul", "rev"} and sum(t["items"] for t in by_task.values()) == 64
    summary_b = next(s for s in results["summaries"] if s["arm"] == "budget:num_experts_kept=2")
    assert all(layer["distinct_experts_after"] <= 2 for layer in summary_b["server"]["layers"])
    assert summary_b["server"]["tokens_rerouted_fraction"] > 0
    assert results["config"]["arms"][1]["params"] == {"num_experts_kept": 2}
    assert results["versions"]["model"]["url"] == server.url


def test_a_jsonl_task_over_the_chat_endpoint_is_scored_per_task(server, tmp_path):
    task = tmp_path / "own.jsonl"
    lines = [{"prompt": f"{a}+{b}=", "answer": a + b, "task": "sums"} for a, b in ((12, 30), (7, 8), (101, 220))]
    lines += [{"prompt": f"r{digits}=", "answer": digits[::-1], "task": "reversals"} for digits in ("1234", "905", "77801")]
    task.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "own"
    done = lynx_sglang("ab", *against(server), "--b", "anchor", "--b-param", "fill_to_k=false", "--task", str(task),
                       "--endpoint", "chat", "--score", "number", "--n", "6", "--concurrency", "3", "--blocks", "2",
                       "--bootstrap", "200", "--out", str(out))
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    (comparison,) = results["comparisons"]
    assert {task: t["items"] for task, t in comparison["by_task"].items()} == {"sums": 3, "reversals": 3}
    assert comparison["accuracy_a"] > 0.5  # the embedded model gets most of these right through its chat template
    assert results["config"]["endpoint"] == "chat" and results["config"]["score"] == "number"
    assert results["config"]["arms"][1]["params"] == {"fill_to_k": False}


def test_sweep_draws_the_frontier_and_resumes(server, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", *against(server), "--policies", "topn:num_experts_kept=2,8;oea:k0=1", "--n", "32",
            "--concurrency", "16", "--blocks", "2", "--bootstrap", "200", "--out", str(out)]
    done = lynx_sglang(*args)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    (frontier,) = results["frontiers"]
    points = {p["arm"]: p for p in frontier["points"]}
    assert set(points) == {"baseline", "topn:num_experts_kept=2", "topn:num_experts_kept=8", "oea:k0=1"}
    assert points["topn:num_experts_kept=2"]["distinct_experts"] <= 2
    # Which arm reads the fewest bytes depends on how the steps batched (oea:k0=1 can beat topn=2 on
    # the small tail batches): the cheapest arm is on the frontier, and every arm off it is dominated.
    cheapest = min(points.values(), key=lambda p: (p["bytes_fraction"], -p["accuracy"]))
    assert cheapest["on_frontier"], points
    for point in points.values():
        dominated = any(q["bytes_fraction"] <= point["bytes_fraction"] and q["accuracy"] >= point["accuracy"]
                        and (q["bytes_fraction"], q["accuracy"]) != (point["bytes_fraction"], point["accuracy"])
                        for q in points.values() if q["on_frontier"])  # fmt: skip
        assert point["on_frontier"] != dominated, (point, points)
    assert (out / "frontier_c16.png").stat().st_size > 0
    assert "## Concurrency 16" in (out / "report.md").read_text()
    blocks = (out / "measurements.jsonl").read_text().count('"kind":"block"')
    assert blocks == 4 * 2

    # Drop the last block as a crash would, then resume: only that block is measured again.
    lines = (out / "measurements.jsonl").read_text().splitlines()
    (out / "measurements.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    resumed = lynx_sglang(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "measurements.jsonl").read_text().count('"kind":"block"') == blocks
    changed = lynx_sglang(*[a if a != "32" else "24" for a in args], "--resume")
    assert changed.returncode == 2 and "cannot resume: the items differ from the saved run's (--n, --seed or " \
        "--task changed: n was 32, now 24)" in changed.stderr and len(changed.stderr) < 2000, changed.stderr


def test_sweep_skips_an_arm_the_server_refuses_and_runs_the_rest(server, tmp_path):
    out = tmp_path / "refused"
    done = lynx_sglang("sweep", *against(server), "--policies", "budget:num_experts_kept=1;topn:num_experts_kept=2",
                       "--n", "8", "--concurrency", "4", "--blocks", "1", "--bootstrap", "100", "--out", str(out))
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    (skipped,) = results["skipped_arms"]
    assert skipped["arm"] == "budget:num_experts_kept=1" and "allowed: 2..8" in skipped["reason"]
    (frontier,) = results["frontiers"]
    assert {p["arm"] for p in frontier["points"]} == {"baseline", "topn:num_experts_kept=2"}
    assert "skipped budget:num_experts_kept=1" in done.stderr
    assert "## Skipped arms" in (out / "report.md").read_text()
    # resumed once finished: the refused arm is the only one left to run, the others are measured
    resumed = lynx_sglang("sweep", *against(server), "--policies", "budget:num_experts_kept=1;topn:num_experts_kept=2",
                          "--n", "8", "--concurrency", "4", "--blocks", "1", "--bootstrap", "100", "--out", str(out),
                          "--resume")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "results.json").read_text())["status"] == "complete"

    # Nothing left to compare, or no reference to compare with: the sweep ends before measuring (exit 2),
    # and an earlier run's measurements in the same --out stay as they were.
    earlier = '{"kind": "config", "items": 8}\n{"kind": "block", "concurrency": 4}\n'
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "measurements.jsonl").write_text(earlier)
    for flags, needle in ((["--policies", "budget:num_experts_kept=1"], "refused every arm to compare with baseline"),
                          (["--reference", "budget:num_experts_kept=1", "--policies", "topn:num_experts_kept=2"],
                           "the reference arm budget:num_experts_kept=1")):
        ended = lynx_sglang("sweep", *against(server), *flags, "--n", "8", "--concurrency", "4", "--blocks", "1",
                            "--out", str(tmp_path / "none"))
        assert ended.returncode == 2 and needle in ended.stderr, ended.stderr
        assert (tmp_path / "none" / "measurements.jsonl").read_text() == earlier


def blocks_in(out: Path) -> int:
    path = out / "measurements.jsonl"
    return path.read_text().count('"kind":"block"') if path.exists() else 0


def start_ab(*args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A test run started in the background (`make test &`) inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the child the default disposition, as a terminal would.
    return subprocess.Popen([sys.executable, "-m", "lynx_sglang.cli", "ab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_blocks(process: subprocess.Popen, out: Path, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while blocks_in(out) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no blocks measured in time"
        time.sleep(0.5)


def test_ctrl_c_writes_what_was_measured(server, tmp_path):
    out = tmp_path / "interrupted"
    process = start_ab(*against(server), "--n", "400", "--concurrency", "1", "--blocks", "20", "--bootstrap", "200",
                       "--out", str(out))
    wait_for_blocks(process, out, 2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["blocks"] >= 2
    assert "Partial results" in (out / "report.md").read_text()
    assert "partial results" in stderr and "--resume" not in stderr  # a sweep's flag: ab has none


def test_sigterm_writes_what_was_measured_and_stops_the_server_it_started(tmp_path):
    """`kill` or `timeout` ends `ab` as Ctrl-C does; by Python's default the server it started outlived it."""
    out = tmp_path / "terminated"
    process = start_ab("--n", "400", "--concurrency", "1", "--blocks", "20", "--bootstrap", "200", "--out", str(out))
    try:
        wait_for_blocks(process, out, 1)
        started = psutil.Process(process.pid).children(recursive=True)
        assert any("serve" in child.cmdline() for child in started)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [child.cmdline()[:4] for child in alive]


def test_a_server_that_dies_mid_run_is_reported_and_partial_results_kept(tmp_path):
    """`ab` with no --url starts its own server; stopping that server mid-run must not lose the blocks."""
    out = tmp_path / "died"
    port = free_port()
    process = start_ab("--n", "400", "--concurrency", "1", "--blocks", "20", "--bootstrap", "200", "--port", str(port),
                       "--out", str(out))
    try:
        wait_for_blocks(process, out, 2)
        (serve,) = [child for child in psutil.Process(process.pid).children() if "serve" in child.cmdline()]
        assert serve.cmdline()[serve.cmdline().index("--port") + 1] == str(port)
        serve.send_signal(signal.SIGINT)  # lynx-sglang serve stops its SGLang processes
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr
    assert "the server died" in stderr and str(out / "server.log") in stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "server-error" and results["blocks"] >= 2
    assert "Partial results" in (out / "report.md").read_text()


def test_one_line_errors_before_any_request(server, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=" "answer": "4"}\n')
    done = lynx_sglang("ab", *against(server), "--task", str(bad), "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and f"{bad}:2: not valid JSON" in done.stderr
    assert not (tmp_path / "x").exists()  # reported before anything was sent or written

    wrong = lynx_sglang("ab", "--url", server.url, "--admin-token", "wrong", "--n", "8", "--out", str(tmp_path / "y"))
    assert wrong.returncode == 2 and "refused the admin token" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1

    # A setting the server refuses for this model ends `ab` before any block, as a bad input.
    refused = lynx_sglang("ab", *against(server), "--b", "budget", "--b-param", "num_experts_kept=1", "--n", "8",
                          "--concurrency", "4", "--blocks", "1", "--out", str(tmp_path / "r"))
    assert refused.returncode == 2 and "arm budget:num_experts_kept=1" in refused.stderr, refused.stderr
    assert "allowed: 2..8" in refused.stderr and not (tmp_path / "r" / "measurements.jsonl").exists()

    unreachable = lynx_sglang("ab", "--url", "http://127.0.0.1:9", "--admin-token", "t", "--n", "8", "--out",
                              str(tmp_path / "z"))
    assert unreachable.returncode == 2 and len(unreachable.stderr.strip().splitlines()) == 1
    assert unreachable.stderr.startswith("lynx-sglang ab: error: cannot reach http://127.0.0.1:9"), unreachable.stderr
