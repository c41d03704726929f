"""The control requests the launcher sends between steps: read or switch the policy, read or reset
the statistics. Each answer is a JSON-ready dict; a bad request raises ConfigError and changes nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lynx_sglang.config import Budget, ConfigError, LynxConfig

if TYPE_CHECKING:
    from lynx_sglang.scheduler.runtime import LynxRuntime


def handle(runtime: LynxRuntime, request: dict) -> dict:
    op = request.get("op")
    if op == "get_policy":
        return policy_state(runtime)
    if op == "set_policy":
        runtime.settings.apply(switched_config(runtime.settings.config, request))
        return policy_state(runtime)
    if op == "get_stats":
        return stats_snapshot(runtime)
    if op == "reset_stats":
        reset_stats(runtime)
        return stats_snapshot(runtime)
    raise ConfigError(f"unknown control operation {op!r}")


def switched_config(config: LynxConfig, request: dict) -> LynxConfig:
    """The config a POST /lynx/policy asks for. A new policy starts from the given params; the
    same policy merges them into its current ones. An absent budget keeps the current one."""
    policy = request.get("policy") or config.policy
    params = request.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"params: {params!r} must be an object of parameter values")
    if policy == config.policy:
        params = {**config.params, **params}
    budget = request["budget"] if "budget" in request else config.budget
    if policy == "baseline" and "budget" not in request:
        budget = None  # baseline takes no budget; switching to it drops the old one
    parsed = Budget.parse(budget)
    return replace(config, policy=policy, params=params, budget=None if parsed is None else str(parsed))


def policy_state(runtime: LynxRuntime) -> dict:
    settings = runtime.settings
    state = settings.config.public_view()
    state["controller"] = None if settings.controller is None else settings.controller.state()
    state["budget_experts"] = settings.current_cap()
    state["cuda_graphs_replay_pruning"] = settings.signature() == runtime.graph_signature
    state["expert_compute"] = {str(layer): name for layer, name in runtime.expert_compute.describe().items()}
    return state


def stats_snapshot(runtime: LynxRuntime) -> dict:
    settings, counts = runtime.settings, runtime.counts
    figures = runtime.stats.snapshot()
    fallback_steps = figures.pop("fallback_steps")
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
        "stats_enabled": settings.config.stats,
        "controller": None if settings.controller is None else settings.controller.state(),
        **figures,
    }


def reset_stats(runtime: LynxRuntime) -> None:
    runtime.counts.reset()
    runtime.fallback_report.reset()
    runtime.router.failures = 0
    runtime.stats.reset()
    if runtime.decisions is not None:
        runtime.decisions.reset()
