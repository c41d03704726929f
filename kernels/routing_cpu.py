"""The fused routing decision on CPU: a small C++ library (routing_cpu.cpp) built on first use with the
system C++ compiler and called through ctypes.

No torch headers, so the build takes about a second and needs only a C++ compiler (`c++`, or $CXX).
The library is cached under $LYNX_SGLANG_CACHE (default ~/.cache/lynx_sglang), keyed by a hash of the
source, flags and compiler. Without a compiler, or if the build fails, `load_cpu_op()` returns None
(logged once) and policies run their torch reference instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from .routing import (
    FP32_BIG,
    AnchorRule,
    BudgetRule,
    CoverageRule,
    GivenRule,
    LynxRule,
    OwnTopRule,
    RoutingCall,
    RoutingResult,
    TopNRule,
)

logger = logging.getLogger("lynx_sglang")

SOURCE = Path(__file__).with_name("routing_cpu.cpp")
# -ffp-contract=off: no fused multiply-add, so every float operation rounds as the reference's.
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]
MODES = {LynxRule: 0, OwnTopRule: 1, BudgetRule: 2, TopNRule: 3, CoverageRule: 4, GivenRule: 5, AnchorRule: 6}


class RouteArgs(ctypes.Structure):
    """Mirror of `struct RouteArgs` in routing_cpu.cpp (same order, same types)."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "logits", "topk_ids", "topk_weights", "given_active", "given_keep", "out_ids", "out_weights", "active_out",
    )] + [(name, ctypes.c_int64) for name in (
        "logits_stride", "ids_stride", "weights_stride", "num_rows", "num_experts", "top_k", "slots", "num_real",
        "fraction_units", "dropped_cap_units", "budget_max_experts", "rule_n",
    )] + [(name, ctypes.c_float) for name in ("alpha", "budget_mass_fraction", "big")] + [
        (name, ctypes.c_int32) for name in (
            "ids_are_int64", "renormalize", "mode", "beta", "tie_by_mass", "floor_k", "keep_mode", "any_drop",
            "has_budget", "anchor_fill_to_k",
        )
    ] + [("anchor_log_ratio", ctypes.c_float), ("anchor_min_share_units", ctypes.c_int64)]  # fmt: skip


def _cache_dir() -> Path:
    return Path(os.environ.get("LYNX_SGLANG_CACHE", Path.home() / ".cache" / "lynx_sglang"))


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def build_cpu_op() -> Path:
    """Compile routing_cpu.cpp (once per source, flags and compiler); return the library's path."""
    version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join(FLAGS), version]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"routing_cpu-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:  # build aside, then rename: atomic
        built = Path(scratch) / target.name
        command = [_compiler(), *FLAGS, str(SOURCE), "-o", str(built)]
        try:
            subprocess.run(command, capture_output=True, text=True, check=True)
        except subprocess.CalledProcessError:
            # A compiler without target_clones (or ifunc support): the plain build, one ISA.
            subprocess.run([*command, "-DLYNX_NO_TARGET_CLONES"], capture_output=True, text=True, check=True)
        os.replace(built, target)
    return target


@functools.cache
def load_cpu_library():
    """The built library (ctypes), or None (with one log line saying why) when it cannot be built here."""
    try:
        return ctypes.CDLL(str(build_cpu_op()))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        logger.warning("lynx-sglang: CPU routing op unavailable (%s); policies use their torch code", detail.strip()[:300])
        return None


def c_function(name: str, args_type: type):
    """The library's `int name(const ArgsType*)`, or None when the library cannot be built here."""
    library = load_cpu_library()
    if library is None:
        return None
    function = getattr(library, name)
    function.argtypes = [ctypes.POINTER(args_type)]
    function.restype = ctypes.c_int
    return function


@functools.cache
def load_cpu_op():
    """The routing decision's C function, or None when the library cannot be built here."""
    return c_function("lynx_route_cpu", RouteArgs)


