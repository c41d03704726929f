"""`ab`, `sweep` and `calibrate` against a running server (--url): what they write is what they measured
on its layers, they leave it in the setting it had, they name the bounds they apply, and they say why
a run stopped. One real server on the embedded model, started with a setting of its own."""

import json
import os
import signal

import pytest
import yaml
from live_server import RunningServer, get_json

from lynx_sglang.embedded.task import heldout_problems
from lynx_sglang.experiments import ab, calibrate, runner, sweep

TOKEN = "setting-test-token"
ORIGINAL = {"policy": "lynx", "params": {"alpha": 2}, "budget": "experts=5", "layers": [1, 2], "prune_mixed": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--lynx-policy", "lynx", "--lynx-param", "alpha=2", "--lynx-budget", "experts=5",
                         "--lynx-layers", "1-2", "--lynx-prune-mixed", "--lynx-admin-token", TOKEN],
                        tmp_path_factory.mktemp("setting") / "server.log")  # fmt: skip
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def task_file(tmp_path, count=24, right=True):
    """Held-out problems of the embedded task; with right=False every answer is one the model never gives."""
    path = tmp_path / "task.jsonl"
    problems = heldout_problems(count, seed=71, distinct=True)
    path.write_text("".join(json.dumps({"prompt": p.prompt, "answer": p.answer if right else "no such answer"})
                            + "\n" for p in problems))  # fmt: skip
    return str(path)


def common(server, tmp_path, out: str, n: int = 12, right: bool = True) -> list[str]:
    return ["--url", server.url, "--admin-token", TOKEN, "--task", task_file(tmp_path, right=right), "--n", str(n),
            "--concurrency", "2", "--blocks", "1", "--bootstrap", "100", "--out", str(tmp_path / out)]


def live(server) -> dict:
    state = get_json(server.url + "/lynx/policy")
    return {key: state[key] for key in ORIGINAL}


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["sweep", "ab"])
def test_a_run_puts_the_server_back_in_its_setting_and_names_its_layers(tool, server, tmp_path, capsys):
    argv = common(server, tmp_path, tool) + (["--policies", "topn:num_experts_kept=3"] if tool == "sweep" else
                                           ["--b", "topn", "--b-param", "num_experts_kept=3"])
    assert (sweep if tool == "sweep" else ab).main(argv) == 0
    assert live(server) == ORIGINAL
    assert capsys.readouterr().err.count("restored the server's setting from before the run: lynx") == 1
    results = json.loads((tmp_path / tool / "results.json").read_text())
    assert results["server_scope"] == {"layers": [1, 2], "prune_mixed": True}
    report = (tmp_path / tool / "report.md").read_text()
    assert "(the server's layers 1,2 only (--lynx-layers) and mixed batches pruned too (--lynx-prune-mixed): " \
           "every arm given as a policy ran with it)" in report


@pytest.mark.slow
def test_calibrate_writes_the_layers_it_measured_and_restores_the_server_once(server, tmp_path, capsys):
    out = tmp_path / "calib"
    argv = common(server, tmp_path, "calib", n=8) + ["--confirm-n", "8", "--candidates", "topn:num_experts_kept=6",
                                                   "--max-loss", "60", "--margin", "0"]
    assert calibrate.main(argv) == 0
    config = yaml.safe_load((out / "lynx-config.yaml").read_text())
    assert config == {"policy": "topn", "params": {"num_experts_kept": 6}, "layers": [1, 2], "prune_mixed": True}
    confirm_arm = json.loads((out / "confirm" / "results.json").read_text())["config"]["arms"][1]
    assert confirm_arm["config"]["layers"] == [1, 2]  # the confirmation ran on the layers the sweep did
    assert live(server) == ORIGINAL
    captured = capsys.readouterr()
    assert captured.err.count("restored the server's setting") == 1
    # The confirmation's verdicts name the calibration's bound, not ab's default 1 point
    assert "within 60 points (the calibration's max loss): yes" in (out / "confirm" / "report.md").read_text()
    assert "within 1 point" not in (out / "confirm" / "report.md").read_text()
    assert "warning" not in captured.err and json.loads((out / "results.json").read_text())["warning"] is None


@pytest.mark.slow
def test_calibrate_warns_when_the_model_answers_nothing(server, tmp_path, capsys):
    argv = common(server, tmp_path, "calib", n=8, right=False) + ["--confirm-n", "8", "--candidates",
                                                                  "topn:num_experts_kept=6"]  # fmt: skip
    assert calibrate.main(argv) == 0
    expected = "the model's own routing (baseline) answers 0.0 % at concurrency 2 of the calibration items correctly"
    assert f"warning: {expected}" in capsys.readouterr().err
    results = json.loads((tmp_path / "calib" / "results.json").read_text())
    assert results["warning"].startswith(expected) and "says nothing about accuracy" in results["warning"]
    assert f"**Warning**: {expected}" in (tmp_path / "calib" / "report.md").read_text()


@pytest.mark.slow
def test_sigterm_is_named_in_the_results(server, tmp_path, monkeypatch):
    measure = runner.Runner.measure
    calls = []

    def measure_then_terminated(self, step, on_done):
        calls.append(step)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return measure(self, step, on_done)

    monkeypatch.setattr(runner.Runner, "measure", measure_then_terminated)
    argv = common(server, tmp_path, "sweep") + ["--policies", "topn:num_experts_kept=3"]
    assert sweep.main(argv) == 130
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert results["status"] == "interrupted" and results["message"] == "interrupted (SIGTERM)"
    assert live(server) == ORIGINAL  # restored on the way out too


@pytest.mark.parametrize("setting", [
    dict(ORIGINAL),
    {"policy": "anchor", "params": {"ratio": 0.5}, "schedule": [{"from_rows": 1, "params": {"ratio": 0.5}},
                                                               {"from_rows": 8, "params": {"ratio": 0.3}}]},
    {"policy": "baseline"},
])
def test_the_restore_body_is_one_the_server_applies_to_the_same_setting(setting):
    """What GET /lynx/policy shows, posted back as a whole config, is the setting it was (the server's own rule)."""
    from lynx_sglang.config import LynxConfig
    from lynx_sglang.experiments.client import setting_of
    from lynx_sglang.scheduler.control import applied_config

    running = LynxConfig(**setting)
    switched_away = LynxConfig(policy="topn", params={"num_experts_kept": 3})
    assert applied_config(switched_away, setting_of(running.public_view())) == running
