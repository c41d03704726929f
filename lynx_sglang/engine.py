"""lynx-sglang in SGLang's offline engine: `sglang.Engine` with batch-aware expert selection.

    from lynx_sglang.engine import Engine

    engine = Engine(model_path="...", lynx_policy="lynx", lynx_budget="fraction=0.5")
    outputs = engine.generate(prompts, {"temperature": 0, "max_new_tokens": 32})
    engine.lynx.stats()                            # what GET /lynx/stats answers
    engine.lynx.set_policy(budget="experts=4")     # what POST /lynx/policy does, between two steps
    engine.shutdown()

`Engine(**kwargs)` is `sglang.Engine(**kwargs)` with the `lynx_<setting>` keywords of `lynx-sglang serve`'s
`--lynx-<setting>` flags taken out: they are merged with the `LYNX_*` variables and config file as
for `serve`, checked against the checkpoint and against SGLang's own keywords before any process
starts (a `ConfigError` names the problem), and handed to the plugin in SGLang's scheduler. Without a
GPU the engine gets `serve`'s CPU defaults where the caller did not set them. Without `model_path`
it loads the embedded model.
"""

from __future__ import annotations

import os
from pathlib import Path

from lynx_sglang.config import CONFIG_ENV, SETTINGS, ConfigError
from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
from lynx_sglang.launch_checks import LaunchError, checked_config, machine_defaults
from lynx_sglang.server.channel import (SchedulerUnavailable, control_unavailable, policy_request_problem,
                                        scheduler_channel)
from lynx_sglang.sglang_settings import KeywordSettings

# lynx_<setting> keywords; an offline engine has no HTTP admin routes, so no admin token.
ENGINE_SETTINGS = tuple(name for name in SETTINGS if name != "admin_token")
CONFIG_FILE_KEYWORD = "lynx_config"  # a config file, as `--lynx-config` / LYNX_CONFIG


def Engine(**kwargs):  # noqa: N802 - named as sglang.Engine, which it returns
    """An `sglang.Engine` whose scheduler prunes with the given lynx settings; `engine.lynx` talks to it."""
    sglang_kwargs, environment, _config = engine_arguments(kwargs)
    os.environ.update(environment)  # the scheduler process SGLang spawns inherits the environment
    from sglang.srt.entrypoints.engine import Engine as SGLangEngine

    engine = SGLangEngine(**sglang_kwargs)
    engine.lynx = LynxControl(engine)
    shutdown = engine.shutdown

    def shutdown_and_close(*args, **kwargs):
        engine.lynx.close()  # its calls then fail at once, not after the scheduler's 60 s timeout
        return shutdown(*args, **kwargs)

    engine.shutdown = shutdown_and_close
    return engine


def engine_arguments(kwargs: dict, *, environ=os.environ, on_cpu: bool | None = None,
                     sgl_kernel_ok: bool | None = None):  # fmt: skip
    """Engine keywords -> (SGLang's keywords with this machine's defaults, the environment to set, the
    checked LynxConfig). Starts nothing."""
    sglang_kwargs, settings = split_keywords(kwargs)
    model_path = Path(sglang_kwargs.get("model_path") or EMBEDDED_MODEL_DIR).expanduser()
    sglang_kwargs["model_path"] = str(model_path)
    given = KeywordSettings(sglang_kwargs)
    try:
        config = checked_config(settings, model_path, given, environ, {name: f"lynx_{name}" for name in settings})
        defaults, environment = machine_defaults(config, given, on_cpu=on_cpu, environ=environ,
                                                 sgl_kernel_ok=sgl_kernel_ok, model_path=model_path)  # fmt: skip
    except LaunchError as exc:
        raise ConfigError(str(exc)) from None
    if "PYTHONPATH" in environment:  # the GPU runtime: a stand-in sgl_kernel first on the path
        raise ConfigError(
            "SGLang's compiled kernels (sgl_kernel) do not import here, and the offline engine runs SGLang "
            "in this process, which needs them; `lynx-sglang serve` runs SGLang without them (docs/gpu.md)"
        )
    sglang_kwargs.update(defaults)  # only those the caller did not give
    return sglang_kwargs, {**environment, CONFIG_ENV: config.to_env()}, config


def split_keywords(kwargs: dict) -> tuple[dict, dict]:
    """-> (SGLang's keywords, the lynx settings as `build_config` takes them)."""
    if "server_args" in kwargs:
        raise ConfigError("give SGLang's settings as keywords (Engine(model_path=..., tp_size=...)), not server_args=: "
                          "the lynx checks and this machine's defaults read them")
    sglang_kwargs, settings = {}, {}
    for key, value in kwargs.items():
        if not key.startswith("lynx_"):
            sglang_kwargs[key] = value
        elif key == CONFIG_FILE_KEYWORD:
            settings["config_file"] = str(value)
        elif key[len("lynx_"):] in ENGINE_SETTINGS:
            settings[key[len("lynx_"):]] = value
        else:
            known = ", ".join(f"lynx_{name}" for name in (*ENGINE_SETTINGS, "config"))
            raise ConfigError(f"unknown keyword {key}; known lynx keywords: {known}")
    return sglang_kwargs, {name: value for name, value in settings.items() if value is not None}


class LynxControl:
    """The `/lynx/*` requests of an HTTP server, as calls on an engine (they run between two steps)."""

    def __init__(self, engine, timeout_s: float = 60.0):
        self._channel = scheduler_channel(engine.server_args, engine.tokenizer_manager, timeout_s)
        self._unavailable = control_unavailable(engine.server_args)

    def close(self) -> None:
        """At the engine's shutdown: no scheduler answers any more."""
        self._unavailable = "the engine is shut down; engine.lynx answers only while it runs"
        self._channel.close()

    def _request(self, op: str, **fields) -> dict:
        if self._unavailable:
            raise SchedulerUnavailable(self._unavailable)
        return self._channel.request(op, **fields)

    def policy(self) -> dict:
        return self._request("get_policy")

    def set_policy(self, **change) -> dict:
        """policy=, params=, budget= (or config=, a whole config), as POST /lynx/policy's body; a
        refused change raises SchedulerError and leaves the running policy in place."""
        problem = policy_request_problem(change)
        if problem:
            raise ConfigError(problem)
        return self._request("set_policy", **change)

    def stats(self) -> dict:
        return self._request("get_stats")

    def reset_stats(self) -> dict:
        return self._request("reset_stats")
