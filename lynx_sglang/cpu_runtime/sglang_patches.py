"""Torch replacements for SGLang functions that exist only as Triton kernels, registered as plugin
REPLACE hooks on CPU installs (Triton has no CPU driver: "0 active drivers")."""

from __future__ import annotations

import torch


def _shared_expert_gate(hidden_states: torch.Tensor, gate_weight: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as the Triton kernel: the gate's dot product in fp32, then sigmoid.
    return torch.sigmoid(hidden_states.float() @ gate_weight.float()).unsqueeze(-1)


def fused_gate_sigmoid_mul(hidden_states, gate_weight, shared_output):
    """sigmoid(hidden . gate) * shared_output (Qwen2-MoE shared expert)."""
    return (_shared_expert_gate(hidden_states, gate_weight) * shared_output.float()).to(shared_output.dtype)


def fused_gate_sigmoid_mul_add(hidden_states, gate_weight, shared_output, final_hidden_states) -> None:
    """final_hidden_states += sigmoid(hidden . gate) * shared_output, in place."""
    gated = _shared_expert_gate(hidden_states, gate_weight) * shared_output.float()
    final_hidden_states.copy_((final_hidden_states.float() + gated).to(final_hidden_states.dtype))


_ELEMENTWISE = "sglang.kernels.ops.elementwise.elementwise"
REPLACEMENTS = {
    f"{_ELEMENTWISE}.fused_gate_sigmoid_mul": fused_gate_sigmoid_mul,
    f"{_ELEMENTWISE}.fused_gate_sigmoid_mul_add": fused_gate_sigmoid_mul_add,
}
