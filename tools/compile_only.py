"""Compile the Triton kernels exactly as a real call on an H100/H200 would, without a GPU.

`hopper_compile` builds each kernel from a hand-written signature. A real launch also specialises
on its arguments: pointer alignment and integers divisible by 16 (Triton's `tt.divisibility`), the
dtype of every tensor. Those change the layouts Triton picks, and some layouts crash Triton 3.6's
compiler where others compile (seen on an H100: an assertion in its scan lowering at E 64, top-1).
Here the real launch code of the routing kernels (`route_triton`) runs on CPU tensors, with a
stand-in driver that says "CUDA, sm_90" and kernels that compile instead of launching.

    with compile_only_for_hopper():
        route_triton(call)   # a RoutingCall on CPU tensors: both launches compiled for sm_90

Outputs of calls made inside the block are garbage (nothing ran): use it for compilation only.
"""

from __future__ import annotations

import contextlib


class _HopperDriver:
    """Just enough of a Triton driver for JITFunction.run to specialise and compile."""

    def __init__(self, real):
        self._real = real

    def get_current_device(self):
        return "hopper-aot"

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def __getattr__(self, name):  # anything else (benchmarker, utils) from the real driver
        return getattr(self._real, name)


@contextlib.contextmanager
def compile_only_for_hopper():
    """Inside: every Triton launch compiles for sm_90 and launches nothing."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from lynx_sglang.kernels.routing import triton_plan
    from lynx_sglang.kernels.triton_shared import INTERPRETING

    if INTERPRETING:
        raise RuntimeError("compile_only_for_hopper: unset TRITON_INTERPRET (the interpreter replaces the kernels)")
    original_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        return original_run(self, *args, grid=grid, warmup=True, **kwargs)

    try:
        real = driver.active
    except RuntimeError:  # no GPU: Triton finds no active driver
        real = None
    driver.set_active(_HopperDriver(real))
    JITFunction.run = run
    triton_plan.ALLOW_CPU_TENSORS = True
    try:
        yield
    finally:
        triton_plan.ALLOW_CPU_TENSORS = False
        JITFunction.run = original_run
        if real is None:
            driver._active = None
        else:
            driver.set_active(real)
