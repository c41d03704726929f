"""The fused routing decision on CPU: one call into a small C++ library (cpu.cpp), built on first use
(kernels/cpu_library.py). Without a compiler the op is unavailable and policies run their torch
reference instead."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from ..cpu_library import c_struct, header, load_function
from .rules import (
    FP32_BIG,
    KEEP_MODES,
    MASS_BITS,
    MAX_TOP_K,
    MODES,
    RATIO_BITS,
    AnchorRule,
    BudgetRule,
    CoverageRule,
    LynxRule,
    OwnTopRule,
    RoutingCall,
    RoutingResult,
    TopNRule,
    mode_of,
)

SOURCE = Path(__file__).with_name("cpu.cpp")

RouteArgs = c_struct("RouteArgs", """
    const float* logits; const void* topk_ids; const float* topk_weights;
    const uint8_t* given_active; const uint8_t* given_keep;
    void* out_ids; float* out_weights; uint8_t* active_out;
    int64_t logits_stride, ids_stride, weights_stride, num_rows, num_experts, top_k, slots, num_real;
    int64_t fraction_units, dropped_cap_units, budget_max_experts, rule_n;
    float alpha, budget_mass_fraction, big;
    int32_t ids_are_int64, renormalize, mode, beta, tie_by_mass, floor_k, keep_mode, any_drop, has_budget;
    int32_t anchor_fill_to_k;
    float anchor_log_ratio;
    int64_t anchor_min_share_units;
""")


def generated_header() -> str:
    """The header cpu.cpp includes: the rule codes, the fixed point and RouteArgs, from their Python
    definitions."""
    constants = {f"LYNX_MODE_{name}": code for name, code in MODES.items()}
    constants |= {f"LYNX_KEEP_{name}": code for name, code in KEEP_MODES.items()}
    constants |= {"LYNX_MASS_BITS": MASS_BITS, "LYNX_RATIO_BITS": RATIO_BITS, "LYNX_MAX_TOP_K": MAX_TOP_K}
    return header(constants, RouteArgs)


def load_route_op():
    """The decision's C function, or None when the library cannot be built here."""
    return load_function(SOURCE, generated_header(), "lynx_route_cpu", RouteArgs)


@functools.lru_cache(maxsize=256)
def _static_fields(kind: type, rule, slots: int, renormalize: bool) -> RouteArgs:
    """The fields fixed per policy (a template copied per call: cheaper than building the struct).
    `kind` is part of the key: rules are tuples, and BudgetRule(8) == TopNRule(8)."""
    args = RouteArgs(mode=mode_of(rule), keep_mode=KEEP_MODES["NONE"], slots=slots, renormalize=int(renormalize),
                     big=FP32_BIG)
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
            args.keep_mode = KEEP_MODES["DROPPED_CAP"]
            args.dropped_cap_units, args.any_drop = rule.dropped_cap_units, int(rule.keep_on_any_drop)
    return args


def rows_of(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype` with unit stride along its last dim (no copy when it already is). No torch
    call it does not need: each costs about a microsecond, a third of the op itself at T 1."""
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor if tensor.stride(1) == 1 else tensor.contiguous()


def route_cpu(call: RoutingCall) -> RoutingResult:
    function = load_route_op()
    if function is None:
        raise RuntimeError("the CPU routing op could not be built (see the log)")
    num_rows, num_experts = call.logits.shape
    top_k = call.topk_ids.shape[1]
    logits = rows_of(call.logits, torch.float32)
    ids = rows_of(call.topk_ids, call.topk_ids.dtype)
    weights = rows_of(call.topk_weights, torch.float32)
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
            args.given_keep, args.keep_mode = given_keep.data_ptr(), KEEP_MODES["GIVEN"]
    if call.budget_max_experts is not None:
        args.has_budget = 1
        args.budget_max_experts = int(call.budget_max_experts)
        args.budget_mass_fraction = float(call.budget_mass_fraction)
    if function(ctypes.byref(args)) != 0:
        raise ValueError(f"CPU routing op rejected the call (top_k {top_k}, E {num_experts})")
    if out_weights.dtype != call.topk_weights.dtype:
        out_weights = out_weights.to(call.topk_weights.dtype)
    return RoutingResult(out_ids, out_weights, active)
