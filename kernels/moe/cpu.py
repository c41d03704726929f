"""The active-expert MoE on a CPU in torch ops: a loop over the active experts that hold tokens.

For each such expert: gather its token rows, two ``F.linear`` calls (gate/up, then down), and a
weighted ``index_add_`` into an fp32 accumulator. Weights of other experts are never touched (``w13[e]``
is a view, taken only for experts computed). The loop runs over a host-side list of the experts
(``.tolist()`` on the counts): a CPU has no CUDA graphs to capture, and a Python loop over the real
experts is the cheapest way to skip the rest. So this path is NOT graph safe, and need not be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .align import computed_pairs_mask
from .call import MoeCall
from .reference import apply_activation


def run_cpu(call: MoeCall) -> torch.Tensor:
    """max_active_experts only sizes the CUDA grid; the loop here runs the experts that have pairs."""
    hidden, intermediate, top_k = call.hidden, call.intermediate_size, call.topk_ids.shape[1]
    out = call.output()
    flat_ids = call.topk_ids.reshape(-1).long()
    flat_weights = call.topk_weights.reshape(-1).float()
    pair_is_computed = computed_pairs_mask(call.topk_ids, call.num_experts, call.active_mask)
    sort_key = torch.where(pair_is_computed, flat_ids, torch.full_like(flat_ids, call.num_experts))
    pairs_by_expert = torch.argsort(sort_key, stable=True)
    counts = torch.bincount(sort_key, minlength=call.num_experts + 1)[: call.num_experts].tolist()

    accumulator = torch.zeros(out.shape, dtype=torch.float32, device=hidden.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue  # inactive or no tokens: weights untouched
        pairs = pairs_by_expert[start : start + count]
        start += count
        tokens = pairs // top_k
        x = hidden.index_select(0, tokens)
        # Activation in fp32 (as the Triton kernel does on its fp32 accumulator), stored in the input
        # dtype for the down projection.
        gate_up = F.linear(x, call.w13[expert]).float()
        h = apply_activation(gate_up[:, :intermediate], call.activation) * gate_up[:, intermediate:]
        y = F.linear(h.to(hidden.dtype), call.w2[expert])
        accumulator.index_add_(0, tokens, y.float() * flat_weights[pairs, None])
    out.copy_(accumulator)
    return out
