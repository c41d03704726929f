"""lynx-sglang's own settings: one validated `LynxConfig`, handed to every SGLang process.

Sources, highest precedence first: `--lynx-*` flags, `LYNX_*` environment variables, a YAML/JSON file
(`--lynx-config` / `LYNX_CONFIG`), then the policy's own per-model defaults. SGLang cannot be taught new
flags by a plugin, and plugins load in every SGLang process, so the launcher validates the settings
once and passes them to the children as JSON in one environment variable (`CONFIG_ENV`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

# Re-exported: the value parsers and their error are the settings' vocabulary (setting_values.py).
from lynx_sglang.setting_values import ConfigError, parse_bool, parse_layers, parse_params, parse_value, split_top_level, strict_json
from lynx_sglang.setting_values import Budget, parse_expert_cache, parse_schedule

__all__ = ["ConfigError", "parse_bool", "parse_layers", "parse_params", "parse_value", "split_top_level"]

CONFIG_ENV = "LYNX_SGLANG_CONFIG"
# The method name of lynx control requests on SGLang's scheduler RPC channel.
CONTROL_RPC_METHOD = "lynx_control"
# The admin routes' token header, for clients whose Authorization header carries SGLang's --api-key.
ADMIN_TOKEN_HEADER = "X-Lynx-Admin-Token"

KERNELS = ("auto", "sglang", "lynx", "triton")
# Each rank would time its own steps and could set its own cap, but ranks must take the same decision.
TPOT_WITH_TP = ("budget: tpot_ms is not supported with tensor parallelism (each rank would run its own "
                "controller); use experts=N or fraction=F")
CACHE_POLICIES = ("lru", "activation")  # kernels/cache/replacement.py's (config imports no kernels)


# ---- the settings object ------------------------------------------------------------------------


@dataclass(frozen=True)
class LynxConfig:
    policy: str = "baseline"
    params: dict = field(default_factory=dict)
    budget: str | None = None  # normalised Budget text, e.g. "experts=4"
    layers: tuple[int, ...] | None = None  # decoder layer ids the policy applies to; None = all
    prune_mixed: bool = False  # also prune the decode rows of mixed prefill+decode batches
    kernel: str = "auto"
    admin_token: str | None = None
    stats: bool = True
    # Bands over the decode batch size, each with its own params/budget (parse_schedule); None = one setting.
    schedule: tuple[dict, ...] | None = None
    # Resident expert slots per MoE layer ("N" or "N%"); None: every expert resident (no offload).
    expert_cache: str | None = None
    cache_policy: str = "lru"  # the expert cache's replacement policy
    cache_prefetch: bool = False  # prefetch each cached layer's likely experts during the layer before
    # Where each SGLang process writes a record that it loaded the plugin (read by /lynx/info).
    runtime_dir: str | None = None

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel: {self.kernel!r} is not one of {', '.join(KERNELS)}")
        if self.cache_policy not in CACHE_POLICIES:
            raise ConfigError(f"cache_policy: {self.cache_policy!r} is not one of {', '.join(CACHE_POLICIES)}")
        object.__setattr__(self, "expert_cache", parse_expert_cache(self.expert_cache))
        if self.expert_cache is not None and self.kernel == "sglang":
            raise ConfigError("expert_cache: the cache computes with lynx's active-expert kernel; "
                              "kernel 'sglang' cannot read experts through it (use auto, lynx or triton)")
        if self.cache_prefetch and self.expert_cache is None:
            raise ConfigError("cache_prefetch: prefetches into the expert cache; set expert_cache too "
                              "(--lynx-expert-cache N)")
        if self.cache_policy != "lru" and self.expert_cache is None:
            raise ConfigError(f"cache_policy: {self.cache_policy!r} chooses what the expert cache keeps; set "
                              "expert_cache too (--lynx-expert-cache N)")
        if not isinstance(self.policy, str) or not self.policy:
            raise ConfigError(f"policy: {self.policy!r} must be a policy name")
        if self.admin_token is not None and (not isinstance(self.admin_token, str) or not self.admin_token):
            raise ConfigError("admin_token: must be a non-empty string")
        object.__setattr__(self, "budget", None if self.budget is None else str(Budget.parse(self.budget)))
        object.__setattr__(self, "layers", parse_layers(self.layers))
        object.__setattr__(self, "schedule", parse_schedule(self.schedule, self.params, self.budget))

    def bands(self) -> list[tuple[int, "LynxConfig"]]:
        """(first row count, the setting) per band; one band from 1 row up without a schedule."""
        if not self.schedule:
            return [(1, self)]
        return [(band["from_rows"], replace(self, params=dict(band["params"]), budget=band["budget"], schedule=None))
                for band in self.schedule]

    @property
    def parsed_budget(self) -> Budget | None:
        return Budget.parse(self.budget)

    def public_view(self) -> dict:
        """What GET /lynx/policy shows: everything but the secret."""
        view = asdict(self)
        for private in ("admin_token", "runtime_dir"):
            view.pop(private)
        view["layers"] = None if self.layers is None else list(self.layers)
        view["schedule"] = None if self.schedule is None else [dict(band) for band in self.schedule]
        return view

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ=os.environ) -> "LynxConfig":
        """The config the launcher handed down in CONFIG_ENV (defaults when there is none)."""
        raw = environ.get(CONFIG_ENV)
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{CONFIG_ENV} is not valid JSON ({exc.msg} at position {exc.pos})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{CONFIG_ENV}: expected a mapping of settings, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{CONFIG_ENV}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{name: parse_setting(name, value, f"{CONFIG_ENV}: {name}") for name, value in data.items()})


def parse_setting(name: str, value, label: str):
    """A setting as a flag, variable or file gives it -> the value LynxConfig holds."""
    if name == "params":
        return parse_params(value, label)
    if name in ("prune_mixed", "stats", "cache_prefetch"):
        return parse_bool(value, label)
    if name == "layers":
        return parse_layers(value, label)
    if name == "budget":
        budget = Budget.parse(value, label)
        return None if budget is None else str(budget)
    if name == "expert_cache":
        return parse_expert_cache(value, label)
    if name == "kernel" and value not in KERNELS:
        raise ConfigError(f"{label}: {value!r} is not one of {', '.join(KERNELS)}")
    if name == "cache_policy" and value not in CACHE_POLICIES:
        raise ConfigError(f"{label}: {value!r} is not one of {', '.join(CACHE_POLICIES)}")
    return value


# ---- the three sources and their precedence ----------------------------------------------------

# What a user may set, from any source (runtime_dir is the launcher's own).
SETTINGS = tuple(f.name for f in fields(LynxConfig) if f.name != "runtime_dir")
# What a whole config (POST /lynx/policy {"config": ...}, a config file's content) may set while serving;
# the others are fixed at start.
LIVE_SETTINGS = ("policy", "params", "budget", "layers", "prune_mixed", "schedule")
# Environment variable -> setting. LYNX_PARAMS is "key=value,key=value".
ENV_VARIABLES = {
    "LYNX_POLICY": "policy",
    "LYNX_PARAMS": "params",
    "LYNX_BUDGET": "budget",
    "LYNX_LAYERS": "layers",
    "LYNX_PRUNE_MIXED": "prune_mixed",
    "LYNX_KERNEL": "kernel",
    "LYNX_ADMIN_TOKEN": "admin_token",
    "LYNX_STATS": "stats",
    "LYNX_EXPERT_CACHE": "expert_cache",
    "LYNX_CACHE_POLICY": "cache_policy",
    "LYNX_CACHE_PREFETCH": "cache_prefetch",
}
CONFIG_FILE_ENV = "LYNX_CONFIG"


def read_config_file(path: str) -> dict:
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.load(text, Loader=_unique_key_loader())
        except yaml.YAMLError as exc:
            problem, mark = getattr(exc, "problem", None) or str(exc).splitlines()[0], getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config file {path}: not valid YAML ({problem}{where})") from None
    elif file.suffix.lower() == ".json":
        try:
            data = strict_json(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except ValueError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    else:
        raise ConfigError(f"config file {path}: unknown format; use .yaml, .yml or .json")
    if data is None:
        return {}
    return check_settings(data, f"config file {path}")


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice (PyYAML keeps the last one silently)."""

        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(key, deep=True) for key, _ in node.value]
            for index, key in enumerate(keys):
                if key in keys[:index]:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice",
                                                            node.value[index][0].start_mark)
            return super().construct_mapping(node, deep)

    return Loader


