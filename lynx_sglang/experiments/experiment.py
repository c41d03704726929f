"""What `ab` and `sweep` share: the experiment, the server (started here or reached by URL), the measured
run with its interruption handling, and the files written under --out (their flags: cli_args.py; what
the results record of their origin: provenance.py)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

from .arms import Arm
from .cli_args import without_secrets
from .client import AdminClient, ArmRefused, ServerError, describe_scope, describe_setting, served_scope, setting_of
from .launch import ManagedServer, interruption, terminate_as_interrupt
from .provenance import versions, write_json
from .runner import Runner, block_slices, plan_blocks
from .store import Block, MeasurementStore, ResumeError
from .tasks import Item, make_scorer

EXIT_INTERRUPTED = 130


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


Analyse = Callable[[Experiment, list[Block], dict], dict]
Publish = Callable[[Experiment, dict, Console], None]


def run(experiment: Experiment, analyse: Analyse, publish: Publish, *, resume: bool = False) -> int:
    """Measure, then analyse and publish whatever was measured, also after Ctrl-C, SIGTERM or a dead server."""
    with terminate_as_interrupt():
        return measure_and_publish(experiment, analyse, publish, resume)


def measure_and_publish(experiment: Experiment, analyse: Analyse, publish: Publish, resume: bool) -> int:
    console = Console(stderr=True)
    store = MeasurementStore(experiment.out)
    if resume and not store.path.exists():
        say(console, f"--resume: nothing saved in {store.path}; starting from the first block", "yellow")
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
    say_thin_blocks(experiment, console)
    store.begin(header, done)
    status, message, skipped = measure(experiment, store, done, server, admin, url, console)
    failed = status in ("server-error", "refused")
    if message:
        say(console, f"lynx-sglang {experiment.tool}: error: {message}" if failed else message,
            "red" if failed else "yellow")
    blocks = store.load()[1] if store.started else done
    if not blocks and status == "refused":  # a setting the model does not take: a bad input
        return 2
    if not blocks:
        say(console, f"nothing was measured; {store.path} was left as it was")
        return EXIT_INTERRUPTED if status == "interrupted" else 1
    run_info = {"status": status, "message": message, "seconds": time.monotonic() - started, "blocks": len(blocks),
                "skipped_arms": skipped, "versions": versions(experiment),
                "server_scope": served_scope(experiment.original or {})}
    results = analyse(experiment, blocks, run_info)
    write_json(experiment.out / "results.json", results)
    publish(experiment, results, console)
    if status != "complete":
        resumable = f"; `--resume` continues from {store.path.name}" if experiment.tool == "sweep" else ""
        say(console, f"partial results ({len(blocks)} blocks) written to {experiment.out}{resumable}")
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
        runner.run(plan_blocks(experiment.arms, experiment.levels, len(experiment.items), args.blocks), done)
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


def say_thin_blocks(experiment: Experiment, console: Console) -> None:
    """A block is sent at once: one smaller than a level cannot make that level's batches."""
    smallest = min(size for _, size in block_slices(len(experiment.items), experiment.args.blocks))
    thin = [level for level in experiment.levels if level > smallest]
    if thin:
        say(console, f"note: a block holds {smallest} items, fewer than concurrency {', '.join(map(str, thin))}: "
                     f"those levels measure batches of at most {smallest} rows (raise --n or lower --blocks)", "yellow")


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


