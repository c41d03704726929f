"""Obviously-correct reference for the active-expert MoE: a loop over (token, slot) pairs in fp64.

    out[t] = sum_j topk_weights[t, j] * w2[e] @ (act(gate_e @ x_t) * (up_e @ x_t)),  e = topk_ids[t, j]

where w13[e] holds the gate rows [0, I) then the up rows [I, 2I) (SGLang's FusedMoE layout). A slot
whose expert id is negative, out of range, or not in ``active_mask`` contributes 0 and its weights are
never read. Slow by design; for tests and small checks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "gelu")


def apply_activation(gate: torch.Tensor, activation: str) -> torch.Tensor:
    """SiLU, or exact (erf) GELU as in the stock fused MoE's ``gelu_and_mul``."""
    if activation == "silu":
        return F.silu(gate)
    if activation == "gelu":
        return F.gelu(gate)  # approximate="none": the erf form
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def fused_moe_reference(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    active_mask: torch.Tensor | None = None,
    activation: str = "silu",
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Return the MoE output [T, H] in ``compute_dtype`` (fp64 by default)."""
    num_tokens, _ = hidden.shape
    num_experts, two_i, _ = w13.shape
    intermediate = two_i // 2
    out = torch.zeros(num_tokens, w2.shape[1], dtype=compute_dtype, device=hidden.device)
    mask = None if active_mask is None else active_mask.to(torch.bool).tolist()
    for t in range(num_tokens):
        x = hidden[t].to(compute_dtype)
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            if e < 0 or e >= num_experts or (mask is not None and not mask[e]):
                continue  # contributes 0; its weights are not read
            gate = w13[e, :intermediate].to(compute_dtype) @ x
            up = w13[e, intermediate:].to(compute_dtype) @ x
            h = apply_activation(gate, activation) * up
            out[t] += topk_weights[t, j].to(compute_dtype) * (w2[e].to(compute_dtype) @ h)
    return out
