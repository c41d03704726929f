"""The control requests the launcher sends between steps: read or switch the policy, read or reset
the statistics. Each answer is a JSON-ready dict; a bad request raises ConfigError and changes nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lynx_sglang.config import LIVE_SETTINGS, ConfigError, LynxConfig, check_settings, parse_setting
from lynx_sglang.policy_catalog import params_in_effect
from lynx_sglang.setting_values import Budget

if TYPE_CHECKING:
    from lynx_sglang.scheduler.runtime import LynxRuntime


def handle(runtime: LynxRuntime, request: dict) -> dict:
    op = request.get("op")
    if op == "get_policy":
        return policy_state(runtime)
    if op == "set_policy":
        current = runtime.settings.config
        try:
            runtime.settings.apply(switched_config(current, request))
        except (ConfigError, ValueError) as error:
            kept = inherited_params(current, request)
            if not kept:
                raise
            raise ConfigError(f"{error} (the running policy's other parameters stay on a switch within it: "
                              f"{kept}; give one as null to drop it)") from None
        return policy_state(runtime)
    if op == "get_stats":
        return stats_snapshot(runtime)
    if op == "reset_stats":
        reset_stats(runtime)
        return stats_snapshot(runtime)
    raise ConfigError(f"unknown control operation {op!r}")


def applied_config(config: LynxConfig, settings) -> LynxConfig:
    """A whole config, as a config file holds it: what it leaves out takes the default, so the server's
    setting is exactly the file's. Settings fixed at start must be absent or equal to the running ones."""
    if not isinstance(settings, dict):
        raise ConfigError(f"config: {settings!r} must be an object of settings, as a config file holds them")
    check_settings(settings, "config")
    parsed = {name: parse_setting(name, value, f"config: {name}") for name, value in settings.items()}
    for name in set(parsed) - set(LIVE_SETTINGS):
        if parsed[name] != getattr(config, name):
            raise ConfigError(f"config: {name} cannot change while serving; restart the server with it, "
                              "or leave it out")
    defaults = LynxConfig()
    return replace(config, **{name: parsed.get(name, getattr(defaults, name)) for name in LIVE_SETTINGS})


def switched_config(config: LynxConfig, request: dict) -> LynxConfig:
    """The config a POST /lynx/policy asks for: a whole config (`config`), or a change. A new policy
    starts from the given params; the same policy merges them into its current ones. An absent budget
    keeps the current one. A change ends a schedule: the server then runs exactly what was posted."""
    if "config" in request:
        return applied_config(config, request["config"])
    policy = request.get("policy") or config.policy
    params = request.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"params: {params!r} must be an object of parameter values")
    if policy == config.policy:
        params = {**config.params, **params}
    params = {name: value for name, value in params.items() if value is not None}  # null: back to the default
    budget = request["budget"] if "budget" in request else config.budget
    if policy == "baseline" and "budget" not in request:
        budget = None  # baseline takes no budget; switching to it drops the old one
    parsed = Budget.parse(budget)
    return replace(config, policy=policy, params=params, budget=None if parsed is None else str(parsed),
                   schedule=None)


def inherited_params(config: LynxConfig, request: dict) -> str:
    """The running policy's parameters a change of its params keeps (as `name=value, ...`; "" if none)."""
    if "params" not in request or (request.get("policy") or config.policy) != config.policy:
        return ""  # no params given (a budget change, a whole config), or a new policy: nothing kept to clash
    given = request.get("params") if isinstance(request.get("params"), dict) else {}
    kept = {name: value for name, value in config.params.items() if name not in given and value is not None}
    return ", ".join(f"{name}={value}" for name, value in kept.items())


def policy_state(runtime: LynxRuntime) -> dict:
    settings = runtime.settings
    state = settings.config.public_view()
    state["controller"] = None if settings.controller is None else settings.controller.state()
    state["budget_experts"] = settings.current_cap()
    policies = [params_in_effect(policy) for policy in runtime.policies_in_effect()]
    # Under a schedule each band decides the steps of its batch sizes; the bands stay as given, so
    # that the state posted back as a config is one the server takes.
    state["params_in_effect"] = policies[0] if state["schedule"] is None else None
    state["params_in_effect_by_band"] = None if state["schedule"] is None else policies
    state["cuda_graphs_replay_pruning"] = runtime.decode_graphs_prune()
    state["expert_compute"] = {str(layer): name for layer, name in runtime.expert_compute.describe().items()}
    state["expert_compute"].update(runtime.caches.describe())
    return state


def stats_snapshot(runtime: LynxRuntime) -> dict:
    settings, counts = runtime.settings, runtime.counts
    figures = runtime.stats.snapshot()
    fallback_steps = figures.pop("fallback_steps")
    for layer in figures["layers"]:
        layer.update(runtime.router.layer_routing(layer["layer"]))
    return {
        "policy": settings.config.policy,
        "params": settings.config.params,
        "budget": settings.config.budget,
        "budget_experts": settings.current_cap(),
        "kernel": settings.config.kernel,
        "decode_steps": counts.decode_steps,
        "pruned_steps": counts.decode_steps - fallback_steps,
        "passthrough_steps": counts.passthrough_steps,
        "fallback_steps": fallback_steps,
        "policy_failures": runtime.router.failures,
        "steps_by_policy": dict(counts.steps_by_policy),
        "steps_by_mode": dict(counts.steps_by_mode),
        "steps_by_band": settings.schedule and settings.schedule.steps_by_band(settings.config.schedule),
        "stats_enabled": settings.config.stats,
        "controller": None if settings.controller is None else settings.controller.state(),
        "expert_cache": runtime.caches.snapshot(),
        **figures,
    }


def reset_stats(runtime: LynxRuntime) -> None:
    if runtime.settings.schedule is not None:
        runtime.settings.schedule.reset()
    runtime.counts.reset()
    runtime.fallback_report.reset()
    runtime.router.failures = 0
    runtime.stats.reset()
    runtime.caches.reset()
    if runtime.decisions is not None:
        runtime.decisions.reset()