@functools.lru_cache(maxsize=256)
def _static_fields(kind: type, rule, slots: int, renormalize: bool) -> RouteArgs:
    """The fields fixed per policy (a template copied per call: cheaper than building the struct).
    `kind` is part of the key: rules are tuples, and BudgetRule(8) == TopNRule(8)."""
    args = RouteArgs(mode=MODES[kind], slots=slots, renormalize=int(renormalize), big=FP32_BIG)
    if isinstance(rule, LynxRule):
        args.alpha, args.beta, args.tie_by_mass = rule.alpha, rule.beta, int(rule.tie_by_mass)
    elif isinstance(rule, OwnTopRule):
        args.floor_k = rule.j
    elif isinstance(rule, (BudgetRule, TopNRule)):
        args.rule_n = rule.n
    elif isinstance(rule, AnchorRule):
        args.anchor_log_ratio, args.anchor_min_share_units = rule.log_ratio, rule.min_share_units
        args.anchor_fill_to_k = int(rule.fill_to_k)
    elif isinstance(rule, CoverageRule):
        args.fraction_units = rule.fraction_units
        if rule.dropped_cap_units is not None:
            args.keep_mode, args.dropped_cap_units, args.any_drop = 1, rule.dropped_cap_units, int(rule.keep_on_any_drop)
    return args


def _rows_of(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype` with unit stride along its last dim (no copy when it already is). No torch
    call it does not need: each costs about a microsecond, a third of the op itself at T 1."""
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor if tensor.stride(1) == 1 else tensor.contiguous()


def route_cpu(call: RoutingCall) -> RoutingResult:
    function = load_cpu_op()
    if function is None:
        raise RuntimeError("the CPU routing op could not be built (see the log)")
    num_rows, num_experts = call.logits.shape
    top_k = call.topk_ids.shape[1]
    logits = _rows_of(call.logits, torch.float32)
    ids = _rows_of(call.topk_ids, call.topk_ids.dtype)
    weights = _rows_of(call.topk_weights, torch.float32)
    out_ids = torch.empty(num_rows, top_k, dtype=ids.dtype)
    out_weights = torch.empty(num_rows, top_k, dtype=torch.float32)
    active = torch.empty(num_experts, dtype=torch.bool)

    args = RouteArgs.from_buffer_copy(_static_fields(type(call.rule), call.rule, call.slots, call.renormalize))
    args.logits, args.topk_ids, args.topk_weights = logits.data_ptr(), ids.data_ptr(), weights.data_ptr()
    args.out_ids, args.out_weights, args.active_out = out_ids.data_ptr(), out_weights.data_ptr(), active.data_ptr()
    args.logits_stride, args.ids_stride, args.weights_stride = logits.stride(0), ids.stride(0), weights.stride(0)
    args.num_rows, args.num_experts, args.top_k = num_rows, num_experts, top_k
    args.num_real = num_rows if call.num_real is None else min(max(int(call.num_real), 0), num_rows)
    args.ids_are_int64 = ids.dtype == torch.int64
    if call.given_active is not None:  # kept alive until the call returns
        given_active = call.given_active.to(torch.uint8)
        args.given_active = given_active.data_ptr()
        if call.given_keep is not None:
            given_keep = call.given_keep.to(torch.uint8)
            args.given_keep, args.keep_mode = given_keep.data_ptr(), 2
    if call.budget_max_experts is not None:
        args.has_budget = 1
        args.budget_max_experts = int(call.budget_max_experts)
        args.budget_mass_fraction = float(call.budget_mass_fraction)
    if function(ctypes.byref(args)) != 0:
        raise ValueError(f"CPU routing op rejected the call (top_k {top_k}, E {num_experts})")
    if out_weights.dtype != call.topk_weights.dtype:
        out_weights = out_weights.to(call.topk_weights.dtype)
    return RoutingResult(out_ids, out_weights, active)