def check_settings(data, source: str) -> dict:
    """A config file's content (or POST /lynx/policy's whole config): a mapping of known settings."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(map(str, set(data) - set(SETTINGS)))  # a file's keys may be numbers too
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    return data


def build_config(flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ,
                 flag_names: Mapping[str, str] | None = None) -> LynxConfig:
    """Merge the sources: flag > env > file; params merge key by key in the same order. `flags` holds
    the settings given on the command line (name -> raw value), and optionally `config_file`;
    `flag_names` spells each the way its user gave it (`--lynx-budget`, the engine's `lynx_budget`), so
    an error names what to change."""
    for name, value in flags.items():  # `--lynx-expert-cache $SLOTS` with SLOTS unset must not mean "off"
        values = value if isinstance(value, (list, tuple)) else [value]  # --lynx-param: one per use
        if any(isinstance(one, str) and not one.strip() for one in values):
            label = (flag_names or {}).get(name, f"flag {name}")
            raise ConfigError(f"{label}: empty value; leave it out for the default")
    file_path = flags.get("config_file") or environ.get(CONFIG_FILE_ENV) or None
    file_label = f"config file {file_path}"
    variable_of = {name: var for var, name in ENV_VARIABLES.items()}
    sources_in_order = [
        (lambda name: f"{file_label} {name}", read_config_file(file_path) if file_path else {}),
        (variable_of.get, {name: environ[var] for var, name in ENV_VARIABLES.items() if environ.get(var)}),
        (lambda name: (flag_names or {}).get(name, f"flag {name}"),
         {k: v for k, v in flags.items() if k != "config_file" and v is not None}),
    ]
    merged: dict[str, Any] = {}
    params: dict[str, Any] = {}
    above_file: dict[str, Any] = {}  # params and budget a variable or flag gives: they outrank a file's bands too
    for rank, (label_of, settings) in enumerate(sources_in_order):
        for name, value in settings.items():
            parsed = parse_setting(name, value, label_of(name))
            if name == "params":
                params.update(parsed)
            else:
                merged[name] = parsed
            if rank > 0 and name == "params":
                above_file["params"] = {**above_file.get("params", {}), **parsed}
            elif rank > 0 and name == "budget":
                above_file["budget"] = parsed
    if merged.get("schedule") and above_file:
        merged["schedule"] = bands_overridden(merged["schedule"], above_file)
    return LynxConfig(**merged, params=params)


def bands_overridden(schedule, above_file: dict) -> list:
    """A file's schedule with the params (key by key) and budget a variable or flag gives in every band."""
    if not isinstance(schedule, (list, tuple)):
        return schedule  # parse_schedule says what is wrong with it
    bands = []
    for index, band in enumerate(schedule):
        if isinstance(band, Mapping):
            band = dict(band)
            if "params" in above_file:
                band["params"] = {**parse_params(band.get("params"), f"schedule[{index}].params"), **above_file["params"]}
            if "budget" in above_file:
                band["budget"] = above_file["budget"]
        bands.append(band)
    return bands
