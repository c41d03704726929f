"""Flag types the benchmarks share: argparse reports a bad value as `argument --tokens: ...`."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def positive_ints(text: str) -> list[int]:
    """A comma list of positive integers, e.g. `--tokens 1,8,32`."""
    values = [positive_int(item.strip()) for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} lists no value")
    return values
