"""`lynx-sglang serve`: start SGLang's HTTP server with the plugin, CPU-sane defaults and clean shutdown.

Validation (launch_checks.py) happens before any child process starts, and each failure is one line
naming the problem (exit code 2). Every flag that is not ours goes to `python -m sglang.launch_server`
unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lynx_sglang import gpu_runtime
from lynx_sglang.config import CACHE_POLICIES, CONFIG_ENV, KERNELS, LynxConfig
from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
from lynx_sglang.launch_checks import LaunchError, checked_config, machine_defaults
from lynx_sglang.local_server import check_port_free, ephemeral_port_range, port_thief, process_named, wait_healthy
from lynx_sglang.process_group import start_process_group, stop_process_group
from lynx_sglang.sglang_settings import FlagSettings, as_flags

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000
PORT_CHECK_INTERVAL_S = 2.0  # while SGLang starts: how often to look who holds its port


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
    config = checked_config(lynx_settings(namespace), model_path, given, environ, FLAG_NAMES)
    port = parse_port(namespace.port)
    check_port_free(namespace.host, port)
    defaults, env = machine_defaults(config, given, on_cpu=on_cpu, environ=environ, sgl_kernel_ok=sgl_kernel_ok,
                                     model_path=model_path)
    ours = ["--model-path", str(model_path), "--host", namespace.host, "--port", str(port)]
    return LaunchPlan(model_path=model_path, host=namespace.host, port=port,
                      sglang_args=ours + as_flags(defaults) + args, env=env, config=config)  # fmt: skip


def parse_port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"--port {text!r} is not an integer") from None


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
    with_key = FlagSettings(plan.sglang_args).given("api_key")
    print(f"lynx-sglang: try  {example_request(plan.url, with_key)}", flush=True)
    return process.wait()


def example_request(url: str, with_api_key: bool = False) -> str:
    body = json.dumps({"model": "default", "prompt": "123+45=", "max_tokens": 8, "temperature": 0})
    key = " -H 'Authorization: Bearer <your --api-key>'" if with_api_key else ""  # never the key itself in a log
    return f"curl -s {url}/v1/completions -H 'Content-Type: application/json'{key} -d '{body}'"
