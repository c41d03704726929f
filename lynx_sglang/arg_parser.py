"""The argument parser of every `lynx-sglang` command that reports a bad flag itself."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line, `PROG: error: ...`, and exit 2: argparse's usage dump above it would bury
    the one line that says what is wrong (`--help` still shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
