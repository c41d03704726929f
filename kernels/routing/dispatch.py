"""Which fused implementation runs a layer call's decision: two Triton launches on CUDA, one C++ call on
CPU. Both reproduce the torch reference exactly: every comparison is made on integers or on floats
produced by single IEEE operations (docs/policies.md, "Routed mass")."""

from __future__ import annotations

import functools

from .rules import MAX_FUSED_EXPERTS, MAX_TOP_K, LynxRule, RoutingCall, RoutingResult, max_lynx_rows

IMPLEMENTATIONS = ("triton", "cpu")


def fused_supports(call: RoutingCall) -> bool:
    """Whether the fused implementations cover this call (static: rule and shapes only)."""
    if isinstance(call.rule, LynxRule) and call.logits.shape[0] > max_lynx_rows(call.rule.beta):
        return False  # beyond the int64 vote, the reference switches to float64 sums
    # k <= E: launch 2 counts the voters as their votes over k (each votes for k distinct experts).
    return (call.logits.shape[0] >= 1 and call.num_experts <= MAX_FUSED_EXPERTS
            and call.top_k <= min(MAX_TOP_K, call.num_experts))


def fused_available(implementation: str) -> bool:
    """Whether "triton" (Triton imports, with CUDA or its interpreter) or "cpu" (the C++ op built and
    loaded) can run here; checked once per process."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return _triton_available() if implementation == "triton" else _cpu_op_available()


@functools.cache
def _triton_available() -> bool:
    try:
        from . import triton_plan  # noqa: F401
    except Exception:  # noqa: BLE001 - no usable Triton: the torch reference runs instead
        return False
    return True


@functools.cache
def _cpu_op_available() -> bool:
    from .cpu import load_route_op

    return load_route_op() is not None


def fused_route(call: RoutingCall, implementation: str = "auto") -> RoutingResult:
    """The decision on the device of the logits: "triton" (CUDA, or CPU tensors under
    TRITON_INTERPRET=1), "cpu" (the C++ op), or "auto" (triton on CUDA, cpu otherwise)."""
    if implementation == "auto":
        implementation = "triton" if call.logits.is_cuda else "cpu"
    if implementation == "triton":
        from .triton_plan import route_triton

        return route_triton(call)
    if implementation == "cpu":
        from .cpu import route_cpu

        return route_cpu(call)
    raise ValueError(f"implementation must be 'auto', 'triton' or 'cpu', got {implementation!r}")
