"""The serving runtime's work after a policy's decision, per MoE layer call: checks (fall back to the
model's routing on bad input), the final routing, the active mask and a row of statistics
(layout.FIELDS). Three implementations with one signature each, `record` and `finalize`: the torch
reference (reference.py, which says what each figure means), one Triton launch (triton_launch.py)
and one C++ call (cpu.py, cpu.cpp). `bookkeeping_for(device)`: the one kernels/backend.py chooses."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

from .reference import finalize_torch, record_torch


class Bookkeeping(NamedTuple):
    name: str  # "triton", "cpu" or "torch"
    record: Callable
    finalize: Callable


BACKENDS = ("triton", "cpu", "torch")


@functools.cache
def bookkeeping_named(backend: str) -> Bookkeeping:
    """The calls of one backend by name (a caller that forces one: tests, benchmarks, the runtime)."""
    if backend == "triton":
        from .triton_launch import finalize_triton, record_triton

        return Bookkeeping(backend, record_triton, finalize_triton)
    if backend == "cpu":
        from .cpu import finalize_cpu, record_cpu

        return Bookkeeping(backend, record_cpu, finalize_cpu)
    if backend == "torch":
        return Bookkeeping(backend, record_torch, finalize_torch)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def bookkeeping_for(device: torch.device | str) -> Bookkeeping:
    """The backend kernels/backend.py chooses for `device` (one rule for decisions and bookkeeping)."""
    from ..backend import fused_backend

    return bookkeeping_named(fused_backend(device))


__all__ = ["BACKENDS", "Bookkeeping", "bookkeeping_for", "bookkeeping_named", "finalize_torch", "record_torch"]
