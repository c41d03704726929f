"""From measured blocks to figures: per arm and concurrency level (accuracy, latency, throughput,
the server's expert statistics), and paired comparisons of two arms on the items both answered."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import stats
from .store import Block
from .tasks import Item


@dataclass
class ArmData:
    """Everything one arm measured at one concurrency level, per item and per block."""

    concurrency: int
    arm: str
    correct: dict[int, bool] = field(default_factory=dict)
    ttft_ms: dict[int, float] = field(default_factory=dict)
    tpot_ms: dict[int, float | None] = field(default_factory=dict)
    e2e_ms: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    block_tokens: dict[int, int] = field(default_factory=dict)
    block_seconds: dict[int, float] = field(default_factory=dict)
    item_block: dict[int, int] = field(default_factory=dict)  # the block each item ran in
    server_stats: list[dict] = field(default_factory=list)

    def add(self, block: Block) -> None:
        for offset, index in enumerate(range(block.first_item, block.first_item + len(block.correct))):
            self.correct[index] = block.correct[offset]
            self.ttft_ms[index] = block.ttft_ms[offset]
            self.tpot_ms[index] = block.tpot_ms[offset]
            self.e2e_ms[index] = block.e2e_ms[offset]
            self.tokens[index] = block.tokens[offset]
            self.item_block[index] = block.block
        self.block_tokens[block.block] = sum(block.tokens)
        self.block_seconds[block.block] = block.wall_s
        self.server_stats.append(block.stats)


def group_blocks(blocks: list[Block]) -> dict[tuple[int, str], ArmData]:
    groups: dict[tuple[int, str], ArmData] = {}
    for block in blocks:
        groups.setdefault((block.concurrency, block.arm), ArmData(block.concurrency, block.arm)).add(block)
    return groups


# ---- the server's statistics, merged over blocks ---------------------------------------------------

def merge_server_stats(snapshots: list[dict]) -> dict:
    """Per layer and model-wide expert figures over several blocks' /lynx/stats (each block was reset
    before it ran, so counts add; per-step means are weighted by steps)."""
    layers: dict[int, dict] = {}
    totals = {"decode_steps": 0, "pruned_steps": 0, "fallback_steps": 0, "policy_failures": 0}
    for snapshot in snapshots:
        for key in totals:
            totals[key] += snapshot.get(key) or 0
        for layer in snapshot.get("layers", []):
            merged = layers.setdefault(layer["layer"], {"layer": layer["layer"], "num_experts": layer["num_experts"],
                                                        "expert_bytes": layer["expert_bytes"], "steps": 0,
                                                        "decode_tokens": 0, "experts_before": 0.0, "experts_after": 0.0,
                                                        "tokens_rerouted": 0, "router_mass_dropped": 0.0, "fallbacks": 0})
            merged["steps"] += layer["steps"]
            merged["decode_tokens"] += layer["decode_tokens"]
            merged["experts_before"] += layer["steps"] * layer["distinct_experts_before"]
            merged["experts_after"] += layer["steps"] * layer["distinct_experts_after"]
            merged["tokens_rerouted"] += layer["tokens_rerouted"]
            merged["router_mass_dropped"] += layer["router_mass_dropped"]
            merged["fallbacks"] += layer["fallbacks"]
    per_layer = [layer_figures(layers[key]) for key in sorted(layers)]
    return {**totals, **model_figures(per_layer, list(layers.values())), "layers": per_layer,
            "cache_misses_per_decode_token": cache_misses_per_decode_token(snapshots)}


def cache_misses_per_decode_token(snapshots: list[dict]) -> float | None:
    """Experts the expert cache copied in on demand per decode token, summed over the cached layers
    (None: no cache, or no decode step)."""
    misses = tokens = 0
    for snapshot in snapshots:
        layers = (snapshot.get("expert_cache") or {}).get("layers") or []
        misses += sum(layer["decode_misses"] for layer in layers)
        tokens += layers[0]["decode_tokens"] if layers else 0
    return misses / tokens if tokens else None


def layer_figures(merged: dict) -> dict:
    steps, tokens = merged["steps"], merged["decode_tokens"]
    return {
        "layer": merged["layer"], "num_experts": merged["num_experts"], "steps": steps, "decode_tokens": tokens,
        "distinct_experts_before": merged["experts_before"] / steps if steps else None,
        "distinct_experts_after": merged["experts_after"] / steps if steps else None,
        "expert_bytes_per_decode_token_before": merged["experts_before"] * merged["expert_bytes"] / tokens if tokens else None,
        "expert_bytes_per_decode_token_after": merged["experts_after"] * merged["expert_bytes"] / tokens if tokens else None,
        "tokens_rerouted_fraction": merged["tokens_rerouted"] / tokens if tokens else None,
        "router_mass_dropped_per_token": merged["router_mass_dropped"] / tokens if tokens else None,
        "fallbacks": merged["fallbacks"],
    }


def model_figures(per_layer: list[dict], merged: list[dict]) -> dict:
    steps = sum(m["steps"] for m in merged)
    tokens = sum(m["decode_tokens"] for m in merged)
    if not steps or not tokens:
        return {key: None for key in ("decode_batch", "distinct_experts_before", "distinct_experts_after",
                                      "expert_bytes_per_decode_token_before", "expert_bytes_per_decode_token_after",
                                      "tokens_rerouted_fraction", "router_mass_dropped_per_token")}
    return {
        "decode_batch": tokens / steps,  # mean decode tokens per pruned step: the batch the policy really saw
        "distinct_experts_before": sum(m["experts_before"] for m in merged) / steps,
        "distinct_experts_after": sum(m["experts_after"] for m in merged) / steps,
        "expert_bytes_per_decode_token_before": sum(l["expert_bytes_per_decode_token_before"] or 0 for l in per_layer),
        "expert_bytes_per_decode_token_after": sum(l["expert_bytes_per_decode_token_after"] or 0 for l in per_layer),
        "tokens_rerouted_fraction": sum(m["tokens_rerouted"] for m in merged) / tokens,
        "router_mass_dropped_per_token": sum(m["router_mass_dropped"] for m in merged) / tokens,
    }


# ---- one arm at one level ---------------------------------------------------------------------------

def accuracy_figures(correct: list[bool]) -> dict:
    right, total = int(sum(correct)), len(correct)
    return {"correct": right, "total": total, "accuracy": right / total if total else None,
            "accuracy_ci": list(stats.accuracy_interval(right, total))}


def latency_figures(values: list[float | None], resamples: int, seed: int, *, quantiles=(0.5, 0.9, 0.99)) -> dict:
    names = {0.5: "median", 0.9: "p90", 0.99: "p99"}
    out = {}
    for q in quantiles:
        estimate, low, high = stats.quantile_interval(values, q, resamples=resamples, seed=seed)
        out[names[q]] = estimate
        out[f"{names[q]}_ci"] = [low, high]
    return out


def summarise_arm(data: ArmData, items: list[Item], *, resamples: int, seed: int, latency_quantiles=(0.5, 0.9, 0.99)) -> dict:
    indices = sorted(data.correct)
    by_task: dict[str, list[bool]] = {}
    for index in indices:
        by_task.setdefault(items[index].task, []).append(data.correct[index])
    seconds = sum(data.block_seconds.values())
    tokens = sum(data.block_tokens.values())
    return {
        "concurrency": data.concurrency, "arm": data.arm, **accuracy_figures([data.correct[i] for i in indices]),
        "by_task": {task: accuracy_figures(values) for task, values in sorted(by_task.items())},
        "ttft_ms": latency_figures([data.ttft_ms[i] for i in indices], resamples, seed, quantiles=latency_quantiles),
        "tpot_ms": latency_figures([data.tpot_ms[i] for i in indices], resamples, seed, quantiles=latency_quantiles),
        "e2e_ms": latency_figures([data.e2e_ms[i] for i in indices], resamples, seed, quantiles=latency_quantiles),
        "output_tokens": tokens, "seconds": seconds,
        "output_tokens_per_s": tokens / seconds if seconds else None,
        "requests_per_s": len(indices) / seconds if seconds else None,
        "blocks": len(data.block_seconds),
        "server": merge_server_stats(data.server_stats),
    }


# ---- two arms at one level ------------------------------------------------------------------------

def compare_arms(a: ArmData, b: ArmData, items: list[Item], summary_a: dict, summary_b: dict, *,
                 resamples: int, seed: int, ratios=("tpot_ms", "ttft_ms", "e2e_ms")) -> dict:
    """B against A on the items both answered: accuracy difference (b - a) with its interval and
    McNemar's exact p, per task too; latency and throughput ratios (b / a); expert bytes."""
    common = sorted(set(a.correct) & set(b.correct))
    a_ok = [a.correct[i] for i in common]
    b_ok = [b.correct[i] for i in common]
    blocks = sorted(set(a.block_seconds) & set(b.block_seconds))
    throughput = stats.paired_ratio_of_sums([a.block_tokens[k] for k in blocks], [a.block_seconds[k] for k in blocks],
                                            [b.block_tokens[k] for k in blocks], [b.block_seconds[k] for k in blocks],
                                            resamples=resamples, seed=seed)
    bytes_a = summary_a["server"]["expert_bytes_per_decode_token_after"]
    bytes_b = summary_b["server"]["expert_bytes_per_decode_token_after"]
    result = {
        "concurrency": a.concurrency, "a": a.arm, "b": b.arm, "items": len(common),
        **paired_accuracy(a_ok, b_ok),
        "by_task": paired_by_task(common, a, b, items),
        "expert_bytes_per_decode_token_a": bytes_a, "expert_bytes_per_decode_token_b": bytes_b,
        "expert_bytes_ratio": bytes_b / bytes_a if bytes_a and bytes_b is not None else None,
        "expert_bytes_fraction_b": same_step_fraction(summary_b["server"]),
        "distinct_experts_a": summary_a["server"]["distinct_experts_after"],
        "distinct_experts_b": summary_b["server"]["distinct_experts_after"],
        "cache_misses_per_decode_token_a": summary_a["server"]["cache_misses_per_decode_token"],
        "cache_misses_per_decode_token_b": summary_b["server"]["cache_misses_per_decode_token"],
        "tpot_median_ms_a": summary_a["tpot_ms"]["median"], "tpot_median_ms_b": summary_b["tpot_ms"]["median"],
        "throughput_ratio": throughput[0], "throughput_ratio_ci": list(throughput[1:]),
    }
    for metric in ratios:
        estimate, low, high = stats.paired_ratio_of_medians(
            [getattr(a, metric)[i] for i in common], [getattr(b, metric)[i] for i in common],
            blocks=[a.item_block.get(i) for i in common], resamples=resamples, seed=seed)
        result[f"{metric.removesuffix('_ms')}_median_ratio"] = estimate
        result[f"{metric.removesuffix('_ms')}_median_ratio_ci"] = [low, high]
    return result


