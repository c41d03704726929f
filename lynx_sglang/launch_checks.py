"""The checks a launch passes before any SGLang process starts, and the SGLang settings this machine
needs: shared by `lynx-sglang serve` (its flags) and the offline engine (its keywords), so both refuse
the same settings with the same one-line messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lynx_sglang import gpu_runtime
from lynx_sglang.config import TPOT_WITH_TP, ConfigError, LynxConfig, build_config
from lynx_sglang.model_config import MoeShape, read_model_config
from lynx_sglang.model_source import local_config_dir
from lynx_sglang.policy_setup import validate_for_model
from lynx_sglang.sglang_settings import NO_CUDA_GRAPHS, GivenSettings, defaults_not_given

# On CPU, SGLang's defaults are GPU-shaped: its KV pool takes ~72 % of RAM (15 GB, a 55 s start), the
# idle scheduler spins half a core, and OpenMP spinning on shared cores made steps 8-26x slower.
# Settings under SGLang's keyword (ServerArgs field) names; `--<name>` on the command line.
CPU_DEFAULTS = {
    "device": "cpu",
    "attention_backend": "torch_native",
    **NO_CUDA_GRAPHS,
    "max_total_tokens": 4096,
    "sleep_on_idle": True,
    # The embedded model is float32; SGLang's "auto" would downcast it to float16.
    "dtype": "float32",
}
CPU_DEFAULT_ENV = {"OMP_NUM_THREADS": "1", "SGLANG_USE_CPU_ENGINE": "1"}
# Architectures whose attention SGLang builds in config.json's dtype whatever --dtype says (gpt_oss.py:
# params_dtype=config.dtype): another --dtype fails at the first request (F.linear on two dtypes).
DTYPE_FROM_CONFIG = ("GptOssForCausalLM",)
DTYPE_SPELLINGS = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# SGLang replays a mixed batch on the prefill CUDA graphs, captured as extend forwards the policy does
# not route: with --lynx-prune-mixed, prefill runs eagerly unless the user chose a prefill graph backend.
PRUNE_MIXED_ON_CUDA = {"cuda_graph_backend_prefill": "disabled"}


class LaunchError(Exception):
    """A problem found before launch; its message is the one line printed to the user."""


def checked_config(settings: dict, model_path: Path, given: GivenSettings, environ,
                   names: dict[str, str]) -> LynxConfig:
    """The lynx settings merged with the environment and config file, checked against the checkpoint
    and against the SGLang settings `given` (FlagSettings for `serve`, KeywordSettings for the engine).
    `names` spells each setting as its entry point takes it (`--lynx-budget`, `lynx_budget`)."""
    revision = given.value("revision")
    try:
        config_dir = local_config_dir(model_path, revision)
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    from_hub = config_dir != model_path
    checkpoint = check_checkpoint(config_dir, weights_needed=given.value("load_format") != "dummy" and not from_hub)
    check_dtype(checkpoint, given.value("dtype"))
    try:
        config = build_config(settings, environ, flag_names=names)
        shape = MoeShape.from_config(checkpoint, model_path)
        validate_for_model(config, shape)
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    check_parallelism(config, given)
    check_pipeline(shape, given)
    return config


def check_pipeline(shape: MoeShape | None, given: GivenSettings) -> None:
    """SGLang stops with a bare assertion in its layer builder where a stage would hold no layer."""
    stages = given.value("pp_size")
    if shape is not None and shape.num_layers and stages and stages.isdigit() and int(stages) > shape.num_layers:
        raise LaunchError(f"--pp-size {stages} is more than the model's {shape.num_layers} layers: "
                          "each pipeline stage needs at least one")


def machine_defaults(config: LynxConfig, given: GivenSettings, *, on_cpu: bool | None = None, environ=os.environ,
                     sgl_kernel_ok: bool | None = None, model_path: Path | None = None) -> tuple[dict, dict[str, str]]:
    """The SGLang settings (those not `given`) and environment this machine needs: a CPU's, the GPU
    runtime's where sgl_kernel does not import on CUDA, or none."""
    if on_cpu is None:
        on_cpu = not cuda_available()
    if on_cpu:
        from lynx_sglang.cpu_runtime.model_support import CpuModelError, cpu_model_settings

        model_settings, model_env = {}, {}
        if model_path is not None:
            try:
                model_settings, model_env = cpu_model_settings(model_path, given.value("revision"), given)
            except CpuModelError as exc:
                raise LaunchError(str(exc)) from None
        settings, env = cpu_defaults(config, given, environ)
        model_env = environment_not_set(model_env, environ)
        return {**settings, **model_settings}, {**env, **model_env}
    if not (gpu_runtime.sgl_kernel_importable() if sgl_kernel_ok is None else sgl_kernel_ok):
        return defaults_not_given(gpu_runtime.SERVE_SETTINGS, given), gpu_runtime.serve_environment(environ)
    return defaults_not_given(PRUNE_MIXED_ON_CUDA if config.prune_mixed else {}, given), {}


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def environment_not_set(defaults: dict[str, str], environ) -> dict[str, str]:
    """The default environment, each variable the user set keeping their value."""
    return {key: environ.get(key, value) for key, value in defaults.items()}


