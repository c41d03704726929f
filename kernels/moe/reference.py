"""The obviously-correct MoE every implementation is tested against: a loop over (token, slot) pairs in
float64.

    out[t] = sum_j topk_weights[t, j] * w2[e] @ (act(gate_e @ x_t) * (up_e @ x_t)),  e = topk_ids[t, j]

A slot whose expert id is negative, out of range, or not in the active mask contributes 0 and its
weights are never read. Slow by design; for tests and small checks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .call import MoeCall


def apply_activation(gate: torch.Tensor, activation: str) -> torch.Tensor:
    """SiLU, or exact (erf) GELU as in the stock fused MoE's ``gelu_and_mul``."""
    return F.silu(gate) if activation == "silu" else F.gelu(gate)


def run_reference(call: MoeCall) -> torch.Tensor:
    """The MoE in float64 ([T, H] float64, or copied into `out`)."""
    intermediate, num_experts = call.intermediate_size, call.num_experts
    result = torch.zeros(call.hidden.shape[0], call.w2.shape[1], dtype=torch.float64, device=call.hidden.device)
    mask = None if call.active_mask is None else call.active_mask.tolist()
    for t in range(call.hidden.shape[0]):
        x = call.hidden[t].double()
        for j in range(call.topk_ids.shape[1]):
            e = int(call.topk_ids[t, j])
            if e < 0 or e >= num_experts or (mask is not None and not mask[e]):
                continue  # contributes 0; its weights are not read
            gate = call.w13[e, :intermediate].double() @ x
            up = call.w13[e, intermediate:].double() @ x
            h = apply_activation(gate, call.activation) * up
            result[t] += call.topk_weights[t, j].double() * (call.w2[e].double() @ h)
    return result if call.out is None else call.out.copy_(result)
