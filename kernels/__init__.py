"""Pure compute for lynx-sglang; knows nothing of SGLang or policies. One folder per concept:

    moe/          the active-expert MoE: fused_moe_active (Triton on CUDA, torch on CPU, a reference)
    routing/      the policies' decisions run fused: rules, two Triton launches, one C++ call
    bookkeeping/  the serving runtime's per-layer checks, final routing, mask and statistics
    cache/        the expert cache of expert offload: host store, device slots, copy plan, copies
    configs/      launch configurations measured per device, as data

    from lynx_sglang.kernels import fused_moe_active
    out = fused_moe_active(hidden, w13, w2, topk_ids, topk_weights, active_mask, "silu")
"""

from __future__ import annotations

import functools

from .moe import IMPLEMENTATIONS, MoeCall, MoeKernelConfig, fused_moe_active
from .moe.align import ActiveAlignment, align_active_experts, max_blocks_bound

# The Triton implementation whatever the tensors' device (CPU tensors under TRITON_INTERPRET=1).
fused_moe_active_triton = functools.partial(fused_moe_active, implementation="triton")

__all__ = [
    "IMPLEMENTATIONS",
    "ActiveAlignment",
    "MoeCall",
    "MoeKernelConfig",
    "align_active_experts",
    "fused_moe_active",
    "fused_moe_active_triton",
    "max_blocks_bound",
]
