"""The active-expert MoE on a CPU in torch ops: a loop over the active experts that hold tokens.

The pairs (token, choice) to compute are sorted by expert once, their token rows gathered once; each
expert then runs two ``F.linear`` calls (gate/up, then down) on its contiguous slice, and one weighted
``index_add_`` adds every pair into an fp32 accumulator, in expert order as a loop of per-expert adds
would. Weights of other experts are never touched (``w13[e]`` is a view, taken only for experts
computed). The loop runs over a host-side list of the experts (``.tolist()`` on the counts): a CPU has
no CUDA graphs to capture, and a Python loop over the real experts is the cheapest way to skip the
rest, so the torch calls per expert are kept few (at small shapes their overhead is the cost). This
path is NOT graph safe, and need not be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .align import computed_pairs_mask
from .call import MoeCall
from .reference import apply_activation


def run_cpu(call: MoeCall) -> torch.Tensor:
    """max_active_experts only sizes the CUDA grid; the loop here runs the experts that have pairs."""
    hidden, intermediate, num_experts = call.hidden, call.intermediate_size, call.num_experts
    out = call.output()
    flat_ids = call.topk_ids.reshape(-1).long()
    pair_is_computed = computed_pairs_mask(call.topk_ids, num_experts, call.active_mask)
    sort_key = torch.where(pair_is_computed, flat_ids, torch.full_like(flat_ids, num_experts))
    counts = torch.bincount(sort_key, minlength=num_experts + 1)[:num_experts].tolist()
    pairs = torch.argsort(sort_key, stable=True)[: sum(counts)]  # computed pairs, grouped by expert
    if pairs.numel() == 0:
        return out.zero_()
    tokens = pairs // call.topk_ids.shape[1]
    rows = hidden.index_select(0, tokens)

    outputs, start = [], 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue  # inactive or no tokens: weights untouched
        x = rows[start : start + count]
        start += count
        # Activation in fp32 (as the Triton kernel does on its fp32 accumulator), stored in the input
        # dtype for the down projection.
        gate_up = F.linear(x, call.w13[expert]).float()
        h = apply_activation(gate_up[:, :intermediate], call.activation) * gate_up[:, intermediate:]
        outputs.append(F.linear(h.to(hidden.dtype), call.w2[expert]))
    weighted = torch.cat(outputs).float() * call.topk_weights.reshape(-1).float()[pairs, None]
    accumulator = torch.zeros(out.shape, dtype=torch.float32, device=hidden.device)
    accumulator.index_add_(0, tokens, weighted)
    out.copy_(accumulator)
    return out
