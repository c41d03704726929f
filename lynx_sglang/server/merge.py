"""The answers of several schedulers made one server's: data-parallel replicas (`--dp-size N`) serve
different requests, so their statistics add up; pipeline stages (`--pp-size N`) hold different layers
of the same steps, so their layer lists join. Pure functions of the answers' JSON (channel.py)."""

from __future__ import annotations

from lynx_sglang.scheduler.expert_cache import cache_totals, prefetch_accuracy
from lynx_sglang.scheduler.stats import model_wide_figures


# What a replica's policy state must share with the others' for them to agree.
SHARED_SETTINGS = ("policy", "params", "budget", "layers", "prune_mixed", "schedule", "kernel")


def merge_policy_states(states: list[dict]) -> dict:
    """The first replica's state, with how many replicas there are and whether they run the same."""
    first = states[0]
    agree = all({k: s.get(k) for k in SHARED_SETTINGS} == {k: first.get(k) for k in SHARED_SETTINGS} for s in states)
    return {**first, "replicas": len(states), "replicas_agree": agree}


def join_stage_states(states: list[dict], num_stages: int | None = None) -> dict:
    """The first stage's state, with every stage's layers in `expert_compute`. `states`: the stages with
    MoE layers, of `num_stages` (default: as many)."""
    expert_compute: dict = {}
    for state in states:
        expert_compute.update(state.get("expert_compute") or {})
    replays = [state.get("cuda_graphs_replay_pruning") for state in states]
    replay = None if all(value is None for value in replays) else all(replays)  # None: no stage has graphs
    return {**states[0], "expert_compute": expert_compute, "cuda_graphs_replay_pruning": replay,
            "pipeline_stages": num_stages or len(states)}  # fmt: skip


# Per-layer figures: None = a count, summed; else the count that weights a mean.
LAYER_FIGURES = {
    "steps": None, "decode_tokens": None, "tokens_rerouted": None, "router_mass_dropped": None, "fallbacks": None,
    "distinct_experts_before": "steps", "distinct_experts_after": "steps",
    "tokens_rerouted_fraction": "decode_tokens", "router_mass_dropped_per_token": "decode_tokens",
    "expert_bytes_per_decode_token_before": "decode_tokens", "expert_bytes_per_decode_token_after": "decode_tokens",
}  # fmt: skip
CACHE_LAYER_FIGURES = {
    "cache_hits": None, "cache_misses": None, "prefetched": None, "prefetch_used": None, "decode_misses": None,
    "decode_prefetched": None, "decode_tokens": None, "cache_bytes_copied_per_decode_token": "decode_tokens",
}  # fmt: skip
STEP_COUNTS = ("decode_steps", "pruned_steps", "passthrough_steps", "fallback_steps", "policy_failures")
# A replica's own figures, listed under "replicas".
REPLICA_SUMMARY = (*STEP_COUNTS, "budget_experts", "controller", "distinct_experts_before", "distinct_experts_after",
                   "tokens_rerouted_fraction", "router_mass_dropped_per_token", "pipeline_stages")  # fmt: skip


def merge_stats(snapshots: list[dict]) -> dict:
    """The statistics of every replica (by replica) as one server's: step counts and per-layer counts
    summed, per-step and per-token figures weighted by the steps and tokens behind them; each
    replica's own figures under "replicas"."""
    first = snapshots[0]
    merged = {**first, **{key: sum(s[key] for s in snapshots) for key in STEP_COUNTS}}
    merged.pop("pipeline_stages", None)  # each replica's, under "replicas"
    for key in ("steps_by_policy", "steps_by_mode"):
        merged[key] = _summed_dicts([s[key] for s in snapshots])
    if first.get("steps_by_band") is not None:
        merged["steps_by_band"] = [{**band, "steps": sum(s["steps_by_band"][i]["steps"] for s in snapshots)}
                                   for i, band in enumerate(first["steps_by_band"])]  # fmt: skip
    merged.update(model_wide_figures(_merged_layers([s["layers"] for s in snapshots], LAYER_FIGURES)))
    if first.get("expert_cache") is not None:
        merged["expert_cache"] = _merged_cache([s["expert_cache"] for s in snapshots])
    if "decisions_by_rank" in first:  # tensor-parallel ranks within each replica
        merged["decisions_by_rank"] = [{"replica": replica, **entry} for replica, s in enumerate(snapshots)
                                       for entry in s["decisions_by_rank"]]  # fmt: skip
        merged["ranks_agree"] = all(s["ranks_agree"] for s in snapshots)
    merged["replicas"] = [{"replica": replica, **{key: s[key] for key in REPLICA_SUMMARY if key in s}}
                          for replica, s in enumerate(snapshots)]  # fmt: skip
    return merged


