"""`lynx-sglang serve`: start SGLang's HTTP server with the plugin, CPU-sane defaults and clean shutdown.

Validation happens before any child process starts, and each failure is one line naming the problem
(exit code 2). Every flag that is not ours goes to `python -m sglang.launch_server` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lynx_sglang import gpu_runtime
from lynx_sglang.config import CACHE_POLICIES, CONFIG_ENV, KERNELS, TPOT_WITH_TP, ConfigError, LynxConfig, build_config
from lynx_sglang.local_server import ephemeral_port_range, port_listener, wait_healthy
from lynx_sglang.model_source import local_config_dir
from lynx_sglang.policy_setup import MoeShape, read_model_config, validate_for_model
from lynx_sglang.process_group import start_process_group, stop_process_group
from lynx_sglang.sglang_settings import NO_CUDA_GRAPHS, FlagSettings, GivenSettings, as_flags, defaults_not_given

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "embedded" / "checkpoint"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000
PORT_CHECK_INTERVAL_S = 2.0  # while SGLang starts: how often to look who holds its port
# SGLang's processes that serve no HTTP (process titles as the system may cut them, to 15 characters);
# its HTTP workers (`sglang::tokenizer_worker:N`, --tokenizer-worker-num) listen on the port themselves.
SGLANG_NON_HTTP_PROCESSES = ("sglang::schedul", "sglang::detoken", "sglang::data_pa")


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
# SGLang replays a mixed batch on the prefill CUDA graphs, captured as extend forwards the policy does
# not route: with --lynx-prune-mixed, prefill runs eagerly unless the user chose a prefill graph backend.
PRUNE_MIXED_ON_CUDA = {"cuda_graph_backend_prefill": "disabled"}


class LaunchError(Exception):
    """A problem found before launch; its message is the one line printed to the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the problem, not argparse's usage dump
        raise LaunchError(message)


# (flag, config field, argparse options, help). Defaults shown are those of LynxConfig.
LYNX_FLAGS = (
    ("--lynx-policy", "policy", {"metavar": "NAME"},
     "expert-selection policy (default: baseline; see `lynx-sglang policies`)"),
    ("--lynx-param", "params", {"metavar": "KEY=VALUE", "action": "append"},
     "a policy parameter, repeatable (default: the policy's per-model defaults)"),
    ("--lynx-budget", "budget", {"metavar": "SPEC"},
     "experts=N | fraction=F | mass=P | tpot_ms=T | none (default: none)"),
    ("--lynx-layers", "layers", {"metavar": "LIST"},
     "decoder layers the policy applies to, e.g. 1-3,5 (default: all)"),
    ("--lynx-prune-mixed", "prune_mixed", {"action": "store_const", "const": True},
     "also prune the decode rows of mixed prefill+decode batches (default: off)"),
    ("--lynx-kernel", "kernel", {"choices": KERNELS},
     "expert compute of pruned decode steps (default: auto)"),
    ("--lynx-admin-token", "admin_token", {"metavar": "TOKEN"},
     "token for POST /lynx/policy and /lynx/stats/reset (default: none = those endpoints disabled)"),
    ("--lynx-stats", "stats", {"choices": ("on", "off")}, "routing statistics (default: on)"),
    ("--lynx-expert-cache", "expert_cache", {"metavar": "N|N%"},
     "expert offload: N resident experts per MoE layer (N%%: that share, rounded up), the rest in host "
     "memory (default: off, all resident; docs/offload.md)"),
    ("--lynx-cache-policy", "cache_policy", {"choices": CACHE_POLICIES},
     "the expert cache's replacement policy (default: lru)"),
    ("--lynx-cache-prefetch", "cache_prefetch", {"action": "store_const", "const": True},
     "prefetch each cached layer's likely experts during the layer before (default: off)"),
    ("--lynx-config", "config_file", {"metavar": "FILE"},
     "settings from a .yaml/.yml/.json file (flags > LYNX_* variables > file > policy defaults)"),
)  # fmt: skip
FLAG_NAMES = {dest: flag for flag, dest, *_ in LYNX_FLAGS}  # how an error names a setting


def serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lynx-sglang serve", allow_abbrev=False, add_help=False,
        description="Serve a MoE model through SGLang with batch-aware expert selection. Every flag that "
                    "is not listed here goes to SGLang unchanged: see `python -m sglang.launch_server --help`.",
    )  # fmt: skip
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument("--model-path", "--model", dest="model_path", metavar="DIR",
                        help="Hugging Face checkpoint folder or Hub id (default: the embedded model)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"(default: {DEFAULT_HOST})")
    parser.add_argument("--port", default=str(DEFAULT_PORT), help=f"(default: {DEFAULT_PORT})")
    group = parser.add_argument_group("lynx-sglang settings (also LYNX_* environment variables)")
    for flag, dest, options, help_text in LYNX_FLAGS:
        group.add_argument(flag, dest=dest, help=help_text, **options)
    return parser


def expand_sglang_config(argv: list[str]) -> list[str]:
    """SGLang's own `--config FILE.yaml` merged into the flags by SGLang's code (the file's first, the
    command line's after them, so they win), so that the model, port and parallel settings are read
    and checked wherever they were given; `--lynx-*` keys in the file become flags too."""
    if "--config" not in argv:  # SGLang merges only this spelling
        return argv
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    try:
        return ConfigArgumentMerger(parser).merge_config_with_args(argv)
    except Exception as exc:  # noqa: BLE001 - a bad file (YAML, type, option) is one line, as SGLang's own
        raise LaunchError(f"--config: {exc}") from None


def parse_serve_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our flags -> namespace; everything else (SGLang's) -> list, in order."""
    namespace, sglang_args = serve_parser().parse_known_args(expand_sglang_config(argv))
    unknown = [arg.partition("=")[0] for arg in sglang_args if arg.startswith("--lynx-")]
    if unknown:
        known = ", ".join(flag for flag, *_ in LYNX_FLAGS)
        raise LaunchError(f"unknown flag {unknown[0]}; known --lynx-* flags: {known}")
    return namespace, sglang_args


def lynx_settings(namespace: argparse.Namespace) -> dict:
    """The --lynx-* settings the user gave (unset ones stay out, so env and file can fill them)."""
    settings = {dest: getattr(namespace, dest) for _, dest, *_ in LYNX_FLAGS}
    return {name: value for name, value in settings.items() if value is not None}


@dataclass
class LaunchPlan:
    model_path: Path
    host: str
    port: int
    sglang_args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    config: LynxConfig = field(default_factory=LynxConfig)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sglang.launch_server", *self.sglang_args]


def plan_launch(argv: list[str], *, on_cpu: bool | None = None, environ=os.environ,
                sgl_kernel_ok: bool | None = None) -> LaunchPlan:
    """Turn `lynx-sglang serve` arguments into a validated launch plan (starts nothing).
    `sgl_kernel_ok` (probed when None, on CUDA only) says whether SGLang's compiled kernels import."""
    namespace, args = parse_serve_args(list(argv))
    model_path = Path(namespace.model_path).expanduser() if namespace.model_path else EMBEDDED_MODEL_DIR
    given = FlagSettings(args)
    config = checked_config(lynx_settings(namespace), model_path, given, environ)
    port = parse_port(namespace.port)
    check_port_free(namespace.host, port)
    defaults, env = machine_defaults(config, given, on_cpu=on_cpu, environ=environ, sgl_kernel_ok=sgl_kernel_ok,
                                     model_path=model_path)
    ours = ["--model-path", str(model_path), "--host", namespace.host, "--port", str(port)]
    return LaunchPlan(model_path=model_path, host=namespace.host, port=port,
                      sglang_args=ours + as_flags(defaults) + args, env=env, config=config)  # fmt: skip


def checked_config(settings: dict, model_path: Path, given: GivenSettings, environ,
                   names: dict[str, str] = FLAG_NAMES) -> LynxConfig:
    """The lynx settings merged with the environment and config file, checked against the checkpoint
    and against the SGLang settings `given` (FlagSettings for `serve`, KeywordSettings for the engine)."""
    revision = given.value("revision")
    try:
        config_dir = local_config_dir(model_path, revision)
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    from_hub = config_dir != model_path
    check_checkpoint(config_dir, weights_needed=given.value("load_format") != "dummy" and not from_hub)
    try:
        config = build_config(settings, environ, flag_names=names)
        validate_for_model(config, MoeShape.from_checkpoint(model_path, revision))
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    check_parallelism(config, given)
    return config


def machine_defaults(config: LynxConfig, given: GivenSettings, *, on_cpu: bool | None = None, environ=os.environ,
                     sgl_kernel_ok: bool | None = None, model_path: Path | None = None) -> tuple[dict, dict[str, str]]:
    """The SGLang settings (those not `given`) and environment this machine needs: a CPU's, the GPU
    runtime's where sgl_kernel does not import on CUDA, or none."""
    if on_cpu is None:
        on_cpu = not cuda_available()
    if on_cpu:
        from lynx_sglang.cpu_runtime.model_support import why_not_on_cpu

        if model_path is not None and (why := why_not_on_cpu(model_path, given.value("revision"))):
            raise LaunchError(why)
        return cpu_defaults(config, given, environ)
    if not (gpu_runtime.sgl_kernel_importable() if sgl_kernel_ok is None else sgl_kernel_ok):
        return defaults_not_given(gpu_runtime.SERVE_SETTINGS, given), gpu_runtime.serve_environment(environ)
    return defaults_not_given(PRUNE_MIXED_ON_CUDA if config.prune_mixed else {}, given), {}


def parse_port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"--port {text!r} is not an integer") from None


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def cpu_defaults(config: LynxConfig, given: GivenSettings, environ) -> tuple[dict, dict[str, str]]:
    """The SGLang settings and environment a CPU needs, where the user did not set them."""
    from lynx_sglang import cpu_runtime
    from lynx_sglang.cpu_runtime import threads

    if not cpu_runtime.is_installed():
        raise LaunchError(
            "no GPU found and the CPU runtime glue is not enabled in this environment; "
            "run `python -m lynx_sglang.cpu_runtime install` (or `make install`)"
        )
    env = {key: environ.get(key, value) for key, value in CPU_DEFAULT_ENV.items()}
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


def check_checkpoint(path: Path, weights_needed: bool = True) -> None:
    """Not `weights_needed`: SGLang makes random weights from config.json alone (`--load-format dummy`),
    or downloads a Hub model's weights itself."""
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


def check_port_free(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise LaunchError(f"--port {port} is out of range (1..65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like uvicorn: connections of a recent server in TIME_WAIT do not block the port; a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            holder = port_listener(port)
            held = f"; {process_named(holder)} listens on it" if holder is not None else ""
            raise LaunchError(f"port {port} on {host} is not available ({exc.strerror}{held}); "
                              "choose another --port") from None


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


def serve(argv: list[str], *, startup_timeout: float = 600.0) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        serve_parser().print_help()
        return 0
    try:
        plan = plan_launch(argv)
    except LaunchError as exc:
        print(f"lynx-sglang serve: error: {exc}", file=sys.stderr)
        return 2
    announce_start(plan)
    runtime_dir = tempfile.mkdtemp(prefix="lynx-sglang-")
    try:
        return run_sglang(plan, runtime_dir, startup_timeout)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


def announce_start(plan: LaunchPlan) -> None:
    config = plan.config
    policy = config.policy + (f" {config.params}" if config.params else "")
    print(f"lynx-sglang: starting SGLang for {plan.model_path} on {plan.url} "
          f"(policy {policy}, budget {config.budget or 'none'}, kernel {config.kernel})", flush=True)
    if gpu_runtime.RUNTIME_ENV in plan.env:
        print(f"lynx-sglang: {gpu_runtime.LOG_LINE}", flush=True)
    given = FlagSettings(plan.sglang_args)
    if (replicas := given.value("dp_size")) not in (None, "1") and not given.enabled("enable_dp_attention"):
        print(f"lynx-sglang: --dp-size {replicas}: a switch reaches every replica, each at its next step; /lynx/stats "
              "adds up the replicas' figures and lists each under \"replicas\"", file=sys.stderr, flush=True)
    if "SGLANG_CPU_OMP_THREADS_BIND" in plan.env:  # only the CPU defaults set it
        from lynx_sglang.cpu_runtime.threads import shared_cores_note

        if note := shared_cores_note(plan.env["SGLANG_CPU_OMP_THREADS_BIND"]):
            print(f"lynx-sglang: {note}", file=sys.stderr, flush=True)


def run_sglang(plan: LaunchPlan, runtime_dir: str, startup_timeout: float) -> int:
    """Run SGLang until it exits or a signal stops us; SGLang gets that same signal (SIGTERM drains
    the requests in flight, SIGINT does not)."""
    config = replace(plan.config, runtime_dir=runtime_dir)
    process = start_process_group(plan.command(), {**os.environ, **plan.env, CONFIG_ENV: config.to_env()})
    received = []

    def on_signal(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt  # unwinds to the finally below, which stops the process group

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return watch_sglang(plan, process, startup_timeout)
    except KeyboardInterrupt:
        drain = received and received[0] == signal.SIGTERM
        print(f"lynx-sglang: stopping SGLang{' once the requests in flight finish' if drain else ''}",
              file=sys.stderr, flush=True)
        return 0
    finally:
        for s in previous:  # a second signal while SGLang stops: stop it the hard way, now
            signal.signal(s, lambda signum, _frame: received.append(signum))
        stop_process_group(process, received[0] if received else signal.SIGINT, hurry=lambda: len(received) > 1)
        for s, handler in previous.items():
            signal.signal(s, handler)


def watch_sglang(plan: LaunchPlan, process, startup_timeout: float) -> int:
    """Say when SGLang is serving, then wait for it to exit; 1 if it is not healthy in time, or if
    another process took its port while it started (SGLang then hangs after uvicorn's bind error)."""
    deadline = time.monotonic() + startup_timeout
    while not wait_healthy(plan.url, process, min(PORT_CHECK_INTERVAL_S, max(deadline - time.monotonic(), 0))):
        if process.poll() is not None:
            return process.wait()
        holder = port_thief(plan.port, process.pid)
        if holder is not None:
            print(f"lynx-sglang: port {plan.port} was taken by {process_named(holder)} while SGLang "
                  f"started; stopping. Choose another --port, below {ephemeral_port_range()[0]} (ports at or "
                  "above it are the ones the system hands out, to SGLang's own processes too)", file=sys.stderr)
            return 1
        if time.monotonic() >= deadline:
            print(f"lynx-sglang: server not healthy after {startup_timeout:.0f} s; stopping", file=sys.stderr)
            return 1
    name = "the embedded model" if plan.model_path == EMBEDDED_MODEL_DIR else str(plan.model_path)
    print(f"lynx-sglang: serving {name} at {plan.url}", flush=True)
    print(f"lynx-sglang: try  {example_request(plan.url)}", flush=True)
    return process.wait()


def port_thief(port: int, sglang_pid: int) -> int | None:
    """A process listening on SGLang's port that is not SGLang's HTTP server: another program, or one of
    SGLang's own that serves no HTTP (its scheduler's gloo listeners take ports the system hands out).
    SGLang's HTTP server is its first process, or with --tokenizer-worker-num its HTTP worker processes."""
    import psutil

    holder = port_listener(port)
    if holder is None or holder == sglang_pid:
        return None
    try:
        family = {child.pid for child in psutil.Process(sglang_pid).children(recursive=True)}
    except psutil.Error:
        return None
    return holder if holder not in family or process_name(holder).startswith(SGLANG_NON_HTTP_PROCESSES) else None


def process_name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "another process"


def process_named(pid: int) -> str:
    """`name (pid N)`, as the port messages name a process."""
    return f"{process_name(pid)} (pid {pid})"


def example_request(url: str) -> str:
    body = json.dumps({"model": "default", "prompt": "123+45=", "max_tokens": 8, "temperature": 0})
    return f"curl -s {url}/v1/completions -H 'Content-Type: application/json' -d '{body}'"
