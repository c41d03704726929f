"""Where a routing decision and its bookkeeping run on a device: the one choice, made once per device
type and shared by the policies' `implementation="auto"`, the serving runtime and the benchmarks.

Triton on CUDA where Triton imports; the C++ ops on a CPU where both (the routing op and the layer
op) build; torch otherwise. A decision and its bookkeeping on different backends would work, but the
runtime reports one name for both, so one rule decides both.
"""

from __future__ import annotations

import functools

import torch


def fused_backend(device: torch.device | str) -> str:
    """"triton", "cpu" or "torch" for tensors on `device`."""
    return _backend_for(torch.device(device).type)


@functools.cache
def _backend_for(device_type: str) -> str:
    from .routing.dispatch import fused_available

    if device_type == "cuda":
        return "triton" if fused_available("triton") else "torch"
    if device_type == "cpu" and fused_available("cpu"):
        from .bookkeeping.cpu import load_layer_op

        return "cpu" if load_layer_op() is not None else "torch"
    return "torch"
