"""Number formatting shared by the terminal tables and the Markdown reports."""

from __future__ import annotations

import math


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value, digits: int = 1) -> str:
    return "-" if missing(value) else f"{100 * value:.{digits}f} %"


def points(value, digits: int = 1) -> str:
    """An accuracy difference in percentage points, signed."""
    return "-" if missing(value) else f"{100 * value:+.{digits}f}"


def points_against(value, bound_points: float, digits: int = 1) -> str:
    """`points(value)` with as many more digits as it takes for the shown number to sit on the same
    side of -bound_points as the value: -1.006 against 1 point is -1.01, not -1.0 (which reads as
    within); -0.989 is -0.99."""
    if missing(value):
        return "-"
    limit = -bound_points / 100
    for shown_digits in range(digits, 7):
        text = points(value, shown_digits)
        shown = float(text) / 100
        if abs(value - limit) <= 1e-12 or ((shown > limit) == (value > limit) and abs(shown - limit) > 1e-12):
            return text
    return points(value, 6)


def percent_change(ratio_value) -> str:
    """1.25 -> '+25 %'; a change that rounds to 0 is '0 %', with no sign."""
    text = f"{100 * (ratio_value - 1):+.0f}"
    return f"{'0' if text in ('+0', '-0') else text} %"


def interval_points(ci, digits: int = 1) -> str:
    if not ci or any(missing(v) for v in ci):
        return "-"
    return f"[{100 * ci[0]:+.{digits}f}, {100 * ci[1]:+.{digits}f}]"


def interval_pct(ci, digits: int = 1) -> str:
    if not ci or any(missing(v) for v in ci):
        return "-"
    return f"[{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"


def ms(value, digits: int = 1) -> str:
    return "-" if missing(value) else f"{value:.{digits}f}"


def interval(ci, digits: int = 2) -> str:
    if not ci or any(missing(v) for v in ci):
        return "-"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def ratio(value, digits: int = 2) -> str:
    return "-" if missing(value) else f"{value:.{digits}f}x"


def p_value(value) -> str:
    if missing(value):
        return "-"
    return "1" if value >= 0.9995 else f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def megabytes(value) -> str:
    return "-" if missing(value) else f"{value / 1e6:.2f} MB"


def fewer(ratio_value) -> str:
    """0.4 -> '60.0 % fewer'; 1.1 -> '10.0 % more'."""
    if missing(ratio_value):
        return "-"
    change = 1 - ratio_value
    return f"{100 * change:.1f} % fewer" if change >= 0 else f"{-100 * change:.1f} % more"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
