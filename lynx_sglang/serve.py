"""`lynx-sglang serve`: start SGLang's HTTP server with the plugin, CPU-sane defaults and clean shutdown.

Validation happens before any child process starts, and each failure is one line naming the problem
(exit code 2). Every flag that is not ours goes to `python -m sglang.launch_server` unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lynx_sglang import gpu_runtime
from lynx_sglang.config import CONFIG_ENV, KERNELS, TPOT_WITH_TP, ConfigError, LynxConfig, build_config
from lynx_sglang.local_server import wait_healthy
from lynx_sglang.policy_setup import MoeShape, validate_for_model

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "embedded" / "checkpoint"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000

# On CPU, SGLang's defaults are GPU-shaped: its KV pool takes ~72 % of RAM (15 GB, a 55 s start), the
# idle scheduler spins half a core, and OpenMP spinning on shared cores made steps 8-26x slower.
CPU_DEFAULT_FLAGS = {
    "--device": "cpu",
    "--attention-backend": "torch_native",
    "--disable-cuda-graph": None,
    "--max-total-tokens": "4096",
    "--sleep-on-idle": None,
    # The embedded model is float32; SGLang's "auto" would downcast it to float16.
    "--dtype": "float32",
}
CPU_DEFAULT_ENV = {"OMP_NUM_THREADS": "1", "SGLANG_USE_CPU_ENGINE": "1"}


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
    ("--lynx-config", "config_file", {"metavar": "FILE"},
     "settings from a .yaml/.yml/.json file (flags > LYNX_* variables > file > policy defaults)"),
)  # fmt: skip


def serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lynx-sglang serve", allow_abbrev=False, add_help=False,
        description="Serve a MoE model through SGLang with batch-aware expert selection. Every flag that "
                    "is not listed here goes to SGLang unchanged: see `python -m sglang.launch_server --help`.",
    )  # fmt: skip
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument("--model-path", "--model", dest="model_path", metavar="DIR",
                        help="Hugging Face checkpoint folder (default: the embedded model)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"(default: {DEFAULT_HOST})")
    parser.add_argument("--port", default=str(DEFAULT_PORT), help=f"(default: {DEFAULT_PORT})")
    group = parser.add_argument_group("lynx-sglang settings (also LYNX_* environment variables)")
    for flag, dest, options, help_text in LYNX_FLAGS:
        group.add_argument(flag, dest=dest, help=help_text, **options)
    return parser


def parse_serve_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our flags -> namespace; everything else (SGLang's) -> list, in order."""
    namespace, sglang_args = serve_parser().parse_known_args(argv)
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


