"""Every `lynx-sglang` command the README and the docs show takes the flags written there: a command's
own flags from its --help, and for `serve` the flags it hands to SGLang from SGLang's own parser (a
flag SGLang renamed or hid shows up here, not in a user's terminal). Generated reports under
docs/results/ record what ran and are left as they are."""

import argparse
import contextlib
import io
import re
from functools import cache
from pathlib import Path

import pytest

from lynx_sglang import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md",
        *(p for p in sorted((ROOT / "docs").rglob("*.md")) if "results" not in p.relative_to(ROOT / "docs").parts)]
FLAG = r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w*-])"  # not a pattern such as `--lynx-*`


def code_in(text: str):
    """The commands of fenced blocks (continued lines joined) and of inline code spans."""
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        yield from block.replace("\\\n", " ").splitlines()
    yield from re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file, subcommand, flags) for each `lynx-sglang SUB ...` in the docs; a pipe, `;`, `&&` or another
    `lynx-sglang` ends a command."""
    found = []
    for path in DOCS:
        for code in code_in(path.read_text()):
            for match in re.finditer(r"lynx-sglang ((?:bench )?[a-z-]+)(.*)", code):
                sub, rest = match.group(1), re.split(r"[|;&]|\blynx-sglang\b", match.group(2))[0]
                if sub.split()[0] in cli.COMMANDS:
                    found.append((str(path.relative_to(ROOT)), sub, re.findall(FLAG, rest)))
    return found


@cache
def help_flags(sub: str) -> frozenset[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main([*sub.split(), "--help"])
    return frozenset(re.findall(FLAG, out.getvalue()))


@cache
def sglang_flags() -> frozenset[str]:
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return frozenset(flag for action in parser._actions for flag in action.option_strings)


def sglang_takes(flag: str) -> bool:
    """As SGLang's parser reads it: a flag, or (argparse's abbreviations) the start of exactly one."""
    return flag in sglang_flags() or len([known for known in sglang_flags() if known.startswith(flag)]) == 1


def test_documented_flags_are_accepted():
    commands = documented_commands()
    assert len(commands) > 50 and {sub for _, sub, _ in commands} >= {"serve", "ab", "sweep", "calibrate", "bench serve"}
    wrong = sorted({(where, sub, flag) for where, sub, flags in commands for flag in flags
                    if flag not in help_flags(sub) and not (sub == "serve" and sglang_takes(flag))})  # fmt: skip
    assert not wrong, f"flags the docs show that the command does not take: {wrong}"


def test_the_check_sees_a_wrong_flag():
    assert sglang_takes("--tp") and not sglang_takes("--disable") and "--lynx-policy" in help_flags("serve") and "--b-config" in help_flags("ab")
    assert "--candidates" not in help_flags("sweep") and not sglang_takes("--no-such-flag")


def hook_targets() -> list[str]:
    """Every SGLang function the scheduler and launcher plugins hook, as they register them."""
    from lynx_sglang.config import LynxConfig
    from lynx_sglang.scheduler import hooks
    from lynx_sglang.server import launcher

    targets = []
    record = lambda target, function, kind: targets.append(target)  # noqa: E731
    saved = hooks.runtime
    try:
        hooks.register(record, LynxConfig())
        launcher.register(record, LynxConfig(), None)
    finally:
        hooks.runtime = saved
    return targets


def test_every_hook_target_is_in_contributing_s_list_of_sglang_internals():
    # The list is what an SGLang bump re-checks; a hook left out of it is the quiet risk.
    listed = (ROOT / "CONTRIBUTING.md").read_text().split("## SGLang internals we rely on")[1]
    targets = hook_targets()
    assert len(targets) >= 12
    missing = [t for t in targets if ".".join(t.split(".")[-2:]) not in listed]
    assert not missing, f"hooked but not listed in CONTRIBUTING.md: {missing}"


def test_every_hook_target_exists_in_the_installed_sglang():
    import importlib

    def resolves(target: str) -> bool:
        parts = target.split(".")
        for split in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
            try:
                found = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            for name in parts[split:]:
                found = getattr(found, name, None)
            return found is not None
        return False

    assert [t for t in hook_targets() if not resolves(t)] == []
