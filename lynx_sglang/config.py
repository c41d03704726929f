"""lynx-sglang's own settings: parsed from `--lynx-*` flags, validated once, handed to SGLang's processes.

SGLang cannot be taught new CLI flags by a plugin, and plugins load in every SGLang process, so the
launcher validates the settings and passes them to the children as JSON in one environment variable.
Every flag that does not start with `--lynx-` belongs to SGLang and is passed through unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

CONFIG_ENV = "LYNX_SGLANG_CONFIG"


class ConfigError(ValueError):
    """A bad setting. The message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class LynxConfig:
    # Where each SGLang process writes a record that it loaded the plugin (read by /lynx/info).
    runtime_dir: str | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ=os.environ) -> "LynxConfig":
        raw = environ.get(CONFIG_ENV)
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{CONFIG_ENV} is not valid JSON ({exc.msg} at position {exc.pos})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{CONFIG_ENV}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


# The `--lynx-*` flags `lynx-sglang serve` accepts: flag -> (config field, help). Empty for now:
# the foundation carries no policy yet, and an unknown `--lynx-*` flag is an error, not passed on.
LYNX_FLAGS: dict[str, tuple[str, str]] = {}


def split_lynx_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Separate `--lynx-*` flags (ours) from everything else (SGLang's), checking ours are known."""
    ours: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--lynx-"):
            name, has_value, value = arg.partition("=")
            if name not in LYNX_FLAGS:
                allowed = ", ".join(sorted(LYNX_FLAGS)) or "none yet"
                raise ConfigError(f"unknown flag {name}; known --lynx-* flags: {allowed}")
            if not has_value:
                if i + 1 >= len(argv):
                    raise ConfigError(f"flag {name} needs a value")
                value = argv[i + 1]
                i += 1
            ours[name] = value
        else:
            rest.append(arg)
        i += 1
    return ours, rest
