"""What `ab` and `sweep` share: flags, the server (started here or reached by URL), the measured run
with its interruption handling, and the files written under --out."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
from lynx_sglang.local_server import server_url

from .arms import Arm
from .client import (ENDPOINTS, AdminClient, ArmRefused, ServerError, describe_scope, describe_setting, served_scope,
                     setting_of)
from .launch import ManagedServer, interruption, served_address, terminate_as_interrupt
from .runner import Runner, plan_steps
from .store import Block, MeasurementStore, ResumeError
from .tasks import BUILTIN_TASK, Item, load_items, make_scorer

EXIT_INTERRUPTED = 130


def command_parser(tool: str, doc: str) -> argparse.ArgumentParser:
    """`lynx-sglang TOOL`'s parser: the module docstring's first line as description, the rest as epilog."""
    first, _, rest = doc.partition("\n")
    # No abbreviated flags: a report could not tell that `--admin-tok T` holds a token to hide.
    return argparse.ArgumentParser(prog=f"lynx-sglang {tool}", description=first, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=rest.lstrip("\n"))


def parse_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the flags every experiment shares; `args.command` is the command line as the
    reports show it: these flags, not the process's (calibrate runs sweep and ab in its own process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    check_common(parser, args)
    args.command = shlex.join([*parser.prog.split(), *without_secrets(argv)])
    return args


SECRET_FLAGS = ("--admin-token", "--lynx-admin-token", "--api-key", "--admin-api-key")
SERVE_ARG = "--serve-arg"
HIDDEN = "***"


def without_secrets(argv: list[str]) -> list[str]:
    """`argv` with the value of every admin token hidden, also inside --serve-arg: reports are shared."""
    shown, hide_next = [], False
    for arg in argv:
        if arg == SERVE_ARG:  # its value follows as the next item; a pending token value stays pending
            shown.append(arg)
            continue
        head = SERVE_ARG + "=" if arg.startswith(SERVE_ARG + "=") else ""
        flag, equals, _ = arg[len(head):].partition("=")
        if hide_next:
            shown.append(head + HIDDEN)
            hide_next = False
        elif flag in SECRET_FLAGS:
            shown.append(f"{head}{flag}={HIDDEN}" if equals else arg)
            hide_next = not equals
        else:
            shown.append(arg)
    return shown


def add_common_arguments(parser: argparse.ArgumentParser, *, default_n: int, default_levels: str, default_out: str) -> None:
    server = parser.add_argument_group("server (default: start one on the embedded model)")
    server.add_argument("--model-path", help="checkpoint folder or Hugging Face Hub id to serve (default: the embedded model)")
    server.add_argument("--url", type=server_url, help="use this running lynx-sglang server instead of starting one")
    server.add_argument("--admin-token", help="the running server's --lynx-admin-token (with --url)")
    server.add_argument("--api-key", help="the running server's SGLang --api-key, if it has one (with --url)")
    server.add_argument("--admin-api-key", help="the running server's SGLang --admin-api-key, if it has one (with --url): "
                        "its admin routes, the policy switches and statistics resets, take that key instead")
    server.add_argument("--port", type=int, help="port of the server the command starts (default: a free one)")
    server.add_argument("--serve-arg", action="append", default=[], metavar="FLAG",
                        help="extra flag for the started server, repeatable (e.g. --serve-arg=--max-running-requests=64)")
    work = parser.add_argument_group("requests")
    work.add_argument("--task", default=BUILTIN_TASK,
                      help=f"'{BUILTIN_TASK}' (the embedded model's held-out problems) or a JSONL file of "
                           '{"prompt": ..., "answer": ..., "task"?: ...} lines')
    work.add_argument("--n", type=int, default=default_n, help=f"items per arm and level (default {default_n})")
    work.add_argument("--concurrency", default=default_levels, help=f"requests in flight, comma list (default {default_levels})")
    work.add_argument("--max-tokens", type=int, default=16, help="output tokens per request at most (default 16)")
    work.add_argument("--seed", type=int, default=0, help="which held-out problems; seeds the bootstrap too")
    work.add_argument("--score", default="exact", help="exact (default), number (last number, GSM8K-style) or regex:PATTERN")
    work.add_argument("--endpoint", choices=ENDPOINTS, default="completions", help="/v1/completions or /v1/chat/completions")
    work.add_argument("--blocks", type=int, default=4, help="slices per level; arms alternate slice by slice (default 4)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=default_out, help=f"directory for the report, results and plots (default {default_out})")
    out.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples per interval (default 4000)")


@dataclass
class Experiment:
    tool: str  # "ab" or "sweep"
    args: argparse.Namespace
    arms: list[Arm]
    levels: list[int]
    items: list[Item]
    raw: dict = field(default_factory=dict)  # (level, arm) -> ArmData, kept for the plots
    restore: bool = True  # put a --url server back in the setting it had before the run
    original: dict | None = None  # that setting (client.setting_of), read when the run connects

    @property
    def out(self) -> Path:
        return Path(self.args.out)

    def results(self, run_info: dict, **figures) -> dict:
        """results.json: what ran, how it went (`run_info`), and the tool's figures."""
        config = {key: value for key, value in self.config().items() if key != "items"}
        return {"tool": f"lynx-sglang {self.tool}", **run_info,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": config, **figures}

    def command(self) -> str:
        """As parse_command recorded it; for flags parsed elsewhere, the process's own command line."""
        recorded = getattr(self.args, "command", None)
        return recorded or shlex.join(["lynx-sglang", self.tool, *without_secrets(sys.argv[2:])])

    def config(self) -> dict:
        a = self.args
        return {
            "tool": f"lynx-sglang {self.tool}", "arms": [arm.as_json() for arm in self.arms], "levels": self.levels,
            "items": [[i.prompt, i.answer, i.task] for i in self.items], "task": a.task, "n": a.n, "seed": a.seed,
            "score": a.score, "endpoint": a.endpoint, "max_tokens": a.max_tokens, "blocks": a.blocks,
            "model": None if a.url else (a.model_path or "embedded"), "url_mode": bool(a.url),
            "serve_args": without_secrets(a.serve_arg), "command": self.command(),
        }


def parse_levels(text: str) -> list[int]:
    """`--concurrency`'s comma list -> its levels: positive integers, in the order given, none twice."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"--concurrency: {text!r} lists no level")
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--concurrency: {part!r} is not a positive integer")
    levels = [int(part) for part in parts]
    if len(set(levels)) != len(levels):
        raise ValueError(f"--concurrency: {text!r} lists a level twice")
    return levels


def check_common(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.url and not args.admin_token:
        parser.error("--url needs --admin-token (the server's --lynx-admin-token): arms are switched through /lynx/policy")
    for flag in ("api_key", "admin_api_key"):
        if getattr(args, flag) and not args.url:
            parser.error(f"--{flag.replace('_', '-')} is the running server's (with --url); the server the command "
                         "starts has none")
    if args.url and (args.model_path or args.port):
        parser.error("--model-path and --port are for the server the command starts; with --url the running server is used")
    try:
        _, serve_port = served_address(args.serve_arg)
    except ValueError as error:
        parser.error(f"--serve-arg: {error}")
    if serve_port is not None:
        parser.error(f"--serve-arg --port {serve_port}: give the started server's port as {parser.prog}'s own "
                     f"--port {serve_port}")
    for name in ("n", "max_tokens", "blocks", "bootstrap"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def prepare_items(args) -> list[Item]:
    items = load_items(args.task, args.n, args.seed)
    make_scorer(args.score)  # a bad --score fails here, before any server starts
    if len(items) < args.n:
        print(f"note: {args.task} has {len(items)} items; using all of them", file=sys.stderr)
    return items


Analyse = Callable[[Experiment, list[Block], dict], dict]
Publish = Callable[[Experiment, dict, Console], None]


def run(experiment: Experiment, analyse: Analyse, publish: Publish, *, resume: bool = False) -> int:
    """Measure, then analyse and publish whatever was measured, also after Ctrl-C, SIGTERM or a dead server."""
    with terminate_as_interrupt():
        return measure_and_publish(experiment, analyse, publish, resume)


def measure_and_publish(experiment: Experiment, analyse: Analyse, publish: Publish, resume: bool) -> int:
    console = Console(stderr=True)
    store = MeasurementStore(experiment.out)
    try:
        header, done = store.plan(experiment.config(), resume=resume)
    except ResumeError as error:
        say(console, f"lynx-sglang {experiment.tool}: error: {error}", "red")
        return 2
    started = time.monotonic()
    try:
        server, admin, url = connect(experiment, console)
    except ServerError as error:  # unreachable URL, refused token, a server that would not start
        say(console, f"lynx-sglang {experiment.tool}: error: {error}", "red")
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    say_scope(experiment, console)
    store.begin(header, done)
    status, message, skipped = measure(experiment, store, done, server, admin, url, console)
    failed = status in ("server-error", "refused")
    if message:
        say(console, f"error: {message}" if failed else message, "red" if failed else "yellow")
    blocks = store.load()[1]
    if not blocks and status == "refused":  # a setting the model does not take: a bad input
        return 2
    if not blocks:
        say(console, f"nothing was measured; {store.path} holds the configuration only")
        return EXIT_INTERRUPTED if status == "interrupted" else 1
    run_info = {"status": status, "message": message, "seconds": time.monotonic() - started, "blocks": len(blocks),
                "skipped_arms": skipped, "versions": versions(experiment),
                "server_scope": served_scope(experiment.original or {})}
    results = analyse(experiment, blocks, run_info)
    write_json(experiment.out / "results.json", results)
    publish(experiment, results, console)
    if status != "complete":
        say(console, f"partial results ({len(blocks)} blocks) written to {experiment.out}; "
                     f"`--resume` continues from {store.path.name}")
    return {"complete": 0, "interrupted": EXIT_INTERRUPTED}.get(status, 1)


def measure(experiment: Experiment, store: MeasurementStore, done: list[Block], server: ManagedServer | None,
            admin: AdminClient, url: str, console: Console) -> tuple[str, str | None, list[dict]]:
    """Every step not done yet, each block saved as it ends; (status, why it stopped early, the arms the
    server refused). A sweep skips a refused arm and goes on; for `ab` a refusal ends the run. A server
    started here is stopped here."""
    args = experiment.args
    runner = Runner(url=url, admin=admin, items=experiment.items, scorer=make_scorer(args.score),
                    endpoint=args.endpoint, max_tokens=args.max_tokens, store=store, server=server, console=console,
                    skip_refused=experiment.tool == "sweep",
                    reference=experiment.arms[0].label if experiment.tool == "sweep" else None)
    status, message = "complete", None
    try:
        runner.run(plan_steps(experiment.arms, experiment.levels, len(experiment.items), args.blocks), done)
    except KeyboardInterrupt as interrupt:
        status, message = "interrupted", f"interrupted ({interruption(interrupt)})"
    except ArmRefused as error:  # ab's arms, a sweep's reference or all of its others: a setting, not the server
        status, message = "refused", str(error)
    except ServerError as error:
        status, message = "server-error", server_message(error, server)
    finally:
        if server is not None:
            server.stop()
        elif experiment.restore:
            restore_setting(admin, experiment.original, console)
    return status, message, [{"arm": label, "reason": reason} for label, reason in runner.refused.items()]


def connect(experiment: Experiment, console: Console) -> tuple[ManagedServer | None, AdminClient, str]:
    args = experiment.args
    if args.url:
        admin = AdminClient(args.url, args.admin_token, args.api_key, args.admin_api_key)
        experiment.original = setting_of(admin.check_admin())
        return None, admin, args.url.rstrip("/")
    experiment.out.mkdir(parents=True, exist_ok=True)
    server = ManagedServer(experiment.out / "server.log", policy=experiment.arms[0].policy,
                           model_path=args.model_path, serve_args=args.serve_arg, port=args.port)
    say(console, f"starting lynx-sglang serve on port {server.port} (log: {server.log_path})")
    try:
        server.wait_healthy()
        admin = AdminClient(server.url, server.token)
        experiment.original = setting_of(admin.check_admin())
    except BaseException:
        server.stop()
        raise
    return server, admin, server.url


def say_scope(experiment: Experiment, console: Console) -> None:
    scope = describe_scope(served_scope(experiment.original or {}))
    if scope:
        say(console, f"note: the server has {scope}; every arm given as a policy runs with it", "yellow")


def restore_setting(admin: AdminClient, setting: dict | None, console: Console) -> None:
    """Put a server the run switched between arms back in `setting`, its own before the run, and say
    so (its statistics stay reset: the run reset them before every block)."""
    if setting is None:
        return
    try:
        admin.restore(setting)
    except ServerError as error:
        say(console, f"could not restore the server's setting from before the run ({describe_setting(setting)}): "
                     f"{error}", "red")
        return
    say(console, f"restored the server's setting from before the run: {describe_setting(setting)}")


def say(console: Console, text: str, style: str | None = None) -> None:
    """One message, never wrapped (paths and URLs stay greppable), never read as rich markup."""
    console.print(escape(text), style=style, soft_wrap=True)


def server_message(error: ServerError, server: ManagedServer | None) -> str:
    text = str(error)
    # Whatever the error (an HTTP 5xx while SGLang drains, a failed policy switch between arms), a managed
    # server that exits soon after it died: waiting for it, on this error path only, says so reliably.
    if server is not None and "died" not in text and "exited" not in text and server.exited_within():
        return (f"the server died (exit code {server.process.returncode}; log: {server.log_path}): {text}\n"
                f"{server.log_tail()}")
    return text


def write_json(path: Path, data: dict) -> None:
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(data, indent=1, default=float) + "\n")
    os.replace(staging, path)  # never a half-written results file


def versions(experiment: Experiment) -> dict:
    packages = {}
    for name in ("lynx-sglang", "sglang", "torch", "transformers", "scipy", "numpy", "matplotlib"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"packages": packages, "python": platform.python_version(), "machine": machine_description(),
            "model": model_identity(experiment)}


def machine_description() -> str:
    processor = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core CPU ({processor}, {platform.system()})"


def model_identity(experiment: Experiment) -> dict:
    """Which weights were measured: the checkpoint's name and the sha256 of its safetensors files."""
    args = experiment.args
    if args.url:
        return {"url": args.url}
    return checkpoint_identity(args.model_path)


def checkpoint_identity(model_path: str | None) -> dict:
    """The checkpoint's name ("embedded" without a path) and the sha256 of its safetensors files."""
    directory = Path(model_path) if model_path else EMBEDDED_MODEL_DIR
    digest = hashlib.sha256()
    for weights in sorted(directory.glob("*.safetensors")):
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"name": "embedded" if not model_path else directory.name, "weights_sha256": digest.hexdigest()}