def same_step_fraction(server: dict) -> float | None:
    """Expert bytes the policy read as a fraction of what the model's own routing would have read on
    the very same decode steps. Unlike a ratio between arms it does not move with the decode batch
    sizes, which timing makes differ from arm to arm."""
    before, after = server["expert_bytes_per_decode_token_before"], server["expert_bytes_per_decode_token_after"]
    return after / before if before else None


def paired_accuracy(a_ok: list[bool], b_ok: list[bool]) -> dict:
    n = len(a_ok)
    test = stats.mcnemar_exact(a_ok, b_ok)
    accuracy_a = sum(a_ok) / n if n else None
    accuracy_b = sum(b_ok) / n if n else None
    return {
        "accuracy_a": accuracy_a, "accuracy_b": accuracy_b,
        "accuracy_diff": accuracy_b - accuracy_a if n else None,
        "accuracy_diff_ci": list(stats.paired_difference_interval(a_ok, b_ok)),
        "mcnemar_p": test.p_value, "only_a_correct": test.only_a, "only_b_correct": test.only_b,
    }


def paired_by_task(common: list[int], a: ArmData, b: ArmData, items: list[Item]) -> dict:
    tasks: dict[str, list[int]] = {}
    for index in common:
        tasks.setdefault(items[index].task, []).append(index)
    return {task: {"items": len(indices),
                   **paired_accuracy([a.correct[i] for i in indices], [b.correct[i] for i in indices])}
            for task, indices in sorted(tasks.items())}


def within_points(comparison: dict, points: float = 0.01) -> bool:
    """The lower end of the paired difference's interval is at or above -points."""
    low = comparison["accuracy_diff_ci"][0]
    return low is not None and np.isfinite(low) and low >= -points - 1e-12


@dataclass(frozen=True)
class LossBound:
    """The accuracy bound a verdict names and applies: the lower end of the difference's 95 %
    interval at or above -points. calibrate runs the sweep with its own (max loss less its margin)
    and confirms with its max loss; `why` says how that bound came about, so that a line never names
    a bound it did not apply."""

    points: float = 1.0
    why: str = ""

    def within(self) -> str:
        return f"within {self.points:g} point{'' if self.points == 1 else 's'}"

    def admits(self, point: dict) -> bool:
        return within_points(point, self.points / 100)
