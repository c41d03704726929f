"""Counting the device work a call issues: Triton launches, and torch ops that launch a kernel on CUDA.

    with LaunchCounter() as counter:
        policy.select(...)
    counter.triton, counter.torch_ops, counter.host_syncs

Measured by instrumentation, not assumed: Triton's `run` (compiled and interpreted kernels) is wrapped,
and a torch dispatch mode sees every aten op issued from Python. Ops that allocate or only view memory
launch nothing and are not counted; ops that read a value to the host are counted as syncs. Torch ops a
Triton launch makes internally (the interpreter copies tensors) are not counted. On CPU tensors the
torch count is what the same code would launch on CUDA (at least one kernel per op).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that launch no kernel: allocation, views, metadata.
_NO_KERNEL = {
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "view", "_unsafe_view", "reshape",
    "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided", "t", "transpose", "permute", "alias",
    "detach", "lift_fresh", "unbind", "split", "split_with_sizes", "view_as_real", "view_as_complex", "_reshape_alias",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "dim", "size", "stride",
}  # fmt: skip
_HOST_SYNC = {"_local_scalar_dense", "item", "tolist", "nonzero", "equal", "is_nonzero"}


class LaunchCounter(TorchDispatchMode):
    """Counts Triton launches, kernel-launching torch ops and host syncs issued inside the block."""

    def __init__(self):
        super().__init__()
        self.triton = 0
        self.torch_ops = 0
        self.host_syncs = 0
        self.op_names: list[str] = []
        self._inside_triton = 0
        self._restore = []

    @property
    def launches(self) -> int:
        return self.triton + self.torch_ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self._inside_triton:
            if name in _HOST_SYNC:
                self.host_syncs += 1
            elif name not in _NO_KERNEL:
                self.torch_ops += 1
                self.op_names.append(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for cls in _triton_function_classes():
            original = cls.run
            self._restore.append((cls, original))
            cls.run = self._wrap(original)
        return super().__enter__()

    def __exit__(self, *exc):
        for cls, original in self._restore:
            cls.run = original
        self._restore.clear()
        return super().__exit__(*exc)

    def _wrap(self, original):
        counter = self

        def run(kernel, *args, **kwargs):
            if not kwargs.get("warmup", False):
                counter.triton += 1
            counter._inside_triton += 1
            try:
                return original(kernel, *args, **kwargs)
            finally:
                counter._inside_triton -= 1

        return run


def _triton_function_classes() -> list[type]:
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:  # no Triton: only torch ops to count
        return []
    return [JITFunction, InterpretedFunction]


def count_launches(function, *args, **kwargs) -> LaunchCounter:
    with LaunchCounter() as counter, torch.no_grad():
        function(*args, **kwargs)
    return counter
