"""The latency controller's cost model, measured at start: the slope b of "step time = a + b x
experts computed per MoE layer" (scheduler/controller.py), measured on the model's own expert weights."""

from __future__ import annotations

import logging
import time

import torch

logger = logging.getLogger("lynx_sglang")


def measure_ms_per_expert(w13: torch.Tensor, w2: torch.Tensor, activation: str, num_experts: int, top_k: int,
                            num_layers: int) -> float:  # fmt: skip
    """Time the expert compute of one layer with k and with E experts active, and scale the
    per-expert slope to all MoE layers: the controller's b."""
    from lynx_sglang.kernels import fused_moe_active

    tokens = max(8, num_experts)
    hidden = torch.randn(tokens, w13.shape[2], dtype=w13.dtype, device=w13.device) * 0.1
    weights = torch.full((tokens, top_k), 1.0 / top_k, device=w13.device)

    def time_with(active: int) -> float:
        slots = torch.arange(tokens * top_k, device=w13.device).view(tokens, top_k)
        ids = (slots % active).to(torch.int32)
        best = float("inf")
        for _ in range(3):
            _synchronize(w13.device)
            started = time.perf_counter()
            fused_moe_active(hidden, w13, w2, ids, weights, None, activation)
            _synchronize(w13.device)
            best = min(best, time.perf_counter() - started)
        return best * 1000.0

    low = max(top_k, 1)
    t_low, t_all = time_with(low), time_with(num_experts)
    slope = (t_all - t_low) / (num_experts - low) if num_experts > low else t_all / num_experts
    slope = max(slope, t_all / num_experts / 4)  # noise must not make the slope vanish
    total = slope * num_layers
    logger.info("lynx-sglang: latency controller calibrated: %.3f ms per expert over %d MoE layers", total, num_layers)
    return total


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
