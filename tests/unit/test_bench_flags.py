"""The benchmarks' flags: a value that would end in a traceback, a table of nan, an empty table or a
measurement under another label than the one printed is one line on stderr and exit 2, before any
work (a server started, a checkpoint built, a kernel timed)."""

import pytest
import torch

from lynx_sglang.tools.bench import kernels as kernel_bench
from lynx_sglang.tools.bench import models
from lynx_sglang.tools.bench import policies as policy_bench
from lynx_sglang.tools.bench import serve
from lynx_sglang.tools.bench.models import BenchError, Device
from lynx_sglang.tools.bench.serve import parse_arms

ARM_VARIABLES = ("LYNX_POLICY", "LYNX_PARAMS", "LYNX_BUDGET", "LYNX_KERNEL", "LYNX_STATS", "LYNX_CONFIG")
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lynx-sglang bench {prog}: error: "), err
    return err


@pytest.fixture
def no_arm_variables(monkeypatch):
    for variable in ARM_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


# ---- bench serve ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--lynx-policy", "lynx"], ["--lynx-policy=lynx"], ["--lynx-param", "a=1"],
                                   ["--lynx-budget", "experts=2"], ["--lynx-kernel=torch"], ["--lynx-stats", "off"],
                                   ["--tp", "1", "--lynx-config", "c.yaml"]])  # fmt: skip
def test_serve_refuses_an_arms_settings_after_the_double_dash(flags, capsys, no_arm_variables):
    flag = next(arg for arg in flags if arg.startswith("--lynx")).partition("=")[0]
    assert serve.main(["--concurrency", "1", "--requests", "1", "--", *flags]) == 2
    err = one_error_line(capsys, "serve")
    assert f"{flag} after --" in err and "--arms" in err and "--kernels" in err


def test_serve_passes_other_flags_to_every_server(tmp_path):
    serve.check_arm_settings(["--lynx-layers", "0", "--lynx-prune-mixed", "--tp", "2", "--mem-fraction-static=0.8"], {})
    config = tmp_path / "sglang.yaml"
    config.write_text("lynx-budget: experts=2\n")
    with pytest.raises(BenchError, match=r"--config: key 'lynx-budget' \(--lynx-budget\)"):
        serve.check_arm_settings(["--config", str(config)], {})
    config.write_text("mem-fraction-static: 0.8\n")
    serve.check_arm_settings(["--config", str(config)], {})


def test_serve_refuses_the_lynx_variables_an_arm_sets(monkeypatch, capsys, no_arm_variables):
    monkeypatch.setenv("LYNX_BUDGET", "experts=2")
    monkeypatch.setenv("LYNX_CONFIG", "lynx.yaml")
    assert serve.main(["--concurrency", "1", "--requests", "1"]) == 2
    err = one_error_line(capsys, "serve")
    assert "LYNX_BUDGET, LYNX_CONFIG set in the environment" in err and "--arms" in err
    assert serve.ARM_VARIABLES == ARM_VARIABLES
    serve.check_arm_settings([], {"LYNX_BUDGET": "", "LYNX_LAYERS": "0", "LYNX_PRUNE_MIXED": "1"})  # unset, or not an arm's


@pytest.mark.parametrize("arms", ["lynx;lynx:", "lynx;lynx:none", " lynx ; lynx: ", "budget:fraction=.5;budget:fraction=0.5"])
def test_serve_refuses_an_arm_twice_however_written(arms):
    with pytest.raises(BenchError, match="lists an arm twice"):
        parse_arms(arms)


def test_serve_arms_that_differ_stand_and_baseline_takes_no_budget():
    assert [arm.spec for arm in parse_arms("lynx;lynx:experts=4;budget:experts=4")] == [
        "lynx", "lynx:experts=4", "budget:experts=4"]
    with pytest.raises(BenchError, match="baseline takes no budget"):
        parse_arms("baseline:experts=2")


def test_serve_points_sweeps_arm_form_to_its_own():
    with pytest.raises(BenchError, match=r"budget after a colon, lynx:fraction=0.5; POLICY\+BUDGET is sweep's form"):
        parse_arms("baseline;lynx+fraction=0.5")
    with pytest.raises(BenchError) as refused:
        parse_arms("nosuch+fraction=0.5")
    assert "sweep" not in str(refused.value)


