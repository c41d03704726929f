"""The command lines of `ab`, `sweep` and `calibrate`: the flags they share, their checks, the items
they ask for, and the command as the reports show it (admin tokens hidden)."""

from __future__ import annotations

import argparse
import shlex
import sys

from lynx_sglang.arg_parser import OneLineParser
from lynx_sglang.local_server import server_url

from .client import ENDPOINTS
from .launch import served_address
from .tasks import BUILTIN_TASK, Item, load_items, make_scorer


def command_parser(tool: str, doc: str) -> argparse.ArgumentParser:
    """`lynx-sglang TOOL`'s parser: the module docstring's first line as description, the rest as epilog."""
    first, _, rest = doc.partition("\n")
    # No abbreviated flags: a report could not tell that `--admin-tok T` holds a token to hide.
    return OneLineParser(prog=f"lynx-sglang {tool}", description=first, allow_abbrev=False,
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


def parse_levels(text: str) -> list[int]:
    """`--concurrency`'s comma list -> its levels: positive integers, in the order given, none twice."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"--concurrency: {text!r} lists no level")
    for part in parts:
        if not (part.isascii() and part.isdigit()) or int(part) < 1:  # '²' is a digit to isdigit, not to int
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
