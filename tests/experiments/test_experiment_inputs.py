"""Inputs and figures of the experiments that users found wrong (no server): a task answer no completion
can match, a refused --resume, a --port among the server flags, verdicts at the bound's edge, and
default arms that can never prune."""

import os
import signal
import subprocess

import pytest

# Modules, not names: each test then fails on its own where a name is missing
from lynx_sglang.experiments import ab, fmt, launch, model_arms
from lynx_sglang.experiments.arms import parse_arms
from lynx_sglang.experiments.model_arms import ServedShape
from lynx_sglang.experiments.store import MeasurementStore, ResumeError, check_same_settings
from lynx_sglang.experiments.tasks import TaskError, jsonl_items


@pytest.mark.parametrize("answer", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_an_answer_that_is_no_finite_number_is_refused_with_its_line(tmp_path, answer):
    path = tmp_path / "task.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": 2}\n' + f'{{"prompt": "x", "answer": {answer}}}\n')
    with pytest.raises(TaskError) as error:
        jsonl_items(path)
    assert str(error.value) == f'{path}:2: "answer" must be a finite number'


def saved_run(seed=0, n=3, task="arithmetic"):
    return {"items": [[f"{i}+{seed}=", str(i + seed), "add"] for i in range(n)] * 300, "task": task, "seed": seed,
            "n": n, "score": "exact"}


def test_a_resume_with_other_items_names_the_flag_not_the_lists():
    with pytest.raises(ResumeError) as error:
        check_same_settings(saved_run(seed=0), saved_run(seed=5))
    assert str(error.value) == ("cannot resume: the items differ from the saved run's (--n, --seed or --task changed: "
                                "seed was 0, now 5); use the same flags, or another --out")
    with pytest.raises(ResumeError, match=r"\(--n, --seed or --task changed: n was 3, now 4\)"):
        check_same_settings(saved_run(n=3), saved_run(n=4))
    edited = saved_run()
    edited["items"] = edited["items"][:-1]  # a task file edited in place: same flags
    with pytest.raises(ResumeError, match=r"same --n, --seed and --task, but the task's items changed") as error:
        check_same_settings(saved_run(), edited)
    assert len(str(error.value)) < 300


@pytest.mark.parametrize("first_line", ['{"kind": "config", "items": [[', '{"kind": "block"}', "[1, 2]"])
def test_a_saved_run_whose_settings_line_is_cut_short_is_one_line(tmp_path, first_line):
    """A JSONDecodeError traceback before: the settings line of a file cut mid-line (or another file)."""
    (tmp_path / "measurements.jsonl").write_text(first_line + "\n")
    with pytest.raises(ResumeError, match=r"cannot resume: the first line of .* is not a run's settings"):
        MeasurementStore(tmp_path).plan({"kind": "config"}, resume=True)


def test_port_and_host_among_the_server_flags_are_read_as_serve_reads_them():
    assert launch.served_address(["--port", "31260"]) == (None, 31260)
    assert launch.served_address(["--port=1", "--host=0.0.0.0", "--port", "31261"]) == ("0.0.0.0", 31261)
    assert launch.served_address(["--max-running-requests", "8"]) == (None, None)
    with pytest.raises(ValueError, match="--port 'x' among the server flags is not a port number"):
        launch.served_address(["--port", "x"])


class RecordedStart:
    commands: list = []

    def __init__(self, command, **kwargs):
        RecordedStart.commands.append(command)