def test_serve_takes_a_policy_class_by_path_with_or_without_a_budget():
    """The path's own colon was read as the budget's: the arm named a module 'lynx_sglang.policies.lynx'."""
    path = "lynx_sglang.policies.lynx:LynxPolicy"
    assert [arm.key for arm in parse_arms(f"{path};{path}:experts=3")] == [(path, None), (path, "experts=3")]
    with pytest.raises(BenchError, match="budget: 'abc' is not a budget"):
        parse_arms("lynx:abc")


def test_serve_checks_its_output_paths_without_touching_an_earlier_record(monkeypatch, tmp_path, capsys,
                                                                           no_arm_variables):
    monkeypatch.setattr(serve, "describe_device", lambda: Device("CPU: test", None))
    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"rows": [1]}')
    assert serve.main(["--arms", "lynx:experts=9", "--concurrency", "1", "--record", str(earlier)]) == 2
    assert "experts=9 out of range" in one_error_line(capsys, "serve")
    assert earlier.read_text() == '{"rows": [1]}'  # a refused run emptied it
    assert serve.main(["--arms", "lynx", "--concurrency", "1", "--json", str(tmp_path / "no" / "x.json"),
                       "--record", str(tmp_path / "new.json")]) == 2
    assert f"--json {tmp_path / 'no' / 'x.json'}: cannot write it" in one_error_line(capsys, "serve")
    assert not (tmp_path / "new.json").exists()  # checked, not left behind empty
    dangling = tmp_path / "link.json"
    dangling.symlink_to(tmp_path / "target.json")
    serve.check_writable(str(dangling), "--record")
    assert dangling.is_symlink() and not (tmp_path / "target.json").exists()  # neither followed nor removed
    assert sorted(path.name for path in tmp_path.iterdir()) == ["earlier.json", "link.json"]  # no probe left


def test_serve_refuses_fewer_requests_than_the_concurrency(capsys, no_arm_variables):
    assert serve.main(["--concurrency", "1,4", "--requests", "2"]) == 2
    assert "--requests 2 is below --concurrency 4" in one_error_line(capsys, "serve")


@pytest.mark.parametrize("shape", ["", "mixtral-8x7b,num_hidden_layers=2"])
def test_serve_checks_the_arms_against_the_model_before_building_it(shape, monkeypatch, tmp_path, capsys,
                                                                    no_arm_variables):
    def no_build(fields):
        raise AssertionError("the checkpoint was built before the arms were checked")

    monkeypatch.setattr(models, "bench_checkpoint", no_build)
    monkeypatch.setattr(serve, "describe_device", lambda: Device("CPU: test", None))
    monkeypatch.setattr(serve.tempfile, "mkdtemp", lambda prefix: str(tmp_path))
    assert serve.main(["--arms", "baseline;lynx:experts=9", "--concurrency", "1", "--shape", shape]) == 2
    assert "--arms: arm 'lynx:experts=9': budget: experts=9 out of range" in one_error_line(capsys, "serve")


# ---- bench kernels ----------------------------------------------------------------------------------

KERNELS = ["--cpu", "--quick", "--shapes", "embedded", "--dtype", "fp32"]


@pytest.mark.parametrize("flags, message", [
    (["--fractions", "150"], "argument --fractions: '150' is not a percentage of the experts from 1 to 100"),
    (["--fractions", "0"], "argument --fractions: '0' is not a percentage"),
    (["--fractions"], "argument --fractions: expected at least one argument"),
    (["--batches", "0"], "argument --batches: '0' is not a positive integer"),
    (["--batches"], "argument --batches: expected at least one argument"),
    (["--iters", "0"], "argument --iters: '0' is not a positive integer"),
    (["--copies", "0"], "argument --copies: '0' is not a positive integer"),
    (["--copy-mib", "0"], "argument --copy-mib: '0' is not a positive integer"),
    (["--warmup", "-1"], "argument --warmup: '-1' is negative"),
    (["--compare", "stok"], "argument --compare: invalid choice: 'stok'"),
    (["--device", "mps"], "--device: 'mps' is not cpu, cuda or cuda:N"),
    (["--tiny"], "argument --tiny: not allowed with argument --cpu"),
])  # fmt: skip
def test_kernels_refuses_bad_values_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        kernel_bench.parse_args([*KERNELS, *flags])
    assert stopped.value.code == 2 and message in one_error_line(capsys, "kernels")