def cpu_defaults(config: LynxConfig, given: GivenSettings, environ) -> tuple[dict, dict[str, str]]:
    """The SGLang settings and environment a CPU needs, where the user did not set them."""
    from lynx_sglang import cpu_runtime
    from lynx_sglang.cpu_runtime import threads

    if not cpu_runtime.is_installed():
        raise LaunchError(
            "no GPU found and the CPU runtime glue is not enabled in this environment; "
            "run `python -m lynx_sglang.cpu_runtime install` (or `make install`)"
        )
    env = environment_not_set(CPU_DEFAULT_ENV, environ)
    try:  # one core set per rank, or SGLang asserts one NUMA node per rank
        sizes = {name: given.value(name) for name, *_ in threads.RANK_SETTINGS}
        env.update(threads.default_bind_env(sizes, environ.get(threads.BIND_ENV)))
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    if config.kernel == "triton":
        # Triton kernels on CPU tensors run in its interpreter, which is chosen when a kernel is
        # decorated: it must be on before any process imports them.
        env["TRITON_INTERPRET"] = "1"
    return defaults_not_given(CPU_DEFAULTS, given), env


def check_checkpoint(path: Path, weights_needed: bool = True) -> dict:
    """The checkpoint's config.json, once the folder passed the checks. Not `weights_needed`: SGLang makes
    random weights from config.json alone (`--load-format dummy`), or downloads a Hub model's weights itself."""
    try:
        config = read_model_config(path)
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    if "model_type" not in config:
        raise LaunchError(f"{path / 'config.json'} has no model_type; not a transformers model config")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights and weights_needed:
        raise LaunchError(
            f"model path {path} has no weight files (*.safetensors or *.bin); "
            "pass --load-format dummy to serve it with random weights"
        )
    for w in weights:
        if not os.access(w, os.R_OK):
            raise LaunchError(f"cannot read weight file {w}: permission denied")
    if weights and weights_needed and "Llama4ForCausalLM" in (config.get("architectures") or ()):
        # Llama4ForCausalLM loads through LlamaForCausalLM.load_weights, which has no mapping for the
        # fused `feed_forward.experts.*` tensors: it skips them and the experts keep uninitialised memory.
        raise LaunchError(
            f"{path} is a text-only Llama4ForCausalLM checkpoint: SGLang loads none of its expert weights "
            "(its answers would be garbage or NaN); serve the published Llama4ForConditionalGeneration "
            "checkpoint, or this one with --load-format dummy"
        )
    if weights_needed:
        check_safetensors(path, [w for w in weights if w.suffix == ".safetensors"])
    return config


def check_safetensors(path: Path, files: list[Path]) -> None:
    """Each file's header (8 bytes of length, then JSON naming every tensor's byte range) read as
    SGLang's loader will, and the index's shards present: a cut or corrupt file otherwise started SGLang,
    which died loading it (SafetensorError, exit 247) after its processes had started."""
    for file in files:
        try:
            with open(file, "rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                size = file.stat().st_size
                if length > size - 8:
                    raise ValueError(f"its header claims {length} bytes, the file holds {size}")
                header = json.loads(handle.read(length))
            ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
            if 8 + length + max(ends, default=0) > size:
                raise ValueError(f"its tensors end at byte {8 + length + max(ends)}, the file holds {size}: cut short")
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise LaunchError(f"weight file {file} is not a readable safetensors file ({exc})") from None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LaunchError(f"{index} is not a safetensors index ({exc})") from None
        missing = sorted(shard for shard in shards if not (path / shard).is_file())
        if missing:
            raise LaunchError(f"{index} names {len(missing)} weight file(s) the folder lacks: {', '.join(missing[:3])}")


def checkpoint_dtype_needed(config: dict) -> str | None:
    """The only dtype SGLang serves a checkpoint of this config.json in (DTYPE_FROM_CONFIG), or None: any."""
    own = config.get("torch_dtype") or config.get("dtype")
    if not isinstance(own, str) or not set(config.get("architectures") or ()) & set(DTYPE_FROM_CONFIG):
        return None
    return DTYPE_SPELLINGS.get(own, own)


def check_dtype(config: dict, dtype: str | None) -> None:
    needed = checkpoint_dtype_needed(config)
    if needed is not None and dtype not in (None, "auto") and DTYPE_SPELLINGS.get(dtype, dtype) != needed:
        raise LaunchError(f"dtype {dtype}: SGLang builds this model's attention in its checkpoint's dtype "
                          f"({needed}, config.json) and fails on another at the first request; serve it in {needed} "
                          f"(--dtype {needed})")


def check_parallelism(config: LynxConfig, given: GivenSettings) -> None:
    """A pruning policy needs every rank to take the same decision: ranks that route different tokens
    (expert parallelism, data-parallel attention or MoE) would not, nor would one latency controller per rank."""
    if config.policy == "baseline":
        return
    if refused := token_splitting_settings(given):
        spelled, reason = refused[0]
        raise LaunchError(f"{spelled} is not supported with --lynx-policy {config.policy}: {reason}")
    budget = config.parsed_budget
    if budget is not None and budget.kind == "tpot_ms" and given.value("tp_size") not in (None, "1"):
        raise LaunchError(TPOT_WITH_TP)


def token_splitting_settings(given: GivenSettings) -> list[tuple[str, str]]:
    """(the setting as the user spelled it, why a batch-wide decision does not hold) for each parallel
    setting given whose ranks route different tokens."""
    ep_size, moe_dp_size, attn_dp_size = (given.value(name) for name in ("ep_size", "moe_dp_size", "attn_dp_size"))
    found = []
    if ep_size not in (None, "1"):
        found.append((f"expert parallelism (--ep-size {ep_size})",
                      "use tensor parallelism (--tp N), where every rank takes the same decision"))
    if moe_dp_size not in (None, "1"):
        found.append((f"--moe-dp-size {moe_dp_size}",
                      "the MoE data-parallel groups route different tokens, so they would take different decisions"))
    if given.enabled("enable_dp_attention") or attn_dp_size not in (None, "1"):
        found.append(("--enable-dp-attention" if attn_dp_size in (None, "1") else f"--attn-dp-size {attn_dp_size}",
                      "data-parallel attention ranks route different tokens, so they would take different decisions"))
    return found
