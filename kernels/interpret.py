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


def _interpreter_attribute(name: str):
    """`name` of Triton's interpreter module, or None where Triton or that name is missing (the
    patches below then leave the interpreter as it is)."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return None
    return getattr(interpreter, name, None)


class _NothingToRestore:
    def restore(self) -> None:
        pass


def patch_language_once_per_launch() -> bool:
    """Make the interpreter patch `triton.language` once per launch instead of once per device call.

    Triton's interpreter (3.x) swaps the language's builtins for interpreted ones when a launch starts
    and undoes it when the launch ends; but every call of a `@triton.jit` helper inside the kernel
    repeats the swap (an `inspect.getmembers` over the whole language), which finds nothing left to
    swap: with the helpers our kernels call per program, that was 40 % of an interpreted routing
    launch (measured with cProfile on tests/policies/test_policy_routers.py). A helper call now skips
    the swap when the modules it sees are already swapped by the launch in progress; anything else
    (a launch, a helper seeing another module) still takes Triton's own path. Returns whether the
    interpreter was found and changed (idempotent)."""
    patch_lang = _interpreter_attribute("_patch_lang")
    if patch_lang is None:
        return False
    import triton.language as tl
    from triton.runtime import interpreter

    if getattr(patch_lang, "once_per_launch", False):
        return True
    launch_modules: frozenset[int] | None = None  # the modules the launch in progress swapped (one at a time)
    seen: dict = {}  # per function: a module's globals are scanned once, not at every call

    def language_modules(fn) -> frozenset[int]:
        if fn not in seen:
            seen[fn] = frozenset(id(value) for value in fn.__globals__.values() if value is tl or value is tl.core)
        return seen[fn]

    def patch_lang_once(fn):
        nonlocal launch_modules
        modules = language_modules(fn)
        if launch_modules is not None and modules and modules <= launch_modules:
            return _NothingToRestore()  # a helper called by the running kernel: already swapped
        scope = patch_lang(fn)
        if launch_modules is not None:  # a helper seeing a module the kernel does not: Triton never restores that swap
            launch_modules |= modules
            return scope
        launch_modules = modules
        restore = scope.restore

        def restore_and_end_launch() -> None:
            nonlocal launch_modules
            launch_modules = None
            restore()

        scope.restore = restore_and_end_launch
        return scope

    patch_lang_once.once_per_launch = True
    interpreter._patch_lang = patch_lang_once
    return True


# Combine functions of tl.reduce that one numpy ufunc computes: combine function -> ufunc.
_NUMPY_REDUCTIONS: dict = {}


def reduces_like(ufunc):
    """Mark a `@triton.jit` combine function (put above the decorator) as the elementwise `ufunc`,
    e.g. `np.bitwise_or` for `a | b`. Compiled kernels do not change; the interpreter (with
    `reduce_marked_combines_with_numpy`) reduces with `ufunc.reduce` instead of calling the function
    once per element in Python, which was a third of an interpreted Lynx routing launch."""

    def mark(combine_fn):
        _NUMPY_REDUCTIONS[combine_fn] = ufunc
        return combine_fn

    return mark


def reduce_marked_combines_with_numpy() -> bool:
    """Let the interpreter's tl.reduce use the ufunc of a combine function marked by `reduces_like`;
    every other reduction takes Triton's own path. Returns whether the interpreter was changed
    (idempotent)."""
    reduce_ops = _interpreter_attribute("ReduceOps")
    if reduce_ops is None:
        return False
    original = reduce_ops.apply_impl
    if getattr(original, "numpy_for_marked", False):
        return True
    _mark_tritons_own_combines()

    def apply_impl(self, inputs):
        ufunc = _NUMPY_REDUCTIONS.get(self.combine_fn)
        if ufunc is None or len(inputs) != 1:
            return original(self, inputs)
        reduced = ufunc.reduce(inputs[0].handle.data, axis=self.axis, keepdims=self.keep_dims)
        return self.to_tensor(reduced, inputs[0].dtype)

    apply_impl.numpy_for_marked = True
    reduce_ops.apply_impl = apply_impl
    return True


def _mark_tritons_own_combines() -> None:
    """Triton's xor_sum and reduce_or; tl.sort calls xor_sum at every compare-and-swap stage, which made
    the sort of 64 experts the slowest part of an interpreted routing launch."""
    import numpy as np
    from triton.language import standard

    for name, ufunc in (("_xor_combine", np.bitwise_xor), ("_or_combine", np.bitwise_or)):
        if hasattr(standard, name):
            reduces_like(ufunc)(getattr(standard, name))
