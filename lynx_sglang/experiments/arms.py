"""An arm is one server setting under test: a policy, its parameters and an optional expert budget.

Text form (used by `sweep --policies`, in labels and in result files):

    POLICY[+BUDGET][:PARAM=VALUES]...        arms separated by ";"
    lynx:alpha=0.5,1,2                       three arms
    topn:num_experts_kept=3..7               five arms (an integer range, both ends included)
    lynx+experts=3..5:alpha=1                lynx under an experts=N budget, three arms
    budget:fraction=0.5                      the `budget` policy's own parameter

VALUES is one value, a comma list, or an integer range LO..HI; several swept parameters give every
combination. A value is read as an integer, a real number, true/false/none, a JSON list or object,
or else a string.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lynx_sglang.config import ConfigError, LynxConfig, parse_setting, parse_value, read_config_file, split_top_level
from lynx_sglang.setting_values import BUDGET_KINDS, Budget

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class ArmSpecError(ValueError):
    """A policy/parameter/budget text that cannot be parsed (the message quotes it)."""


@dataclass(frozen=True)
class Arm:
    policy: str
    params: dict = field(default_factory=dict, hash=False)
    budget: str | None = None
    tag: str | None = None  # tells two arms of the same setting apart (an A/A run)
    # A whole config file's settings (a calibrated lynx-config.yaml, say), applied as they are, and its name.
    config: dict | None = field(default=None, hash=False)
    config_name: str | None = None

    @property
    def label(self) -> str:
        if self.config is not None:
            return f"config:{self.config_name}" + (f" ({self.tag})" if self.tag else "")
        text = self.policy + (f"+{self.budget}" if self.budget else "")
        text += "".join(f":{key}={format_value(value)}" for key, value in self.params.items())
        return text + (f" ({self.tag})" if self.tag else "")

    def request_body(self) -> dict:
        """The POST /lynx/policy body that puts the server in this arm's setting."""
        if self.config is not None:
            return {"config": dict(self.config)}
        return {"policy": self.policy, "params": dict(self.params), "budget": self.budget}

    def as_json(self) -> dict:
        return {"label": self.label, **self.request_body()}


def format_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def parse_one_value(text: str):
    if not text.strip():
        raise ArmSpecError("empty value")
    try:
        return parse_value(text)
    except ValueError as error:
        raise ArmSpecError(str(error)) from None


def expand_values(text: str) -> list:
    """`1` -> [1]; `0.5,1,2` -> [0.5, 1, 2]; `3..7` -> [3, 4, 5, 6, 7]; `[0,1],[2]` -> [[0, 1], [2]]."""
    found = _RANGE.match(text.strip())
    if found:
        low, high = int(found.group(1)), int(found.group(2))
        if high < low:
            raise ArmSpecError(f"range {text.strip()!r} is empty (high below low)")
        return list(range(low, high + 1))
    return [parse_one_value(part) for part in split_top_level(text)]


def parse_assignment(text: str) -> tuple[str, list]:
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise ArmSpecError(f"expected NAME=VALUES, got {text!r}")
    try:
        return name.strip(), expand_values(values)
    except ArmSpecError as error:
        raise ArmSpecError(f"{error} in {text.strip()!r}") from None


def parse_budget_values(text: str) -> list[str]:
    """`experts=3..5` -> ["experts=3", "experts=4", "experts=5"]."""
    kind, values = parse_assignment(text)
    if kind not in BUDGET_KINDS:
        raise ArmSpecError(f"unknown budget {kind!r} in {text!r}; expected one of {', '.join(BUDGET_KINDS)}")
    budgets = [f"{kind}={format_value(value)}" for value in values]
    for budget in budgets:  # a value no model takes fails here, before a server starts
        try:
            Budget.parse(budget).check_range()
        except ConfigError as error:
            raise ArmSpecError(f"{error} (in {text.strip()!r})") from None
    return budgets


def parse_arms(spec: str) -> list[Arm]:
    """Every arm of a ';'-separated spec, duplicates dropped, in order."""
    arms: list[Arm] = []
    for part in spec.split(";"):
        if part.strip():
            for arm in parse_arm_group(part.strip()):
                if arm not in arms:
                    arms.append(arm)
    if not arms:
        raise ArmSpecError(f"no arms in {spec!r}")
    return arms


def parse_arm_group(text: str) -> list[Arm]:
    head, *assignments = text.split(":")
    policy, plus, budget_text = head.partition("+")
    policy = policy.strip()
    if not policy:
        raise ArmSpecError(f"missing policy name in {text!r}")
    budgets = parse_budget_values(budget_text) if plus else [None]
    swept = [parse_assignment(assignment) for assignment in assignments]
    names = [name for name, _ in swept]
    if len(set(names)) != len(names):
        raise ArmSpecError(f"a parameter appears twice in {text!r}")
    arms = []
    for budget in budgets:
        for combination in itertools.product(*(values for _, values in swept)):
            arms.append(Arm(policy, dict(zip(names, combination)), budget))
    return arms


def arm_from_flags(policy: str, params: list[str], budget: str | None, base_params: dict | None = None) -> Arm:
    """One arm from `ab`'s --a/--a-param/--a-budget flags (each parameter a single value), its
    parameters over `base_params`."""
    values = dict(base_params or {})
    for assignment in params:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise ArmSpecError(f"expected --a-param/--b-param NAME=VALUE, got {assignment!r}")
        try:
            values[name.strip()] = parse_one_value(value)
        except ArmSpecError as error:
            raise ArmSpecError(f"{error} in --a-param/--b-param {assignment!r}") from None
    if budget is not None:
        parse_budget_values(budget)  # its kind and range; the server checks it against the model
    return Arm(policy, values, budget)


def arm_from_config_file(path: str) -> Arm:
    """An arm that applies a whole config file (YAML or JSON, the form `serve --lynx-config` loads),
    checked here as the server would check it, before any server starts."""
    try:
        settings = read_config_file(path)
        config = LynxConfig(**{key: parse_setting(key, value, f"config file {path}: {key}")
                               for key, value in settings.items()})
    except ConfigError as error:
        text = str(error)
        raise ArmSpecError(text if text.startswith("config file") else f"config file {path}: {text}") from None
    return Arm(config.policy, dict(config.params), config.budget, config=settings, config_name=Path(path).stem)


def check_policy_names(arms: list[Arm], *, running_server: bool) -> None:
    """Refuse a policy name that the server this command starts would refuse, before starting it (a
    large model takes minutes to load). A running server (--url) may have other policies installed:
    it decides for itself."""
    if running_server:
        return
    from lynx_sglang.policies import available_policies

    known = available_policies()
    for arm in arms:
        if arm.policy not in known and ":" not in arm.policy:
            raise ArmSpecError(f"arm {arm.label}: unknown policy '{arm.policy}'; available: {', '.join(known)} "
                               "(or a 'package.module:ClassName' path)")
