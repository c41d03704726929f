"""Flag types and the parser the benchmarks share: argparse reports a bad value as `argument --tokens: ...`."""

from __future__ import annotations

import argparse

from lynx_sglang.arg_parser import OneLineParser


Parser = OneLineParser  # the benchmarks' parser is every command's


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def percentage(text: str) -> int:
    """An active percentage: 1 to 100 (0 % would time an empty MoE; over 100 % names experts it lacks)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage of the experts from 1 to 100")
    return value


def positive_ints(text: str) -> list[int]:
    """A comma list of positive integers, e.g. `--tokens 1,8,32`."""
    values = [positive_int(item.strip()) for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} lists no value")
    return values