def _has_flag(args: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def check_checkpoint(path: Path, dummy_weights: bool = False) -> None:
    """`dummy_weights` (SGLang's `--load-format dummy`): SGLang makes random weights from config.json
    alone, so a folder without weight files is a valid model for it."""
    if not path.exists():
        raise LaunchError(f"model path {path} does not exist")
    if not path.is_dir():
        raise LaunchError(f"model path {path} is not a directory (expected a Hugging Face checkpoint folder)")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise LaunchError(f"model path {path} has no config.json; not a Hugging Face checkpoint") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LaunchError(f"cannot read {config_file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise LaunchError(f"{config_file} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise LaunchError(f"{config_file} has no model_type; not a transformers model config")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights and not dummy_weights:
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
            raise LaunchError(f"port {port} on {host} is not available ({exc.strerror})") from None


def plan_launch(argv: list[str], *, on_cpu: bool | None = None, environ=os.environ,
                sgl_kernel_ok: bool | None = None) -> LaunchPlan:
    """Turn `lynx-sglang serve` arguments into a validated launch plan (starts nothing).
    `sgl_kernel_ok` (probed when None, on CUDA only) says whether SGLang's compiled kernels import."""
    namespace, args = parse_serve_args(list(argv))
    model_path = Path(namespace.model_path).expanduser() if namespace.model_path else EMBEDDED_MODEL_DIR
    check_checkpoint(model_path, dummy_weights=_flag_value(args, "--load-format") == "dummy")
    try:
        config = build_config(lynx_settings(namespace), environ)
        validate_for_model(config, MoeShape.from_checkpoint(model_path))
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    check_parallelism(config, args)
    try:
        port = int(namespace.port)
    except ValueError:
        raise LaunchError(f"--port {namespace.port!r} is not an integer") from None
    check_port_free(namespace.host, port)

    if on_cpu is None:
        on_cpu = not cuda_available()
    env: dict[str, str] = {}
    sglang_args = ["--model-path", str(model_path), "--host", namespace.host, "--port", str(port)]
    if on_cpu:
        from lynx_sglang import cpu_runtime
        from lynx_sglang.cpu_runtime import threads

        if not cpu_runtime.is_installed():
            raise LaunchError(
                "no GPU found and the CPU runtime glue is not enabled in this environment; "
                "run `python -m lynx_sglang.cpu_runtime install` (or `make install`)"
            )
        for flag, value in CPU_DEFAULT_FLAGS.items():
            if not _has_flag(args, flag):
                sglang_args += [flag] if value is None else [flag, value]
        for key, value in CPU_DEFAULT_ENV.items():
            env[key] = environ.get(key, value)
        tp_value = _flag_value(args, "--tp", "--tp-size", "--tensor-parallel-size")
        try:  # one core set per tensor-parallel rank, or SGLang asserts one NUMA node per rank
            env.update(threads.default_bind_env(tp_value, environ.get(threads.BIND_ENV)))
        except ValueError as exc:
            raise LaunchError(str(exc)) from None
        if config.kernel == "triton":
            # Triton kernels on CPU tensors run in its interpreter, which is chosen when a kernel
            # is decorated: it must be on before any process imports them.
            env["TRITON_INTERPRET"] = "1"
    elif not (gpu_runtime.sgl_kernel_importable() if sgl_kernel_ok is None else sgl_kernel_ok):
        for flag, value in gpu_runtime.SERVE_FLAGS.items():
            if not _has_flag(args, flag):
                sglang_args += [flag, value]
        env.update(gpu_runtime.serve_environment(environ))
    sglang_args += args
    return LaunchPlan(model_path=model_path, host=namespace.host, port=port, sglang_args=sglang_args, env=env,
                      config=config)


def _flag_value(args: list[str], *names: str) -> str | None:
    """The value of SGLang's flag under any of its names (`--x V` or `--x=V`; last one wins)."""
    value = None
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name in names:
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
    return value


def check_parallelism(config: LynxConfig, args: list[str]) -> None:
    """Expert parallelism splits experts over ranks that see different tokens; a batch-wide active
    set is not defined there, so pruning policies refuse to start with it."""
    if config.policy == "baseline":
        return
    ep_size = _flag_value(args, "--ep-size", "--expert-parallel-size", "--ep")
    if ep_size not in (None, "1"):
        raise LaunchError(
            f"expert parallelism (--ep-size {ep_size}) is not supported with --lynx-policy {config.policy}: "
            "use tensor parallelism (--tp N), where every rank takes the same decision"
        )
    tp_size = _flag_value(args, "--tp", "--tp-size", "--tensor-parallel-size")
    budget = config.parsed_budget
    if budget is not None and budget.kind == "tpot_ms" and tp_size not in (None, "1"):
        raise LaunchError(TPOT_WITH_TP)
    if _has_flag(args, "--enable-dp-attention"):
        raise LaunchError(
            f"--enable-dp-attention is not supported with --lynx-policy {config.policy}: data-parallel "
            "attention ranks route different tokens, so they would take different decisions"
        )


def _live_group_members(pgid: int) -> list[int]:
    """Processes of the group that are still running (zombies have exited; they only await a reap)."""
    import psutil

    live = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                live.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return live


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so SGLang processes whose parent exited first can be reaped
    here instead of lingering as zombies under a pid 1 that does not reap (as in many containers)."""
    try:
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: zombies are the init process's to reap


def reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# How long SGLang gets to stop by itself after the signal we pass on. SIGTERM means "drain": SGLang
# finishes the requests in flight first (its watchdog looks every 5 s). The whole ladder stays under
# the deployment's 30 s stop_grace_period.
STOP_GRACE_S = {signal.SIGINT: 10.0, signal.SIGTERM: 20.0}


def _wait_group_gone(process, pgid: int, seconds: float, *, until_leader_exits=False, hurry=lambda: False) -> bool:
    """Wait until no process of the group runs (True), or `seconds` pass, or `hurry()` says so, or (if
    asked) the group's leader has exited while others still run: those were orphaned, waiting is
    pointless."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not hurry():
        leader_exited = process.poll() is not None  # also reaps our direct child
        reap_children()
        if not _live_group_members(pgid):
            reap_children()
            return True
        if until_leader_exits and leader_exited:
            return False
        time.sleep(0.05)
    return False


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGINT, hurry=lambda: False) -> None:
    """Stop SGLang the way SGLang stops itself, then make sure of it.

    The signal goes to SGLang's launcher alone, as if it had been sent to `sglang.launch_server`:
    SIGINT stops at once, SIGTERM drains requests in flight first; either way SGLang ends its own
    scheduler and detokenizer. Whatever of the group still runs after the grace period (or once the
    launcher is gone) gets SIGTERM, then SIGKILL. Signalling the whole group at once instead made the
    launcher see its scheduler die, report a crash and sleep 5 s for crash diagnostics.
    `hurry()` turning true (a second Ctrl-C) skips what is left of the grace period."""
    pgid = process.pid  # start_new_session=True made the child the leader of its own group
    if process.poll() is None:
        try:
            os.kill(pgid, sig)
        except ProcessLookupError:
            pass
        if _wait_group_gone(process, pgid, STOP_GRACE_S.get(sig, 10.0), until_leader_exits=True, hurry=hurry):
            return
    for group_signal, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, group_signal)
        except ProcessLookupError:
            break
        if _wait_group_gone(process, pgid, wait):
            return
    process.poll()
    reap_children()