def join_stage_stats(stages: list[dict], stage_ids: list[int] | None = None) -> dict:
    """The statistics of a pipeline's stages (by stage) as one scheduler's. The stages run the same
    steps on different layers: the layer lists join, the model-wide figures are taken over all of
    them, the step counts are those of the stage that routed the most steps (one whose routers all
    pass through, custom routing functions say, counts every step as passed through) but for
    `fallback_steps` (the most of any stage, exact where one stage fell back) and `policy_failures`
    (summed); each stage's own counts and layers under "pipeline_stages" (`stage_ids`: the stages'
    numbers, where a stage without MoE layers is left out)."""
    stage_ids = list(range(len(stages))) if stage_ids is None else stage_ids
    first = max(stages, key=lambda s: s["decode_steps"])  # the first of equals: stage 0 where all route
    joined = {**first, "fallback_steps": max(s["fallback_steps"] for s in stages),
              "policy_failures": sum(s["policy_failures"] for s in stages)}  # fmt: skip
    joined["pruned_steps"] = joined["decode_steps"] - joined["fallback_steps"]
    joined.update(model_wide_figures(_joined_layers([s["layers"] for s in stages])))
    caches = [s["expert_cache"] for s in stages if s.get("expert_cache") is not None]
    if caches:
        layers = _joined_layers([cache["layers"] for cache in caches])
        joined["expert_cache"] = {**caches[0], **cache_totals(layers, caches[0]["prefetch"])}
    if "decisions_by_rank" in first:  # tensor-parallel ranks within each stage
        joined["decisions_by_rank"] = [{"stage": stage, **entry} for stage, s in zip(stage_ids, stages)
                                       for entry in s["decisions_by_rank"]]  # fmt: skip
        joined["ranks_agree"] = all(s["ranks_agree"] for s in stages)
    joined["pipeline_stages"] = [{"stage": stage, "layers": [layer["layer"] for layer in s["layers"]],
                                  **{key: s[key] for key in STEP_COUNTS}} for stage, s in zip(stage_ids, stages)]  # fmt: skip
    return joined


def _joined_layers(by_stage: list[list[dict]]) -> list[dict]:
    return sorted((layer for layers in by_stage for layer in layers), key=lambda layer: layer["layer"])


def _merged_cache(caches: list[dict]) -> dict:
    first = caches[0]
    layers = _merged_layers([cache["layers"] for cache in caches], CACHE_LAYER_FIGURES)
    for layer in layers:
        layer["prefetch_accuracy"] = prefetch_accuracy(first["prefetch"], layer["prefetch_used"], layer["prefetched"])
    return {**first, **cache_totals(layers, first["prefetch"])}


def _merged_layers(by_replica: list[list[dict]], figures: dict[str, str | None]) -> list[dict]:
    """The same layers of every replica (the same model, in the same order) as one list."""
    merged = []
    for same_layer in zip(*by_replica):
        layer = dict(same_layer[0])
        for key, weight in figures.items():
            if weight is None:
                layer[key] = sum(entry[key] for entry in same_layer)
            else:
                total = sum(entry[weight] for entry in same_layer)
                layer[key] = sum(entry[key] * entry[weight] for entry in same_layer) / total if total else 0.0
        merged.append(layer)
    return merged


def _summed_dicts(dicts: list[dict]) -> dict:
    summed: dict = {}
    for counts in dicts:
        for key, value in counts.items():
            summed[key] = summed.get(key, 0) + value
    return summed
