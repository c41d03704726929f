"""The model and the device of `lynx-sglang bench serve`: a named shape (config-only folder, random
weights made by SGLang), the default built checkpoint, or a given one; and what the device is."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lynx_sglang.config import ConfigError
from lynx_sglang.embedded.tokenizer import SPECIAL_TOKENS, vocabulary
from lynx_sglang.model_config import read_model_config
from lynx_sglang.model_source import model_name
from lynx_sglang.sglang_settings import FlagSettings
from lynx_sglang.tiny_checkpoints import NAMED_SHAPES, ShapeError, fit_layers, parse_shape, write_config_only

# The checkpoint built when no shape is named: experts far larger than a CPU's caches, 1.1 GB of bf16.
DEFAULT_SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 2, "num_attention_heads": 16,
                 "num_key_value_heads": 4, "num_local_experts": 8, "num_experts_per_tok": 2}  # fmt: skip
# The default shape is a Mixtral: its overrides are typed and checked as Mixtral-8x7B's fields.
DEFAULT_SHAPE_FIELDS = {**NAMED_SHAPES["mixtral-8x7b"], **DEFAULT_SHAPE}
# A named shape on a GPU: SGLang's --mem-fraction-static (weights and KV cache; the rest holds activations
# and CUDA graphs) unless given after `--`, and the layers fitted to it with a KV cache that holds the
# highest level's requests KV_MARGIN times over, beside what the device holds before the weights load
# (CUDA context, library workspaces). SGLang's own default fraction would leave an 80 GB card ~1 GB of
# KV cache beside 24 Mixtral layers: c=64 needs 2.4 GB, and queued requests would measure a smaller batch.
MEM_FRACTION_STATIC = 0.85
KV_MARGIN = 1.25
DEVICE_RESERVED_BYTES = 2 * 2**30
# Our folders carry the embedded character tokenizer (100 tokens, fewer than a named shape's vocab_size):
# prompts use its character ids, which are ids of both the tokenizer and the model.
PROMPT_IDS = (len(SPECIAL_TOKENS), len(vocabulary()))

_PROBE = """import json, torch
ok = torch.cuda.is_available()
print(json.dumps({"name": torch.cuda.get_device_name(0), "bytes": torch.cuda.get_device_properties(0).total_memory}
                 if ok else None))"""


class BenchError(ValueError):
    """A bad setting of `lynx-sglang bench serve`; the message is the one line printed."""


@dataclass(frozen=True)
class Device:
    name: str
    gpu_bytes: int | None  # memory of one GPU; None on a CPU


def describe_device() -> Device:
    """The CUDA device, or the CPU with its core count. Asked in a child process: CUDA initialised
    here would hold a context on the GPU for the whole benchmark, beside the servers."""
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
        gpu = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        gpu = None
    if gpu:
        return Device(gpu["name"], int(gpu["bytes"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Device(f"CPU: {cpu_model()}, {cores} cores", None)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass
class BenchModel:
    path: Path
    name: str  # the record's `shape`: the shape's name without overrides, `custom`, or the folder's name
    num_layers: int
    serve_flags: list[str] = field(default_factory=list)
    prompt_ids: tuple[int, int] = PROMPT_IDS
    note: str = ""

    def describe(self) -> str:
        return f"{self.name} ({self.num_layers} layers{', ' + self.note if self.note else ''}) at {self.path}"


def resolve_model(model_path: str | None, shape_text: str, serve_args: list[str], device: Device,
                  workdir: Path, check: Callable[[Path], None] | None = None, kv_tokens: int = 0) -> BenchModel:
    """`check(folder with the model's config.json)` runs before anything is built: a setting the model
    cannot take is refused before the default checkpoint's minutes and GBs. kv_tokens: the tokens the
    highest level keeps in the KV cache at once (prompts, outputs)."""
    check = check or (lambda model_dir: None)
    if model_path:
        if shape_text:
            raise BenchError(f"--shape {shape_text!r} cannot be combined with --model-path "
                             "(the checkpoint has its own shape)")
        model = given_model(Path(model_path).expanduser())
        check(model.path)
        return model
    try:
        name, overrides = parse_shape(shape_text, DEFAULT_SHAPE_FIELDS)
    except ShapeError as exc:
        raise BenchError(str(exc)) from None
    if name is None:
        shape = {**DEFAULT_SHAPE, **overrides}
        check(write_config_only({**DEFAULT_SHAPE_FIELDS, **overrides}, workdir / "custom"))
        return BenchModel(bench_checkpoint(shape), "custom", shape["num_hidden_layers"], note="built, bf16")
    fields = {**NAMED_SHAPES[name], **overrides}
    if device.gpu_bytes is not None and "num_hidden_layers" not in overrides:
        fraction = static_fraction(FlagSettings(serve_args).value("mem_fraction_static"))
        fields["num_hidden_layers"] = fitted_layers(name, fields, device, serve_args, fraction, kv_tokens)
    path = write_config_only(fields, workdir / name)
    check(path)
    return BenchModel(path, name, fields["num_hidden_layers"], ["--load-format", "dummy"],
                      note="random weights made by SGLang (--load-format dummy)")


def memory_flags(model: BenchModel, device: Device, serve_args: list[str]) -> list[str]:
    """SGLang's --mem-fraction-static for a named shape on a GPU, the one its layers were fitted to
    (none where given after `--`, or for a checkpoint: SGLang sizes its KV cache as it does)."""
    given = FlagSettings(serve_args).given("mem_fraction_static")
    if device.gpu_bytes is None or model.name not in NAMED_SHAPES or given:
        return []
    return ["--mem-fraction-static", str(MEM_FRACTION_STATIC)]


def static_fraction(given: str | None) -> float:
    if given is None:
        return MEM_FRACTION_STATIC
    try:
        fraction = float(given)
    except ValueError:
        raise BenchError(f"--mem-fraction-static {given!r} is not a number") from None
    if not 0 < fraction < 1:
        raise BenchError(f"--mem-fraction-static {given} must be between 0 and 1")
    return fraction


def fitted_layers(name: str, fields: dict, device: Device, serve_args: list[str], fraction: float,
                  kv_tokens: int) -> int:
    """The shape's layers, fewer where its weights would not leave room for the KV cache the levels
    need (one line says so)."""
    tp = FlagSettings(serve_args).value("tp_size")
    devices = int(tp) if tp and tp.isdigit() and int(tp) > 0 else 1  # tensor parallelism splits the weights
    usable = (device.gpu_bytes - DEVICE_RESERVED_BYTES) * devices
    try:
        layers = fit_layers(fields, usable, fraction, math.ceil(kv_tokens * KV_MARGIN))
    except ShapeError as exc:
        raise BenchError(str(exc)) from None
    if layers < fields["num_hidden_layers"]:
        print(f"{name}: {layers} of {fields['num_hidden_layers']} layers fit with a KV cache of "
              f"{kv_tokens} tokens in {fraction:.0%} (--mem-fraction-static) of {devices} x "
              f"{device.gpu_bytes / 2**30:.1f} GiB ({device.name}); serving {layers} layers "
              f"(give num_hidden_layers in --shape to choose)", flush=True)
    return layers


def given_model(path: Path) -> BenchModel:
    """A checkpoint folder or a Hugging Face Hub id (its config.json read from the cache or the Hub)."""
    try:
        config = read_model_config(path)
    except ConfigError as exc:
        raise BenchError(f"--model-path: {exc}") from None
    config = config.get("text_config", config)
    vocab = int(config.get("vocab_size") or PROMPT_IDS[1])
    return BenchModel(path, model_name(path), int(config.get("num_hidden_layers", 0)),
                      prompt_ids=(min(PROMPT_IDS[0], vocab - 1), vocab))


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lynx-sglang"


def bench_checkpoint(shape: dict) -> Path:
    """The random bf16 checkpoint of this shape, built on first use (a minute or two, GBs on disk)."""
    from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

    name = "bench-mixtral-" + "-".join(f"{shape[k]}" for k in sorted(shape))
    directory = cache_dir() / name
    if (directory / "model.safetensors").exists() or list(directory.glob("model-*.safetensors")):
        return directory
    expert_gb = 3 * shape["hidden_size"] * shape["intermediate_size"] * 2 * shape["num_local_experts"] \
        * shape["num_hidden_layers"] / 1e9
    print(f"building the benchmark checkpoint ({expert_gb:.2f} GB of bf16 experts) in {directory}", flush=True)
    cache_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=name + "-", dir=cache_dir()))
    build_tiny_checkpoint("mixtral", staging, seed=0, dtype="bfloat16", **shape)
    staging.rename(directory)  # atomic: an interrupted build never looks finished
    return directory