def example_request(url: str) -> str:
    body = json.dumps({"model": "default", "prompt": "123+45=", "max_tokens": 8, "temperature": 0})
    return f"curl -s {url}/v1/completions -H 'Content-Type: application/json' -d '{body}'"


def serve(argv: list[str], *, startup_timeout: float = 600.0) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        serve_parser().print_help()
        return 0
    try:
        plan = plan_launch(argv)
    except LaunchError as exc:
        print(f"lynx-sglang serve: error: {exc}", file=sys.stderr)
        return 2

    runtime_dir = tempfile.mkdtemp(prefix="lynx-sglang-")
    env = dict(os.environ, **plan.env)
    env[CONFIG_ENV] = dataclasses.replace(plan.config, runtime_dir=runtime_dir).to_env()

    config = plan.config
    policy = config.policy + (f" {config.params}" if config.params else "")
    print(f"lynx-sglang: starting SGLang for {plan.model_path} on {plan.url} "
          f"(policy {policy}, budget {config.budget or 'none'}, kernel {config.kernel})", flush=True)
    if gpu_runtime.RUNTIME_ENV in plan.env:
        print(f"lynx-sglang: {gpu_runtime.LOG_LINE}", flush=True)
    if "SGLANG_CPU_OMP_THREADS_BIND" in plan.env:  # only the CPU defaults set it
        from lynx_sglang.cpu_runtime.threads import shared_cores_note

        if note := shared_cores_note(plan.env["SGLANG_CPU_OMP_THREADS_BIND"]):
            print(f"lynx-sglang: {note}", file=sys.stderr, flush=True)
    become_subreaper()
    # Own process group: whatever SGLang spawns can be found and stopped, even orphaned.
    process = subprocess.Popen(plan.command(), env=env, start_new_session=True)

    received = []  # the signal that stops us is the one SGLang gets: SIGTERM drains, SIGINT does not

    def on_signal(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt  # unwinds to the finally below, which stops the process group

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if wait_healthy(plan.url, process, startup_timeout):
            name = "the embedded model" if plan.model_path == EMBEDDED_MODEL_DIR else str(plan.model_path)
            print(f"lynx-sglang: serving {name} at {plan.url}", flush=True)
            print(f"lynx-sglang: try  {example_request(plan.url)}", flush=True)
        elif process.poll() is None:
            print(f"lynx-sglang: server not healthy after {startup_timeout:.0f} s; stopping", file=sys.stderr)
            return 1
        return process.wait() if process.poll() is None else process.returncode
    except KeyboardInterrupt:
        drain = received and received[0] == signal.SIGTERM
        print(f"lynx-sglang: stopping SGLang{' once the requests in flight finish' if drain else ''}",
              file=sys.stderr, flush=True)
        return 0
    finally:
        for s in previous:  # a second signal while SGLang stops: stop it the hard way, now
            signal.signal(s, lambda signum, _frame: received.append(signum))
        stop_process_group(process, received[0] if received else signal.SIGINT, hurry=lambda: len(received) > 1)
        shutil.rmtree(runtime_dir, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