@CPU_ONLY
def test_kernels_refuses_what_needs_cuda_or_the_interpreter(monkeypatch, capsys):
    for flags, message in ((["--device", "cuda"], "--device cuda: no CUDA device is available"),
                           ([], "the model shapes need a GPU (no CUDA device is available): use --cpu")):
        with pytest.raises(SystemExit) as stopped:
            kernel_bench.parse_args([*KERNELS[1:2], *flags])
        assert stopped.value.code == 2 and message in one_error_line(capsys, "kernels")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit) as stopped:
        kernel_bench.parse_args([*KERNELS, "--triton-on-cpu"])
    assert stopped.value.code == 2 and "`TRITON_INTERPRET=1 lynx-sglang bench kernels" in one_error_line(capsys, "kernels")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_bench.parse_args([*KERNELS, "--triton-on-cpu"]).triton_on_cpu


def test_kernels_tiny_runs_the_tiny_shape_only(capsys):
    assert kernel_bench.parse_args(["--tiny"]).tiny
    with pytest.raises(SystemExit):
        kernel_bench.parse_args(["--tiny", "--shapes", "mixtral-8x7b"])
    assert "--shapes: --tiny runs the tiny shape only" in one_error_line(capsys, "kernels")


def test_kernels_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as stopped:
        kernel_bench.parse_args(["--help"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("usage: lynx-sglang bench kernels ")


def test_kernels_says_stock_does_not_run_on_a_cpu(capsys):
    args = kernel_bench.parse_args([*KERNELS, "--compare", "stock"])
    assert list(kernel_bench.build_implementations(torch.device("cpu"), args)) == ["ours"]
    assert "# stock: not run: it is Triton, for a GPU" in capsys.readouterr().out


# ---- bench policies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("names, message", [("nosuch", "--policies: unknown policy 'nosuch'; available: "),
                                            ("lynx,nosuch", "unknown policy 'nosuch'"),
                                            ("", "--policies: '' lists no policy"),
                                            (" , ", "lists no policy"),
                                            ("lynx,lynx", "lists a policy twice")])  # fmt: skip
def test_policies_refuses_unknown_names_and_an_empty_list(names, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        policy_bench.parse_args(["--device", "cpu", "--policies", names])
    assert stopped.value.code == 2 and message in one_error_line(capsys, "policies")


@CPU_ONLY
def test_policies_names_the_interpreter_only_when_it_counts_launches(monkeypatch, capsys):
    monkeypatch.setattr(policy_bench, "CPU_TABLE_SECONDS", 0.0)
    assert policy_bench.main(["--device", "cpu", "--policies", "baseline", "--tokens", "1", "--experts", "8",
                              "--repeats", "1", "--no-launch-counts"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "# CUDA: no CUDA device here, so no graph-replay times\n" in out
    assert "Triton's interpreter" not in out and "launches per layer call" not in out


def test_bench_help_says_what_each_benchmark_measures(capsys):
    from lynx_sglang.cli import main as cli_main
    from lynx_sglang.tools.bench import SUBCOMMANDS

    with pytest.raises(SystemExit) as done:
        cli_main(["bench", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert all(f"{name:<12} {what}" in shown for name, what in SUBCOMMANDS.items()), shown


def test_serve_profiles_only_a_level_it_runs_with_requests_long_enough(capsys, no_arm_variables):
    assert serve.main(["--concurrency", "1,4", "--profile", "2"]) == 2
    assert "--profile 2: not one of the --concurrency levels [1, 4]" in one_error_line(capsys, "serve")
    assert serve.main(["--concurrency", "1,4", "--profile", "4", "--output-tokens", "8"]) == 2
    assert "--profile needs --output-tokens 24 or more (16 decode steps" in one_error_line(capsys, "serve")


@pytest.mark.parametrize("extra, flag", [(["--api-key", "k"], "--api-key"), (["--admin-api-key=k"], "--admin-api-key")])
def test_serve_refuses_an_api_key_its_requests_would_not_send(extra, flag, capsys, no_arm_variables):
    assert serve.main(["--concurrency", "1", "--", *extra]) == 2
    assert f"{flag} after --: bench serve sends no key" in one_error_line(capsys, "serve")
