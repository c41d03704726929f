"""Bad input to `lynx-sglang serve` stops the launch with one specific line and exit code 2,
before any SGLang process starts."""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lynx_sglang import cli, gpu_runtime
from lynx_sglang import serve as serve_module
from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
from lynx_sglang.launch_checks import LaunchError
from lynx_sglang.local_server import free_port
from lynx_sglang.serve import plan_launch


def run_serve(*args):
    """`lynx-sglang serve ARGS` in this process (the CLI's own `main`, its output captured): a launch
    that got past the checks fails the test instead of starting SGLang. The help test below runs the
    installed command in a process of its own."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_module, "run_sglang", refuse_to_start_sglang)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            returncode = cli.main(["serve", *args])
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def refuse_to_start_sglang(plan, *_args, **_kwargs):
    raise AssertionError(f"the launch was not stopped: SGLang would start with {plan.sglang_args}")


def assert_rejected(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lynx-sglang serve: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "starting SGLang" not in proc.stdout


def test_missing_model_path(tmp_path):
    proc = run_serve("--model-path", str(tmp_path / "nope"))
    assert_rejected(proc, "does not exist", "nope")


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    proc = run_serve("--model-path", str(tmp_path))
    assert_rejected(proc, "config.json", "not valid JSON")


def test_checkpoint_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    proc = run_serve("--model-path", str(tmp_path))
    assert_rejected(proc, "no weight files")


def test_cut_or_corrupt_weights_are_refused_before_sglang_starts(tmp_path):
    """SGLang started, then died loading them (SafetensorError, exit 247) after its processes had started."""
    import shutil

    def copy(name):
        shutil.copytree(EMBEDDED_MODEL_DIR, tmp_path / name)
        return tmp_path / name

    garbage = copy("garbage")
    (garbage / "model.safetensors").write_bytes(bytes(range(100)))
    assert_rejected(run_serve("--model-path", str(garbage)), "is not a readable safetensors file",
                    "its header claims")  # fmt: skip
    cut = copy("cut")
    size = (cut / "model.safetensors").stat().st_size
    with open(cut / "model.safetensors", "r+b") as handle:
        handle.truncate(size - 100)
    assert_rejected(run_serve("--model-path", str(cut)), f"the file holds {size - 100}: cut short")
    sharded = copy("sharded")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert_rejected(run_serve("--model-path", str(sharded)), "names 1 weight file(s) the folder lacks",
                    "model-00002-of-00002.safetensors")  # fmt: skip
    # random weights need none of them
    plan_launch(["--model-path", str(garbage), "--load-format", "dummy", "--port", str(free_port())], on_cpu=True)


def test_llama4_is_refused_on_a_cpu_before_sglang_starts_and_planned_on_a_gpu(tmp_path):
    # SGLang starts it on CPU, then its first forward raises NotImplementedError (docs/routers.md).
    config = {"model_type": "llama4_text", "architectures": ["Llama4ForCausalLM"], "num_local_experts": 8,
              "num_experts_per_tok": 1, "num_hidden_layers": 2}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    argv = ["--model-path", str(tmp_path), "--port", str(free_port()), "--load-format", "dummy"]
    with pytest.raises(LaunchError, match=r"\(Llama4ForCausalLM\) cannot be served on a CPU: Llama-4's experts"):
        plan_launch(argv, on_cpu=True)
    assert plan_launch(argv, on_cpu=False, sgl_kernel_ok=True).model_path == tmp_path
    # with its weight files, on a GPU too: SGLang's Llama4ForCausalLM loader skips the fused experts
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(LaunchError, match=r"text-only Llama4ForCausalLM checkpoint: SGLang loads none of its expert"):
        plan_launch(argv[:-2], on_cpu=False, sgl_kernel_ok=True)
    assert plan_launch(argv, on_cpu=False, sgl_kernel_ok=True).model_path == tmp_path


def test_deepseek_and_gpt_oss_get_triton_attention_interpreted_on_a_cpu(tmp_path):
    # torch_native, the CPU default, fails on DeepSeek's first prefill and is refused by SGLang for
    # gpt-oss; Triton's attention serves both, interpreted (docs/routers.md).
    def folder(name, **config):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": name, "num_hidden_layers": 2, **config}))
        return ["--model-path", str(tmp_path / name), "--port", str(free_port()), "--load-format", "dummy"]

    deepseek = folder("deepseek_v3", architectures=["DeepseekV3ForCausalLM"], kv_lora_rank=256, qk_rope_head_dim=32)
    gpt_oss = folder("gpt_oss", architectures=["GptOssForCausalLM"])
    for argv in (deepseek, gpt_oss):
        plan = plan_launch(argv, on_cpu=True)
        args = plan.sglang_args
        assert args[args.index("--attention-backend") + 1] == "triton" and "torch_native" not in args
        assert "--triton-attention-num-kv-splits" in args and plan.env["TRITON_INTERPRET"] == "1"
        assert "TRITON_INTERPRET" not in plan_launch(argv, on_cpu=False, sgl_kernel_ok=True).env
    for flag in ("--attention-backend", "--decode-attention-backend"):
        with pytest.raises(LaunchError, match=rf"needs the triton attention backend \(multi-head latent attention "
                                              rf"\(MLA\) fails on torch_native .*\), not {flag} torch_native"):
            plan_launch([*deepseek, flag, "torch_native"], on_cpu=True)
    # any model with latent attention, whatever its class (GLM-4.7-Flash's here)
    lite = folder("glm4_moe_lite", architectures=["Glm4MoeLiteForCausalLM"], kv_lora_rank=512, qk_rope_head_dim=64)
    assert plan_launch(lite, on_cpu=True).env["TRITON_INTERPRET"] == "1"
    wide = folder("deepseek_v2", architectures=["DeepseekV2ForCausalLM"], kv_lora_rank=128, qk_rope_head_dim=64)
    with pytest.raises(LaunchError, match=r"latent cache row is 192 wide .* takes 576 or 288"):
        plan_launch(wide, on_cpu=True)


def test_a_dtype_sglang_cannot_build_gpt_oss_in_is_refused_before_it_starts(tmp_path):
    # SGLang builds gpt-oss's attention in config.json's dtype: another fails at the first request
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_oss", "num_hidden_layers": 2,
                                                      "architectures": ["GptOssForCausalLM"], "dtype": "float32"}))
    argv = ["--model-path", str(tmp_path), "--port", str(free_port()), "--load-format", "dummy"]
    with pytest.raises(LaunchError, match=r"dtype bfloat16: .* its checkpoint's dtype \(float32, config.json\)"):
        plan_launch([*argv, "--dtype", "bfloat16"], on_cpu=True)
    for dtype in (["--dtype", "float32"], ["--dtype=float"], []):
        plan_launch([*argv, *dtype], on_cpu=True)


@pytest.mark.parametrize("load_format", [["--load-format", "dummy"], ["--load-format=dummy"]])
def test_checkpoint_without_weights_is_served_with_dummy_weights(tmp_path, load_format):
    config = {"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    plan = plan_launch(["--model-path", str(tmp_path), "--port", str(free_port()), *load_format], on_cpu=True)
    assert plan.model_path == tmp_path and load_format[-1] in plan.sglang_args
    with pytest.raises(LaunchError, match="no weight files"):  # any other load format needs the weights
        plan_launch(["--model-path", str(tmp_path), "--port", str(free_port()), "--load-format", "safetensors"],
                    on_cpu=True)


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_serve("--port", str(port))
    assert_rejected(proc, f"port {port}", "not available", f"(pid {os.getpid()}) listens on it", "choose another --port")


def test_unknown_lynx_flag():
    proc = run_serve("--lynx-polcy", "lynx")
    assert_rejected(proc, "unknown flag --lynx-polcy")


def test_plan_passes_unknown_sglang_flags_through_and_adds_cpu_defaults():
    plan = plan_launch(["--port", str(free_port()), "--mem-fraction-static", "0.5", "--max-total-tokens", "2048"], on_cpu=True)
    args = plan.sglang_args
    assert args[:2] == ["--model-path", str(EMBEDDED_MODEL_DIR)]
    assert args[args.index("--mem-fraction-static") + 1] == "0.5"
    # a user's value wins over the CPU default, and appears once
    assert args.count("--max-total-tokens") == 1 and args[args.index("--max-total-tokens") + 1] == "2048"
    assert "--sleep-on-idle" in args and args[args.index("--device") + 1] == "cpu"
    assert plan.env["OMP_NUM_THREADS"] == "1"


def test_sglangs_own_config_file_is_read_for_the_model_port_and_checks(tmp_path):
    port = free_port()
    config = tmp_path / "sglang.yaml"
    config.write_text(f"model-path: {EMBEDDED_MODEL_DIR}\nport: {port}\nenable-metrics: true\n"
                      "lynx-policy: budget\nlynx-budget: experts=4\n")
    plan = plan_launch(["--config", str(config), "--lynx-budget", "experts=3"], on_cpu=True, environ={})
    assert (plan.model_path, plan.port) == (EMBEDDED_MODEL_DIR, port)
    assert "--config" not in plan.sglang_args and "--enable-metrics" in plan.sglang_args
    assert plan.config.policy == "budget" and plan.config.budget == "experts=3"  # the command line wins
    config.write_text(f"port: {port}\nep-size: 2\n")
    with pytest.raises(LaunchError, match="expert parallelism"):
        plan_launch(["--config", str(config), "--lynx-policy", "lynx"], on_cpu=True, environ={})
    config.write_text("port: [1, 2\n")
    with pytest.raises(LaunchError, match="^--config: "):
        plan_launch(["--config", str(config)], on_cpu=True, environ={})


def test_plan_on_gpu_adds_no_cpu_defaults():
    plan = plan_launch(["--port", str(free_port())], on_cpu=False, sgl_kernel_ok=True)
    assert "--device" not in plan.sglang_args and plan.env == {}


def test_prune_mixed_on_gpu_runs_prefill_eagerly_unless_the_user_chose_a_prefill_graph_backend():
    # SGLang replays mixed batches on its prefill graphs, captured as extend forwards: unpruned.
    args = plan_launch(["--port", str(free_port()), "--lynx-prune-mixed"], on_cpu=False, sgl_kernel_ok=True).sglang_args
    assert args[args.index("--cuda-graph-backend-prefill") + 1] == "disabled"
    args = plan_launch(["--port", str(free_port()), "--lynx-prune-mixed", "--cuda-graph-backend-prefill", "breakable"],
                       on_cpu=False, sgl_kernel_ok=True).sglang_args  # fmt: skip
    assert args.count("--cuda-graph-backend-prefill") == 1 and "breakable" in args


def test_plan_on_gpu_without_sgl_kernel_runs_the_gpu_runtime():
    plan = plan_launch(["--port", str(free_port()), "--attention-backend", "flashinfer"], on_cpu=False,
                       sgl_kernel_ok=False, environ={"PYTHONPATH": "elsewhere"})
    args = plan.sglang_args
    assert args[args.index("--moe-runner-backend") + 1] == "triton"
    assert args[args.index("--sampling-backend") + 1] == "pytorch"
    # the user's choice wins, and appears once
    assert args.count("--attention-backend") == 1 and args[args.index("--attention-backend") + 1] == "flashinfer"
    assert "--device" not in args
    standin, rest = plan.env["PYTHONPATH"].split(os.pathsep)
    assert (Path(standin) / "sgl_kernel" / "__init__.py").is_file() and rest == "elsewhere"
    assert plan.env["SGLANG_FORCE_FUSED_OP_BACKEND"] == "torch" and plan.env[gpu_runtime.RUNTIME_ENV] == "1"


@pytest.mark.parametrize("port", ["http", "70000", "0"])
def test_bad_port_values(port):
    with pytest.raises(LaunchError, match="--port"):
        plan_launch(["--port", port], on_cpu=True)


@pytest.mark.parametrize("args,needles", [
    (["--lynx-policy", "nope"], ["unknown policy 'nope'", "available"]),
    (["--lynx-policy", "lynx", "--lynx-param", "alpha=-1"], ["alpha", "out of range"]),
    (["--lynx-policy", "lynx", "--lynx-param", "gamma=1"], ["unknown parameter 'gamma'"]),
    (["--lynx-policy", "lynx", "--lynx-param", "alpha"], ["key=value"]),
    (["--lynx-policy", "budget", "--lynx-budget", "experts=99"], ["experts=99", "1..8"]),
    (["--lynx-policy", "budget", "--lynx-budget", "experts=2.5"], ["experts=2.5: experts must be a whole number"]),
    (["--lynx-policy", "budget", "--lynx-budget", "experts=0"], ["experts=0 out of range", "an integer >= 1"]),
    (["--lynx-policy", "budget", "--lynx-budget", "tpot_ms=700000"], ["tpot_ms=700000 out of range", "at most 600000 ms"]),
    (["--lynx-policy", "budget", "--lynx-budget", "fast"], ["not a budget"]),
    (["--lynx-policy", "lynx", "--lynx-layers", "2-9"], ["layers", "not a layer of this model"]),
    (["--lynx-policy", "lynx", "--lynx-layers", "x"], ["layers", "'x'"]),
    (["--lynx-policy", "lynx", "--lynx-layers", "1-2", "--lynx-param", "layers=3"], ["layers: given twice"]),
    (["--lynx-kernel", "cuda"], ["--lynx-kernel", "invalid choice"]),
    (["--lynx-budget", "experts=4"], ["has no effect with policy 'baseline'"]),
    (["--lynx-policy", "lynx", "--ep-size", "2"], ["expert parallelism", "--ep-size 2"]),
    (["--lynx-policy", "lynx", "--enable-dp-attention"], ["--enable-dp-attention"]),
    (["--lynx-policy", "lynx", "--tp", "2", "--moe-dp-size", "2"], ["--moe-dp-size 2", "different decisions"]),
    (["--lynx-policy", "lynx", "--tp", "2", "--moe-data-parallel-size=2"], ["--moe-dp-size 2"]),
    (["--lynx-policy", "lynx", "--lynx-budget", "tpot_ms=20", "--tp", "2"], ["tpot_ms", "tensor parallelism"]),
    (["--lynx-expert-cache", "9"], ["expert_cache: 9 slots out of range", "8 experts per layer"]),
    (["--lynx-expert-cache", "0"], ["--lynx-expert-cache: '0' out of range"]),
    (["--lynx-expert-cache", "half"], ["--lynx-expert-cache: 'half' is not a slot count"]),
    (["--lynx-expert-cache", "2", "--lynx-kernel", "sglang"], ["kernel 'sglang' cannot read experts"]),
    (["--lynx-cache-policy", "fifo"], ["--lynx-cache-policy", "invalid choice"]),
    (["--lynx-cache-prefetch"], ["cache_prefetch", "set expert_cache too"]),
])  # fmt: skip
def test_bad_lynx_settings_stop_the_launch(args, needles):
    proc = run_serve("--port", str(free_port()), *args)
    assert_rejected(proc, *needles)


@pytest.mark.parametrize("args,refused", [
    (["--attn-dp-size", "2"], "--attn-dp-size 2"),
    (["--attention-data-parallel-size=4"], "--attn-dp-size 4"),
    (["--attn-dp-size", "1"], None),
])  # fmt: skip
def test_data_parallel_attention_in_sglangs_current_spelling_is_refused_with_a_policy(args, refused):
    launch = ["--port", str(free_port()), *args]
    plan_launch(launch, on_cpu=True, environ={})  # baseline decides nothing: allowed
    if refused is None:
        plan_launch([*launch, "--lynx-policy", "lynx"], on_cpu=True, environ={})
        return
    with pytest.raises(LaunchError, match="data-parallel attention") as error:
        plan_launch([*launch, "--lynx-policy", "lynx"], on_cpu=True, environ={})
    assert refused in str(error.value)


def test_bad_lynx_environment_is_rejected_like_a_flag(monkeypatch):
    monkeypatch.setenv("LYNX_POLICY", "lynx")
    monkeypatch.setenv("LYNX_BUDGET", "mass=2")
    with pytest.raises(LaunchError, match="mass=2 out of range: mass must be in"):
        plan_launch(["--port", str(free_port())], on_cpu=True)


@pytest.mark.parametrize("flags, environ, message", [
    (["--lynx-budget", "experts=x"], {}, "--lynx-budget: 'experts=x': 'x' is not a number"),
    (["--lynx-expert-cache", "0"], {}, "--lynx-expert-cache: '0' out of range"),
    (["--lynx-param", "alpha"], {}, "--lynx-param: 'alpha' must look like key=value"),
    ([], {"LYNX_LAYERS": "one"}, "LYNX_LAYERS: 'one': 'one' is not a layer id"),
    (["--lynx-stats", "on"], {"LYNX_PRUNE_MIXED": "maybe"}, "LYNX_PRUNE_MIXED: 'maybe' must be true or false"),
])  # fmt: skip
def test_an_error_names_the_flag_or_variable_the_user_set(flags, environ, message):
    with pytest.raises(LaunchError) as error:
        plan_launch(["--port", str(free_port()), *flags], on_cpu=True, environ=environ)
    assert str(error.value).startswith(message), str(error.value)


def test_plan_carries_a_validated_config():
    plan = plan_launch(["--port", str(free_port()), "--lynx-policy", "oea", "--lynx-param", "k0=1",
                        "--lynx-kernel", "triton"], on_cpu=True, environ={})
    assert plan.config.policy == "oea" and plan.config.params == {"k0": 1}
    assert plan.env["TRITON_INTERPRET"] == "1"  # Triton kernels on CPU tensors run interpreted


def test_serve_help_lists_lynx_flags_and_points_to_sglang():
    proc = subprocess.run([sys.executable, "-m", "lynx_sglang.cli", "serve", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--lynx-policy", "--lynx-param", "--lynx-budget", "--lynx-layers", "--lynx-prune-mixed",
                 "--lynx-kernel", "--lynx-admin-token", "--lynx-config", "default: baseline", "--lynx-expert-cache",
                 "--lynx-cache-policy", "expert offload", "--lynx-cache-prefetch"):
        assert flag in proc.stdout
    assert "sglang.launch_server --help" in proc.stdout.replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize("flag", ["--tp", "--tp-size", "--tensor-parallel-size"])
def test_plan_binds_one_core_set_per_tensor_parallel_rank_on_cpu(flag):
    from lynx_sglang.cpu_runtime.threads import threads_bind, usable_cores

    plan = plan_launch(["--port", str(free_port()), "--lynx-policy", "lynx", flag, "2"], on_cpu=True, environ={})
    assert plan.env["SGLANG_CPU_OMP_THREADS_BIND"] == threads_bind(2, usable_cores())
    assert plan.env["OMP_NUM_THREADS"] == "1"


def test_plan_keeps_one_rank_and_a_users_binding_as_they_are():
    assert "SGLANG_CPU_OMP_THREADS_BIND" not in plan_launch(["--port", str(free_port())], on_cpu=True, environ={}).env
    users = {"SGLANG_CPU_OMP_THREADS_BIND": "1|0"}
    plan = plan_launch(["--port", str(free_port()), "--tp", "2"], on_cpu=True, environ=users)
    assert "SGLANG_CPU_OMP_THREADS_BIND" not in plan.env  # the user's variable reaches SGLang unchanged
    assert "SGLANG_CPU_OMP_THREADS_BIND" not in plan_launch(["--port", str(free_port()), "--tp", "2"], on_cpu=False).env


@pytest.mark.parametrize("args,environ,needle", [
    (["--tp", "zwei"], {}, "--tp 'zwei' is not a positive integer"),
    (["--tp=4"], {"SGLANG_CPU_OMP_THREADS_BIND": "0|1"}, "holds 2 core set(s), but --tp 4 needs one per rank"),
])  # fmt: skip
def test_bad_tensor_parallel_values_stop_the_cpu_launch(args, environ, needle):
    with pytest.raises(LaunchError) as error:
        plan_launch(["--port", str(free_port()), *args], on_cpu=True, environ=environ)
    assert needle in str(error.value)


def test_the_startup_hint_carries_the_api_key_header_only_where_one_is_needed():
    from lynx_sglang.serve import example_request

    assert "Authorization" not in example_request("http://127.0.0.1:30000")
    with_key = example_request("http://127.0.0.1:30000", with_api_key=True)
    assert "-H 'Authorization: Bearer <your --api-key>'" in with_key  # a placeholder: never the key in a log


def test_more_pipeline_stages_than_layers_is_one_line():
    """SGLang stopped at a bare assertion in its layer builder (exit 247) after the launch."""
    with pytest.raises(LaunchError, match=r"^--pp-size 5 is more than the model's 4 layers: each pipeline stage"):
        plan_launch(["--port", str(free_port()), "--pp-size", "5", "--lynx-policy", "lynx"], on_cpu=True)
    plan_launch(["--port", str(free_port()), "--pp-size", "4"], on_cpu=True)  # one layer a stage