def test_a_started_server_listens_where_its_flags_say_and_is_polled_there(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", RecordedStart)
    server = launch.ManagedServer(tmp_path / "server.log", policy=None, serve_args=["--port", "31260", "--host", "::1"])
    server._log.close()
    command = RecordedStart.commands[-1]
    assert server.url == "http://[::1]:31260" and command.count("--port") == 1
    assert not server._port_chosen_here  # the user's port: never swapped for another


@pytest.mark.parametrize("tool", ["ab", "sweep", "calibrate"])
def test_a_port_given_as_a_server_flag_is_refused_for_the_commands_own(tool, capsys):
    from lynx_sglang.experiments import calibrate, sweep

    module = {"ab": ab, "sweep": sweep, "calibrate": calibrate}[tool]
    with pytest.raises(SystemExit) as exit_code:
        module.parse_args(["--serve-arg=--port=31262"])
    assert exit_code.value.code == 2
    assert (f"lynx-sglang {tool}: error: --serve-arg --port 31262: give the started server's port as "
            f"lynx-sglang {tool}'s own --port 31262") in capsys.readouterr().err


@pytest.mark.parametrize("low, within, shown", [
    (-0.01006, "no", "-1.01"), (-0.00989, "yes", "-0.99"), (-0.01, "yes", "-1.0"), (-0.0123, "no", "-1.2"),
    (-0.0049, "yes", "-0.5"),
])
def test_the_verdict_at_the_bound_shows_the_digits_that_decide_it(low, within, shown):
    comparison = {"accuracy_a": 0.9, "accuracy_b": 0.89, "accuracy_diff": -0.001, "accuracy_diff_ci": [low, 0.01],
                  "mcnemar_p": 0.5}
    assert ab.accuracy_verdict(comparison).endswith(f"; within 1 point: {within} (lower end {shown})")


def test_a_change_that_rounds_to_zero_has_no_sign():
    assert fmt.percent_change(1.002) == "0 %" and fmt.percent_change(0.998) == "0 %"
    assert fmt.percent_change(1.25) == "+25 %" and fmt.percent_change(0.6) == "-40 %"
    cache = {"cache_misses_per_decode_token_a": 1.0, "cache_misses_per_decode_token_b": 0.999}
    assert ab.cache_verdict(cache).endswith("(0 %)")


def test_sigterm_and_ctrl_c_are_told_apart():
    with pytest.raises(launch.Terminated) as error:
        with launch.terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
    assert launch.interruption(error.value) == "SIGTERM" and launch.interruption(KeyboardInterrupt()) == "Ctrl-C"


@pytest.mark.parametrize("shape", [ServedShape(4, 1, 2), ServedShape(32, 1, 48), ServedShape(2, 2, 1),
                                   ServedShape(8, 2, 4), ServedShape(16, 4, 2)])
def test_no_default_arm_or_candidate_is_one_that_can_never_prune(shape):
    arms, dropped = model_arms.default_arms(shape)
    candidates, not_candidates = model_arms.calibration_candidates(shape)
    for arm in arms + candidates:
        assert model_arms.cannot_prune(arm, shape) is None, arm.label
    for arm, reason in dropped + not_candidates:
        assert reason.startswith("cannot change this model's routing: "), (arm.label, reason)


def test_the_arms_that_cannot_prune_a_top_1_model():
    top1 = ServedShape(4, 1, 2)
    labels = {arm.label for arm, _ in model_arms.calibration_candidates(top1)[1]}
    assert "oea:k0=1" in labels
    assert {arm.label for arm, _ in model_arms.default_arms(top1)[1]} >= {"oea:k0=1", "lynx-v1:threshold=0.5"}
    (kept_all,) = parse_arms("topn:num_experts_kept=4")
    assert model_arms.cannot_prune(kept_all, top1) == "num_experts_kept=4 keeps all 4 experts"
    (strict,) = parse_arms("lynx-v1:threshold=1.0")  # no token is confident: the set is topped up, not kept
    assert model_arms.cannot_prune(strict, top1) is None
    (oea,) = parse_arms("oea:k0=1")
    assert model_arms.cannot_prune(oea, ServedShape(8, 2, 4)) is None


def test_a_level_above_the_block_size_is_named_before_measuring():
    """--n 4 --blocks 2 --concurrency 4 measured batches of 2 under a table saying concurrency 4."""
    from types import SimpleNamespace

    from rich.console import Console

    from lynx_sglang.experiments.experiment import say_thin_blocks

    console = Console(record=True, width=200)
    experiment = SimpleNamespace(items=list(range(4)), args=SimpleNamespace(blocks=2), levels=[1, 2, 4])
    say_thin_blocks(experiment, console)
    assert "a block holds 2 items, fewer than concurrency 4: those levels measure batches of at most 2" in console.export_text()
    console = Console(record=True, width=200)
    say_thin_blocks(SimpleNamespace(items=list(range(8)), args=SimpleNamespace(blocks=2), levels=[1, 4]), console)
    assert console.export_text() == ""
