"""The value parsers every source of a setting shares (flags, environment, files, the runtime POST),
and their error: text or JSON/YAML values -> what LynxConfig holds."""

from __future__ import annotations

import json
from typing import Any, Mapping


class ConfigError(ValueError):
    """A bad setting. The message names the field, the value and what is allowed."""


def parse_layers(spec, source: str = "layers") -> tuple[int, ...] | None:
    """'1-3,5' (or a list of ints) -> (1, 2, 3, 5); None/'' /'all' -> None (every layer)."""
    if spec is None:
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]  # one layer, as `layers: 2` in a file says it
    if isinstance(spec, (list, tuple)):
        items = list(spec)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
            raise ConfigError(f"{source}: {spec!r} must be layer ids (integers >= 0)")
        layers = set(items)
    elif isinstance(spec, str):
        text = spec.replace(" ", "")
        if text.lower() in ("", "all"):
            return None
        layers = set()
        for part in text.split(","):
            low, dash, high = part.partition("-")
            try:
                lo = int(low)
                hi = int(high) if dash else lo
            except ValueError:
                raise ConfigError(f"{source}: {spec!r}: {part!r} is not a layer id or range like 1-3") from None
            if hi < lo:
                raise ConfigError(f"{source}: {spec!r}: range {part!r} is empty")
            layers.update(range(lo, hi + 1))
    else:
        raise ConfigError(f"{source}: {spec!r} must be a string such as '1-3,5' or a list of layer ids")
    if not layers or min(layers) < 0:
        raise ConfigError(f"{source}: {spec!r}: layer ids are integers >= 0")
    return tuple(sorted(layers))


def parse_value(text: str):
    """A parameter value written as text: true/false, none/null, an integer, a real number, a JSON list
    or object, or else the text itself. A list or object that is not valid JSON is a ValueError."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"value {text!r} is not valid JSON ({error.msg})") from None
    return text


def split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: `a=1,b=[0,1]` -> [`a=1`, `b=[0,1]`]."""
    parts, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(text[start:position])
            start = position + 1
    return parts + [text[start:]]


def parse_params(items, source: str) -> dict[str, Any]:
    """'alpha=1.0,beta=2', ['alpha=1.0', 'beta=2'], '{"alpha": 1.0}' or a mapping -> {'alpha': 1.0, 'beta': 2}."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    if isinstance(items, str) and items.strip().startswith("{"):
        try:
            parsed = json.loads(items)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: {items!r} is not a valid JSON object ({exc.msg})") from None
        return parse_params(parsed, source)
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{source}: {items!r} must be a mapping of parameters such as {{alpha: 1.0}}, "
                          "or key=value text")
    params = {}
    for text in items:
        for item in (part for word in str(text).split() for part in split_top_level(word) if part):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{source}: {item!r} must look like key=value (e.g. alpha=1.0)")
            try:
                params[key.strip()] = parse_value(value)
            except ValueError as error:
                raise ConfigError(f"{source}: {key.strip()}: {error}") from None
    return params


def parse_bool(value, source: str) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{source}: {value!r} must be true or false")


def strict_json(text):
    """json.loads for settings: a key given twice, or NaN/Infinity (not JSON, though Python's parser
    takes them), raises ValueError naming it, where json.loads would keep the last key silently."""

    def unique(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"{key!r} is given twice")
            seen.add(key)
        return dict(pairs)

    def no_constant(name):
        raise ValueError(f"{name} is not a JSON number; give a finite number")

    return json.loads(text, object_pairs_hook=unique, parse_constant=no_constant)
