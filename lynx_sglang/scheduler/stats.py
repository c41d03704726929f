"""Routing statistics, accumulated on the model's device with tensor ops only.

Every MoE layer call of a pruned decode step adds one row of figures to a [layers, fields] float64
table (exact for counts below 2**53). Nothing here reads a tensor back to the host on the step path,
so it works inside CUDA graphs; `snapshot()` is the one place that copies the table to the host, and
only a reader (the `/lynx/stats` endpoint, the metrics scrape) calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lynx_sglang.kernels.bookkeeping.layout import FIELDS
from lynx_sglang.kernels.bookkeeping import Bookkeeping


@dataclass(frozen=True)
class MoeLayerInfo:
    layer_id: int
    num_experts: int
    top_k: int
    expert_bytes: int  # weight bytes of one expert, whole model (all tensor-parallel shards)


class RoutingStats:
    """bookkeeping: the backend that adds a layer call's figures (kernels/bookkeeping/)."""

    def __init__(self, layers: list[MoeLayerInfo], device: torch.device, bookkeeping: Bookkeeping):
        self.layers = layers
        self._record = bookkeeping.record
        self.row_of = {info.layer_id: row for row, info in enumerate(layers)}
        self.table = torch.zeros(len(layers), len(FIELDS), dtype=torch.float64, device=device)
        # Set by any layer that fell back during the current step; folded into the count at step end.
        self.step_fell_back = torch.zeros((), dtype=torch.float64, device=device)
        self.fallback_steps = torch.zeros((), dtype=torch.float64, device=device)
        # Per layer, host-side: one-row steps that kept the model's routing with nothing launched.
        self.lone_row_steps = [0] * len(layers)

    def record(self, layer_id: int, num_real, router_logits: torch.Tensor, original_ids: torch.Tensor,
               final_ids: torch.Tensor, fell_back: torch.Tensor | None = None) -> None:
        """Add one layer call. num_real: the first rows that are real (a 0-dim tensor, an int, or None
        for all); fell_back: a 0-dim bool tensor (the layer kept the model's own routing, so it counts
        as a fallback and nothing else), or None (it did not fall back)."""
        row = self.row_of.get(layer_id)
        if row is not None:
            self._record(self.table[row], self.step_fell_back, num_real, router_logits, original_ids, final_ids,
                         fell_back)  # fmt: skip

    def row(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(the layer's table row [7] float64, the step's fallback flag): where a fused launch adds a
        layer call's figures; None for a layer not tracked."""
        row = self.row_of.get(layer_id)
        return None if row is None else (self.table[row], self.step_fell_back)

    def add_lone_row_step(self, layer_ids) -> None:
        """A step of one real row that kept the model's routing in `layer_ids`: k distinct experts
        before and after, nothing rerouted or dropped (added to the figures when read)."""
        for layer_id in layer_ids:
            row = self.row_of.get(layer_id)
            if row is not None:
                self.lone_row_steps[row] += 1

    def end_step(self) -> None:
        self.fallback_steps.add_(self.step_fell_back)
        self.step_fell_back.zero_()

    def mark_step_fallback(self) -> None:
        self.step_fell_back.fill_(1.0)

    def reset(self) -> None:
        self.lone_row_steps = [0] * len(self.layers)
        self.table.zero_()
        self.fallback_steps.zero_()
        self.step_fell_back.zero_()

    def snapshot(self) -> dict:
        """Per-layer figures and model-wide means, read back to the host (a sync: readers only)."""
        table = self.table.cpu().tolist()
        layers = [_layer_figures(info, _with_lone_rows(dict(zip(FIELDS, values)), lone, info.top_k))
                  for info, values, lone in zip(self.layers, table, self.lone_row_steps)]  # fmt: skip
        return {"fallback_steps": int(self.fallback_steps.item()), **model_wide_figures(layers)}


def model_wide_figures(layers: list[dict]) -> dict:
    """The model-wide figures of per-layer ones: means over the layers that ran a step, bytes summed."""
    counted = [layer for layer in layers if layer["steps"]]

    def mean(key):
        return sum(layer[key] for layer in counted) / len(counted) if counted else 0.0

    def total(key):
        return float(sum(layer[key] for layer in counted))

    return {
        "distinct_experts_before": mean("distinct_experts_before"),
        "distinct_experts_after": mean("distinct_experts_after"),
        "expert_bytes_per_decode_token_before": total("expert_bytes_per_decode_token_before"),
        "expert_bytes_per_decode_token_after": total("expert_bytes_per_decode_token_after"),
        "tokens_rerouted_fraction": mean("tokens_rerouted_fraction"),
        "router_mass_dropped_per_token": mean("router_mass_dropped_per_token"),
        "layers": layers,
    }


def _with_lone_rows(raw: dict, steps: int, top_k: int) -> dict:
    added = {"steps": steps, "tokens": steps, "distinct_before": steps * top_k, "distinct_after": steps * top_k}
    return {name: value + added.get(name, 0) for name, value in raw.items()}


def _layer_figures(info: MoeLayerInfo, raw: dict) -> dict:
    steps, tokens = raw["steps"], raw["tokens"]

    def per_step(value):
        return value / steps if steps else 0.0

    def per_token(value):
        return value / tokens if tokens else 0.0

    return {
        "layer": info.layer_id,
        "num_experts": info.num_experts,
        "top_k": info.top_k,
        "expert_bytes": info.expert_bytes,
        "steps": int(steps),
        "decode_tokens": int(tokens),
        "distinct_experts_before": per_step(raw["distinct_before"]),
        "distinct_experts_after": per_step(raw["distinct_after"]),
        "tokens_rerouted": int(raw["rerouted"]),
        "tokens_rerouted_fraction": per_token(raw["rerouted"]),
        "router_mass_dropped": raw["mass_dropped"],
        "router_mass_dropped_per_token": per_token(raw["mass_dropped"]),
        "fallbacks": int(raw["fallbacks"]),
        "expert_bytes_per_decode_token_before": per_token(raw["distinct_before"]) * info.expert_bytes,
        "expert_bytes_per_decode_token_after": per_token(raw["distinct_after"]) * info.expert_bytes,
    }
