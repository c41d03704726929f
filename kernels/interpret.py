"""Triton's CPU interpreter for machines without CUDA (tests, and checks of the kernels on a CPU)."""

import os


def interpret_without_cuda() -> bool:
    """Set TRITON_INTERPRET=1 when no CUDA device is present, unless the caller already chose.

    Triton reads the variable when `@triton.jit` decorates a function, so call this before any
    module with kernels is imported. Returns whether the interpreter is on."""
    if "TRITON_INTERPRET" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    return os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_on() -> bool:
    """Whether `@triton.jit` decorating now produces interpreted functions."""
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None and getattr(knobs.runtime, "interpret", False):
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
