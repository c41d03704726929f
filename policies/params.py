"""Validation of policy parameters (python values, at construction; never per call)."""

from __future__ import annotations

import math

from .router import router_family


class PolicyConfigError(ValueError):
    """A policy name or parameter is invalid. Raised at construction, never per call."""


def check_int(policy: str, param: str, value, low: int, high: int | None) -> int:
    """An integer in [low, high] (high None = unbounded)."""
    allowed = f"{low}..{high}" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyConfigError(
            f"policy '{policy}': parameter '{param}'={value!r} must be an integer (allowed: {allowed})"
        )
    if value < low or (high is not None and value > high):
        raise PolicyConfigError(f"policy '{policy}': parameter '{param}'={value!r} out of range (allowed: {allowed})")
    return value


def check_float(policy: str, param: str, value, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> float:
    """A finite real in the interval given (open or closed ends)."""
    allowed = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyConfigError(f"policy '{policy}': parameter '{param}'={value!r} must be a number (allowed: {allowed})")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        raise PolicyConfigError(f"policy '{policy}': parameter '{param}'={value!r} out of range (allowed: {allowed})")
    return value


def check_bool(policy: str, param: str, value) -> bool:
    if not isinstance(value, bool):
        raise PolicyConfigError(f"policy '{policy}': parameter '{param}'={value!r} must be True or False")
    return value


def check_choice(policy: str, param: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise PolicyConfigError(
            f"policy '{policy}': parameter '{param}'={value!r} must be one of {', '.join(map(repr, choices))}"
        )
    return value


def check_layers(policy: str, layers) -> frozenset[int] | None:
    """None (every layer) or a set of layer ids >= 0."""
    if layers is None:
        return None
    if isinstance(layers, str):  # "1-3" would read as the characters '1', '-', '3'
        raise PolicyConfigError(f"policy '{policy}': parameter 'layers'={layers!r} must be a list of layer ids "
                                "such as [1,2,3] (the --lynx-layers setting takes ranges like 1-3)")
    try:
        layer_set = frozenset(layers)
    except TypeError:
        raise PolicyConfigError(
            f"policy '{policy}': parameter 'layers'={layers!r} must be None or a list of layer ids >= 0"
        ) from None
    for layer in layer_set:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise PolicyConfigError(f"policy '{policy}': parameter 'layers' holds {layer!r}; layer ids are integers >= 0")
    return layer_set


def experts_kept(policy: str, num_experts: int, top_k: int, num_experts_kept, fraction) -> int:
    """An expert count for budget-style policies, from an absolute number or a fraction of E (never
    below k, so every token can still fill its k slots)."""
    if num_experts_kept is not None and fraction is not None:
        raise PolicyConfigError(f"policy '{policy}': give either 'num_experts_kept' or 'fraction', not both")
    if num_experts_kept is not None:
        return check_int(policy, "num_experts_kept", num_experts_kept, top_k, num_experts)
    fraction = check_float(policy, "fraction", 0.5 if fraction is None else fraction, 0.0, 1.0, low_open=True)
    return min(num_experts, max(top_k, math.ceil(fraction * num_experts)))


def check_router_kind(policy: str, kind):
    """A router kind (policies/router.py: set by the server from the layer's router, for per-family
    defaults), or None for plain softmax."""
    try:
        router_family(kind)
    except ValueError as error:
        raise PolicyConfigError(f"policy '{policy}': parameter 'router_kind': {error}") from None
    return kind
