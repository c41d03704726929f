"""`lynx_*` metrics on SGLang's Prometheus endpoint (`--enable-metrics`).

SGLang mounts `/metrics` as prometheus_client's ASGI app over a multiprocess registry. We mount the
same thing with one more collector: on every scrape the route first asks the scheduler for its stats
(asynchronously, between steps), then the collector turns that snapshot into metric families. The
stats stay on the device until someone scrapes.
"""

from __future__ import annotations

import logging

from lynx_sglang.server.channel import SchedulerChannel, SchedulerError, SchedulerUnavailable

logger = logging.getLogger("lynx_sglang")

# Metric name -> help, or -> (key in the /lynx/stats JSON, help) where the key is not the name less
# `lynx_`. Counters get the _total suffix from prometheus_client.
STEP_COUNTERS = {
    "lynx_decode_steps": "Decode steps the policy handled in at least one MoE layer (pruned + fallback).",
    "lynx_pruned_steps": "Decode steps routed by the policy in every MoE layer it routes.",
    "lynx_passthrough_steps": "Steps passed through untouched (prefill, mixed, idle, verify; decode steps "
                              "with every router passed through).",
    "lynx_fallback_steps": "Decode steps on which a layer fell back to the model's routing.",
    "lynx_policy_failures": "Policy calls that raised (each made its layer keep the model's routing).",
}
MODEL_GAUGES = {
    "lynx_distinct_experts_before": ("distinct_experts_before",
                                     "Mean distinct experts per pruned decode step and MoE layer, model routing."),
    "lynx_distinct_experts_after": ("distinct_experts_after",
                                    "Mean distinct experts per pruned decode step and MoE layer, after the policy."),
    "lynx_expert_bytes_per_decode_token_before": ("expert_bytes_per_decode_token_before",
                                                  "Expert weight bytes read per decode token, model routing."),
    "lynx_expert_bytes_per_decode_token_after": ("expert_bytes_per_decode_token_after",
                                                 "Expert weight bytes read per decode token, after the policy."),
    "lynx_tokens_rerouted_fraction": ("tokens_rerouted_fraction",
                                      "Mean fraction of decode tokens with at least one expert replaced."),
    "lynx_router_mass_dropped_per_token": ("router_mass_dropped_per_token",
                                           "Mean router probability of the replaced experts per decode token."),
}
LAYER_GAUGES = {
    "lynx_layer_distinct_experts_before": ("distinct_experts_before", "Mean distinct experts per step, model routing."),
    "lynx_layer_distinct_experts_after": ("distinct_experts_after", "Mean distinct experts per step, after the policy."),
}
LAYER_COUNTERS = {
    "lynx_layer_tokens_rerouted": ("tokens_rerouted", "Decode tokens with at least one expert replaced."),
    "lynx_layer_router_mass_dropped": ("router_mass_dropped", "Router probability of replaced experts, summed."),
    "lynx_layer_decode_tokens": ("decode_tokens", "Decode tokens routed by the policy."),
}


class LynxCollector:
    """Turns the latest /lynx/stats snapshot into Prometheus metric families."""

    def __init__(self):
        self.snapshot: dict | None = None

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        stats = self.snapshot
        if stats is None:
            return
        info = InfoMetricFamily("lynx_policy", "Active expert-selection policy.")
        info.add_metric([], {"policy": stats["policy"], "params": _params_text(stats["params"]),
                             "budget": stats["budget"] or "none", "kernel": stats["kernel"]})
        yield info
        for name, help_text in STEP_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=stats[name.removeprefix("lynx_")])
        for name, (key, help_text) in MODEL_GAUGES.items():
            yield GaugeMetricFamily(name, help_text, value=stats[key])
        budget = GaugeMetricFamily("lynx_budget_experts", "Experts-per-layer cap in force (the number of "
                                   "experts when there is no cap).")
        budget.add_metric([], stats["budget_experts"] or max((l["num_experts"] for l in stats["layers"]), default=0))
        yield budget
        for name, (key, help_text) in LAYER_GAUGES.items():
            family = GaugeMetricFamily(name, help_text, labels=["layer"])
            for layer in stats["layers"]:
                family.add_metric([str(layer["layer"])], layer[key])
            yield family
        for name, (key, help_text) in LAYER_COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=["layer"])
            for layer in stats["layers"]:
                family.add_metric([str(layer["layer"])], layer[key])
            yield family
        yield from cache_families(stats.get("expert_cache"))
        controller = stats.get("controller")
        if controller:
            yield GaugeMetricFamily("lynx_controller_target_tpot_ms", "Latency budget: target time per output "
                                    "token.", value=controller["target_tpot_ms"])
            yield GaugeMetricFamily("lynx_controller_measured_tpot_ms", "Latency budget: measured decode step "
                                    "duration (median of the last window).", value=controller["measured_tpot_ms"] or 0)


CACHE_COUNTERS = {
    "lynx_cache_hits": ("cache_hits", "Distinct experts per MoE layer call already resident in the expert cache."),
    "lynx_cache_misses": ("cache_misses", "Distinct experts per MoE layer call copied from host memory."),
}
CACHE_BYTES = ("cache_bytes_copied_per_decode_token", "Expert bytes copied from host memory per decode token.")


def cache_families(cache: dict | None):
    """`lynx_cache_*` from the expert cache's figures (nothing when the cache is off)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if not cache:
        return
    for name, (key, help_text) in CACHE_COUNTERS.items():
        yield CounterMetricFamily(name, help_text, value=cache[key])
    yield GaugeMetricFamily("lynx_" + CACHE_BYTES[0], CACHE_BYTES[1] + " Summed over MoE layers.", value=cache[CACHE_BYTES[0]])
    if cache["prefetch_accuracy"] is not None:
        yield GaugeMetricFamily("lynx_cache_prefetch_accuracy", "Share of prefetched experts that were used.",
                                value=cache["prefetch_accuracy"])  # fmt: skip
    per_layer = [(CounterMetricFamily, "lynx_cache_layer_" + name.removeprefix("lynx_cache_"), key, help_text)
                 for name, (key, help_text) in CACHE_COUNTERS.items()]  # fmt: skip
    per_layer.append((GaugeMetricFamily, "lynx_cache_layer_bytes_copied_per_decode_token", *CACHE_BYTES))
    for family_type, name, key, help_text in per_layer:
        family = family_type(name, help_text, labels=["layer"])
        for layer in cache["layers"]:
            family.add_metric([str(layer["layer"])], layer[key])
        yield family


def _params_text(params: dict) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(params.items())) or "none"


def install_metrics_route(app, channel: SchedulerChannel) -> None:
    """Replace SGLang's /metrics mount with the same multiprocess registry plus LynxCollector."""
    from prometheus_client import CollectorRegistry, make_asgi_app, multiprocess

    route = next((r for r in app.routes if getattr(r, "path", None) == "/metrics"), None)
    if route is None:
        return
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    collector = LynxCollector()
    registry.register(collector)
    prometheus_app = make_asgi_app(registry=registry)

    async def metrics_with_lynx(scope, receive, send):
        if scope.get("type") == "http":
            try:
                collector.snapshot = await channel.request_async("get_stats")
            except (SchedulerError, SchedulerUnavailable) as exc:
                logger.warning("lynx-sglang: /metrics without lynx figures this time: %s", exc)
        await prometheus_app(scope, receive, send)

    route.app = metrics_with_lynx
