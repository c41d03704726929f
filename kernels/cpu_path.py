"""CPU torch path: loop over the active experts only.

For each active expert with tokens: gather its token rows, two ``F.linear`` calls (gate/up, then down),
and a weighted ``index_add_`` into an fp32 accumulator. Weights of experts outside the active set are
never touched (``w13[e]`` is a view, only taken for experts we compute).

Unlike the CUDA path this one uses a host-side list of the experts to run (``.tolist()`` on the counts):
a CPU has no CUDA graphs to capture, and a Python loop over the real experts is the cheapest way to skip
the rest. It is therefore NOT graph safe and is not meant to be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .align import computed_pairs_mask
from .reference import apply_activation


def fused_moe_active_cpu(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    active_mask: torch.Tensor | None = None,
    activation: str = "silu",
    *,
    max_active_experts: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`lynx_sglang.kernels.fused_moe_active`, computed with torch ops.
    max_active_experts only sizes the CUDA grid; the loop here runs the experts that have pairs."""
    num_tokens, hidden_size = hidden.shape
    num_experts, two_i, _ = w13.shape
    intermediate = two_i // 2
    top_k = topk_ids.shape[1]
    if out is None:
        out = torch.empty(num_tokens, w2.shape[1], dtype=hidden.dtype, device=hidden.device)

    flat_ids = topk_ids.reshape(-1).long()
    flat_weights = topk_weights.reshape(-1).float()
    pair_is_computed = computed_pairs_mask(topk_ids, num_experts, active_mask)
    sort_key = torch.where(pair_is_computed, flat_ids, torch.full_like(flat_ids, num_experts))
    pairs_by_expert = torch.argsort(sort_key, stable=True)

    counts = torch.bincount(sort_key, minlength=num_experts + 1)[:num_experts]
    counts_host = counts.tolist()  # host-side list: fine on CPU, see module docstring

    accumulator = torch.zeros(num_tokens, out.shape[1], dtype=torch.float32, device=hidden.device)
    start = 0
    for expert, count in enumerate(counts_host):
        if count == 0:
            continue  # inactive or no tokens: weights untouched
        pairs = pairs_by_expert[start : start + count]
        start += count
        tokens = pairs // top_k
        x = hidden.index_select(0, tokens)
        # Activation in fp32 (as the Triton kernel does on its fp32 accumulator), stored in the input
        # dtype for the down projection.
        gate_up = F.linear(x, w13[expert]).float()
        h = apply_activation(gate_up[:, :intermediate], activation) * gate_up[:, intermediate:]
        y = F.linear(h.to(hidden.dtype), w2[expert])
        accumulator.index_add_(0, tokens, y.float() * flat_weights[pairs, None])
    out.copy_(accumulator)
    return out
