"""Active-expert fused MoE compute (pure compute; knows nothing of SGLang or policies).

    from lynx_sglang.kernels import fused_moe_active
    out = fused_moe_active(hidden, w13, w2, topk_ids, topk_weights, active_mask=None, activation="silu")

CUDA tensors run the Triton kernels (:mod:`.triton_moe`); CPU tensors run the torch loop over active
experts (:mod:`.cpu_path`). The Triton module is imported lazily, on first use, so that importing this
package never decorates Triton kernels before a test has had the chance to set TRITON_INTERPRET=1.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch

from .align import ActiveAlignment, align_active_experts, max_blocks_bound
from .cpu_path import fused_moe_active_cpu
from .reference import fused_moe_reference

if TYPE_CHECKING:
    from .triton_moe import MoeKernelConfig, fused_moe_active_triton


def fused_moe_active(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    active_mask: torch.Tensor | None = None,
    activation: str = "silu",
    **options,
) -> torch.Tensor:
    """MoE output [T, H] computed over the active experts only.

    Args:
        hidden: [T, H] activations.
        w13: [E, 2I, H] gate rows then up rows (SGLang's FusedMoE layout).
        w2: [E, H, I] down projection.
        topk_ids: [T, k] expert ids; a negative id (SGLang's padding) contributes 0.
        topk_weights: [T, k] routing weights.
        active_mask: [E] bool, or None for "the experts present in topk_ids". A choice that points at an
            inactive expert contributes 0, and that expert's weights are never read.
        activation: "silu" or "gelu" (exact erf form), applied to the gate then multiplied by up.
        options (keyword-only, passed to the implementation): max_active_experts (a static bound on
            the experts holding pairs; tightens the CUDA grid), out (a preallocated [T, H] output,
            every element written); on CUDA also config and alignment (fused_moe_active_triton).
    """
    if hidden.is_cuda:
        from .triton_moe import fused_moe_active_triton as implementation
    else:
        implementation = fused_moe_active_cpu
    return implementation(hidden, w13, w2, topk_ids, topk_weights, active_mask, activation, **options)


_LAZY_TRITON_NAMES = {"fused_moe_active_triton", "MoeKernelConfig", "choose_config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_TRITON_NAMES:
        return getattr(importlib.import_module(".triton_moe", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ActiveAlignment",
    "MoeKernelConfig",
    "align_active_experts",
    "choose_config",
    "fused_moe_active",
    "fused_moe_active_cpu",
    "fused_moe_active_triton",
    "fused_moe_reference",
    "max_blocks_bound",
]
