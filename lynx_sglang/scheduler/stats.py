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
from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.policies import ids_to_mask
from lynx_sglang.kernels.routing.batch import real_rows

def cpu_bookkeeping_available() -> bool:
    """Whether the C++ bookkeeping (kernels/layer_cpu.py) loads here: it shares the routing op's library."""
    from lynx_sglang.kernels.bookkeeping.cpu import load_layer_op

    return load_layer_op() is not None


_COL = {name: i for i, name in enumerate(FIELDS)}


@dataclass(frozen=True)
class MoeLayerInfo:
    layer_id: int
    num_experts: int
    top_k: int
    expert_bytes: int  # weight bytes of one expert, whole model (all tensor-parallel shards)


class RoutingStats:
    """fused: add each layer call's figures with one Triton launch (kernels/layer_triton.py) instead
    of dozens of torch ops; None = on CUDA when Triton is available (Triton has no CPU backend).
    cpu_op: the same with one call into the C++ library of the routing op (kernels/layer_cpu.py);
    None = on a CPU when it builds."""

    def __init__(self, layers: list[MoeLayerInfo], device: torch.device, fused: bool | None = None,
                 cpu_op: bool | None = None):  # fmt: skip
        self.layers = layers
        if fused is None:
            fused = torch.device(device).type == "cuda" and fused_available("triton")
        if cpu_op is None:
            cpu_op = torch.device(device).type == "cpu" and cpu_bookkeeping_available()
        self.fused = fused
        self.cpu_op = cpu_op
        self.row_of = {info.layer_id: row for row, info in enumerate(layers)}
        self.table = torch.zeros(len(layers), len(FIELDS), dtype=torch.float64, device=device)
        # Set by any layer that fell back during the current step; folded into the count at step end.
        self.step_fell_back = torch.zeros((), dtype=torch.float64, device=device)
        self.fallback_steps = torch.zeros((), dtype=torch.float64, device=device)

    def record(self, layer_id: int, num_real, router_logits: torch.Tensor, original_ids: torch.Tensor,
               final_ids: torch.Tensor, fell_back: torch.Tensor | None = None) -> None:
        """Add one layer call. num_real: the first rows that are real (a 0-dim tensor, an int, or None
        for all); fell_back: a 0-dim bool tensor (the layer kept the model's own routing, so it counts
        as a fallback and nothing else), or None (it did not fall back)."""
        row = self.row_of.get(layer_id)
        if row is None:
            return
        if self.fused:
            from lynx_sglang.kernels.bookkeeping.triton_launch import record_triton

            record_triton(self.table[row], self.step_fell_back, num_real, router_logits, original_ids, final_ids,
                          fell_back)  # fmt: skip
            return
        if self.cpu_op:
            from lynx_sglang.kernels.bookkeeping.cpu import record_cpu

            record_cpu(self.table[row], self.step_fell_back, num_real, router_logits, original_ids, final_ids, fell_back)
            return
        num_experts = router_logits.shape[-1]
        real = real_rows(router_logits.shape[0], num_real, router_logits.device)
        if fell_back is None:
            fell_back = torch.zeros((), dtype=torch.bool, device=router_logits.device)
        before = ids_to_mask(original_ids, real, num_experts).sum()
        after = ids_to_mask(final_ids, real, num_experts).sum()
        # A token is rerouted when one of its original experts is gone from its final ones.
        kept = (original_ids.unsqueeze(-1) == final_ids.unsqueeze(-2)).any(dim=-1)  # [T, k]
        rerouted = (real & ~kept.all(dim=-1)).sum()
        probs = torch.softmax(router_logits.float(), dim=-1).nan_to_num(0.0)
        original_probs = probs.gather(1, original_ids.long().clamp(0, num_experts - 1))
        dropped = (original_probs * ~kept * real.unsqueeze(1)).sum()
        counted = (~fell_back).double()
        values = torch.stack([
            counted, real.sum().double() * counted, before.double() * counted,
            after.double() * counted, rerouted.double() * counted, dropped.double() * counted,
            fell_back.double(),
        ])  # fmt: skip
        self.table[row].add_(values)
        self.step_fell_back.copy_(torch.maximum(self.step_fell_back, fell_back.double()))

    def row(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(the layer's table row [7] float64, the step's fallback flag): where a fused launch adds a
        layer call's figures; None for a layer not tracked."""
        row = self.row_of.get(layer_id)
        return None if row is None else (self.table[row], self.step_fell_back)

    def end_step(self) -> None:
        self.fallback_steps.add_(self.step_fell_back)
        self.step_fell_back.zero_()

    def mark_step_fallback(self) -> None:
        self.step_fell_back.fill_(1.0)

    def reset(self) -> None:
        self.table.zero_()
        self.fallback_steps.zero_()
        self.step_fell_back.zero_()

    def snapshot(self) -> dict:
        """Per-layer figures and model-wide means, read back to the host (a sync: readers only)."""
        table = self.table.cpu().tolist()
        layers = [_layer_figures(info, dict(zip(FIELDS, values))) for info, values in zip(self.layers, table)]
        counted = [layer for layer in layers if layer["steps"]]

        def mean(key):
            return sum(layer[key] for layer in counted) / len(counted) if counted else 0.0

        def total(key):
            return sum(layer[key] for layer in counted)

        return {
            "fallback_steps": int(self.fallback_steps.item()),
            "distinct_experts_before": mean("distinct_experts_before"),
            "distinct_experts_after": mean("distinct_experts_after"),
            "expert_bytes_per_decode_token_before": total("expert_bytes_per_decode_token_before"),
            "expert_bytes_per_decode_token_after": total("expert_bytes_per_decode_token_after"),
            "tokens_rerouted_fraction": mean("tokens_rerouted_fraction"),
            "router_mass_dropped_per_token": mean("router_mass_dropped_per_token"),
            "layers": layers,
        }


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
