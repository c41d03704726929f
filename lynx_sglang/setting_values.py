"""The value parsers every source of a setting shares (flags, environment, files, the runtime POST),
and their error: text or JSON/YAML values -> what LynxConfig holds (layers, parameters, booleans, a
budget, a schedule of bands, the expert cache's size)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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

    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=no_constant)
    except RecursionError:  # a body nested thousands deep: a 500 from the admin endpoint before
        raise ValueError("nested too deeply to be a setting") from None


# ---- budgets, schedules and the expert cache ---------------------------------------------------

BUDGET_KINDS = ("experts", "fraction", "mass", "tpot_ms")
# A target TPOT above 10 minutes is surely a typo (seconds for milliseconds, or a stray digit).
MAX_TPOT_MS = 600_000


@dataclass(frozen=True)
class Budget:
    """`experts=N`, `fraction=F`, `mass=P` (caps on each decode step's active experts per layer) or
    `tpot_ms=T` (a latency target the scheduler's controller turns into an expert cap)."""

    kind: str
    value: float

    def __str__(self) -> str:
        return f"{self.kind}={number_text(self.value) if self.kind == 'experts' else self.value}"

    @classmethod
    def parse(cls, text, source: str = "budget") -> "Budget | None":
        if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "off")):
            return None
        if not isinstance(text, str):
            raise ConfigError(f"{source}: {text!r} must be a string such as 'experts=4' or 'fraction=0.5'")
        kind, sep, raw = text.strip().partition("=")
        allowed = "experts=N, fraction=F, mass=P, tpot_ms=T or none"
        if not sep or kind not in BUDGET_KINDS:
            raise ConfigError(f"{source}: {text!r} is not a budget; allowed: {allowed}")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{source}: {text!r}: {raw!r} is not a number") from None
        budget = cls(kind, value)
        # The error shows the value as the user wrote it: float() would turn 700000 into 700000.0.
        budget.check_range(source, shown=f"{kind}={raw.strip()}")
        return budget

    def check_range(self, source: str = "budget", num_experts: int | None = None, shown: str | None = None) -> None:
        """Raise ConfigError when the value is out of range; num_experts (the model's experts per layer)
        bounds experts=N once a model is known. `shown`: the budget as given, for the message."""
        shown = shown or str(self)
        v = self.value
        if self.kind == "experts" and math.isfinite(v) and v != int(v):
            raise ConfigError(f"{source}: {shown}: experts must be a whole number of experts (an integer >= 1)")
        problem = None
        if not math.isfinite(v):
            problem = f"{self.kind} must be finite"
        elif self.kind == "experts" and num_experts and not 1 <= v <= num_experts:
            problem = f"experts must be an integer in 1..{num_experts}"
        elif self.kind == "experts" and v < 1:
            # Before a model is loaded the expert count is unknown: only the lower end can be checked.
            problem = "experts must be an integer >= 1"
        elif self.kind in ("fraction", "mass") and not 0 < v <= 1:
            problem = f"{self.kind} must be in (0, 1]"
        elif self.kind == "tpot_ms" and not 0 < v <= MAX_TPOT_MS:
            problem = f"a latency budget must be more than 0 and at most {MAX_TPOT_MS} ms"
        if problem:
            raise ConfigError(f"{source}: {shown} out of range: {problem}")


def number_text(value: float) -> str:
    """A whole number without the '.0' float() gives it; any other value (2.5, inf, nan) as it is."""
    return str(int(value)) if math.isfinite(value) and value == int(value) else str(value)


SCHEDULE_EXAMPLE = "[{from_rows: 1, params: {ratio: 0.5}}, {from_rows: 12, params: {ratio: 0.3}}]"


def parse_schedule(value, base_params: dict, base_budget: str | None, source: str = "schedule"):
    """A setting that follows the decode batch size: a list of bands, each `from_rows` (the first real
    row count it serves; the first band starts at 1, later ones increase) with `params` (over the base
    params) and optionally `budget` (instead of the base budget). -> the bands with their effective
    params and budget, or None for no schedule."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{source}: must be a list of bands such as {SCHEDULE_EXAMPLE}")
    bands, previous = [], 0
    for index, band in enumerate(value):
        label = f"{source}[{index}]"
        if not isinstance(band, Mapping):
            raise ConfigError(f"{label}: {band!r} must be a mapping with from_rows, params and optionally budget")
        unknown = sorted(set(band) - {"from_rows", "params", "budget"})
        if unknown:
            raise ConfigError(f"{label}: unknown field(s) {', '.join(unknown)}; allowed: from_rows, params, budget")
        start = band.get("from_rows")
        if not isinstance(start, int) or isinstance(start, bool) or start < 1:
            raise ConfigError(f"{label}.from_rows: {start!r} must be a row count (an integer >= 1)")
        if index == 0 and start != 1:
            raise ConfigError(f"{label}.from_rows: the first band must start at 1 so that every batch size has one")
        if start <= previous:
            raise ConfigError(f"{label}.from_rows: {start} must be above the previous band's {previous}")
        budget = Budget.parse(band["budget"], f"{label}.budget") if "budget" in band else Budget.parse(base_budget)
        if budget is not None and budget.kind == "tpot_ms":
            raise ConfigError(f"{label}.budget: tpot_ms cannot vary by band (one controller sets the cap)")
        bands.append({"from_rows": start, "params": {**base_params, **parse_params(band.get("params"), f"{label}.params")},
                      "budget": None if budget is None else str(budget)})
        previous = start
    return tuple(bands)


def parse_expert_cache(value, source: str = "expert_cache") -> str | None:
    """`N` (resident expert slots per MoE layer, an integer >= 1) or `N%` (that share of each layer's
    experts, rounded up; 0 < N <= 100) -> its normalised text; None, '', 'off' or 'none' -> None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{source}: {value!r} must be a slot count such as 2 or a share such as 25%")
    text = str(value).strip()
    number, percent = (text[:-1].strip(), True) if text.endswith("%") else (text, False)
    try:
        amount = float(number) if percent else int(number)
    except ValueError:
        raise ConfigError(f"{source}: {value!r} is not a slot count such as 2 nor a share such as 25%") from None
    if percent and not (math.isfinite(amount) and 0 < amount <= 100):
        raise ConfigError(f"{source}: {value!r} out of range: a share must be in (0, 100]%")
    if not percent and amount < 1:
        raise ConfigError(f"{source}: {value!r} out of range: at least 1 resident expert per layer")
    return f"{amount:g}%" if percent else str(amount)


def expert_cache_slots(spec: str, num_experts: int, source: str = "expert_cache") -> int:
    """The slots per layer that `spec` (parse_expert_cache's text) gives a layer of num_experts."""
    if spec.endswith("%"):
        return max(1, math.ceil(num_experts * float(spec[:-1]) / 100 - 1e-9))
    slots = int(spec)
    if slots > num_experts:
        raise ConfigError(f"{source}: {spec} slots out of range: this model has {num_experts} experts per layer")
    return slots
