"""Where the runtime's per-layer work runs, chosen once when the runtime binds to the model.

The work itself (kernels/bookkeeping/: checks, final routing, statistics; torch reference, one Triton
launch, one C++ call) has one signature per backend. The backend is also the policy's
`implementation=`, so the choice needs both the fused routing and the bookkeeping on the device:
Triton on CUDA, the C++ ops on a CPU where they build, else torch.
"""

from __future__ import annotations

import torch

from lynx_sglang.kernels.bookkeeping import BACKENDS, Bookkeeping, bookkeeping_named

__all__ = ["BACKENDS", "Bookkeeping", "bookkeeping_named", "choose_backend"]


def choose_backend(device) -> str:
    """Triton on CUDA, the C++ ops on a CPU where they build, torch otherwise."""
    from lynx_sglang.kernels.routing import fused_available

    if torch.device(device).type == "cuda":
        return "triton" if fused_available("triton") else "torch"
    return "cpu" if fused_available("cpu") and _cpu_layer_op_loads() else "torch"


def _cpu_layer_op_loads() -> bool:
    from lynx_sglang.kernels.bookkeeping.cpu import load_layer_op

    return load_layer_op() is not None

