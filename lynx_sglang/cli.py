"""`lynx-sglang` command line. Each subcommand owns its arguments: this parser only picks it and
hands the rest over, so `lynx-sglang serve --tp 2` reaches SGLang untouched."""

from __future__ import annotations

import argparse
import os
import signal
import sys


def _serve(args: list[str]) -> int:
    from lynx_sglang.serve import serve

    return serve(args)


def _eval(args: list[str]) -> int:
    from lynx_sglang.evaluate import main

    return main(args)


def _train_embedded(args: list[str]) -> int:
    from lynx_sglang.embedded.train import main

    return main(args)


def _policies(args: list[str]) -> int:
    from lynx_sglang.policy_catalog import main

    return main(args)


def _bench(args: list[str]) -> int:
    from lynx_sglang.tools.bench import SUBCOMMANDS

    parser = argparse.ArgumentParser(prog="lynx-sglang bench", allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(f"  {name:<12} {what}" for name, what in SUBCOMMANDS.items()))
    parser.add_argument("what", choices=tuple(SUBCOMMANDS), help="what to measure (below); `lynx-sglang bench WHAT "
                        "--help` for its own flags")
    namespace = parser.parse_args(args[:1])
    if namespace.what == "policies":
        from lynx_sglang.tools.bench.policies import main
    elif namespace.what == "kernels":
        from lynx_sglang.tools.bench.sglang_moe import main
    elif namespace.what == "bookkeeping":
        from lynx_sglang.tools.bench.bookkeeping import main
    else:
        from lynx_sglang.tools.bench.serve import main
    return main(args[1:]) or 0


def _ab(args: list[str]) -> int:
    from lynx_sglang.experiments.ab import main

    return main(args)


def _sweep(args: list[str]) -> int:
    from lynx_sglang.experiments.sweep import main

    return main(args)


def _calibrate(args: list[str]) -> int:
    from lynx_sglang.experiments.calibrate import main

    return main(args)


COMMANDS = {
    "serve": (_serve, "serve a MoE model through SGLang with batch-aware expert selection "
                      "(default: the embedded model on 127.0.0.1:30000)"),
    "eval": (_eval, "exact-match accuracy of a running server on held-out problems of the embedded task"),
    "policies": (_policies, "list the expert-selection policies with their parameters, defaults and ranges"),
    "bench": (_bench, "benchmarks: `bench policies`, `bench kernels`, `bench serve` (a real server, CPU or GPU), "
                      "`bench bookkeeping`"),
    "train-embedded": (_train_embedded, "retrain the embedded model"),
    "ab": (_ab, "two policies on the same requests: accuracy and speed with confidence intervals"),
    "sweep": (_sweep, "many policies on one server: the accuracy / expert-bytes frontier"),
    "calibrate": (_calibrate, "the setting that reads the fewest expert bytes within an accuracy bound, per batch-size "
                              "band, confirmed on held-out items: writes a lynx-config.yaml"),
}  # fmt: skip


def versions() -> str:
    """lynx-sglang's version and those of what it runs on, from the installed packages' metadata (fast)."""
    from importlib.metadata import PackageNotFoundError, version

    from lynx_sglang import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"lynx-sglang {__version__} (sglang {installed('sglang')}, torch {installed('torch')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lynx-sglang", allow_abbrev=False,
        description="Batch-aware expert selection for Mixture-of-Experts serving with SGLang.",
        epilog="Run `lynx-sglang <command> --help` for a command's own flags.",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=versions())
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    namespace = build_parser().parse_args(argv[:1])
    handler, _ = COMMANDS[namespace.command]
    try:
        return handler(argv[1:]) or 0
    except BrokenPipeError:  # `lynx-sglang policies | head`: the reader left; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush, too
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
