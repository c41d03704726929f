"""The fused routing decision on CUDA: two Triton launches per layer call, static grids, no host sync.

Launch 1 (triton_rows) takes each row's own top-k and leaves per-program partial sums; launch 2
(triton_remap, deciding with triton_decide) adds them, makes the batch decision in every program and
remaps its own rows. This module sizes the buffers and launches both.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import triton

from ..triton_shared import INTERPRETING, block_sizes, next_pow2, num_real_arguments, warps_option
from .launch_config import LaunchConfig, bits_rows, cap_sorts, default_launch_config, rule_sorts, top_up_sorts
from .rules import (
    KEEP_MODES,
    MASS_BITS,
    MODES,
    BudgetRule,
    CoverageRule,
    GivenRule,
    LynxRule,
    OwnTopRule,
    RoutingCall,
    RoutingResult,
    TopNRule,
    mode_of,
)
from .triton_common import SCRATCH_ROWS, TALLY_BINS
from .triton_remap import routing_decide_kernel
from .triton_rows import routing_rows_kernel

# Set only by lynx_sglang.tools.compile_only, where launches compile for a GPU and never run.
ALLOW_CPU_TENSORS = False


def rule_arguments(rule, given_keep: bool = False) -> dict:
    """Kernel mode and parameters of a rule (python values: static per policy)."""
    if mode_of(rule) == MODES["ANCHOR"]:
        raise TypeError(f"no fused kernel for rule {rule!r} on Triton (anchor decides in torch on CUDA)")
    base = {"MODE": mode_of(rule), "BETA": 0, "FLOOR_K": 0, "TIE_BY_MASS": False, "alpha": 0.0, "rule_n": 0,
            "fraction_units": 0, "dropped_cap_units": 0, "KEEP_MODE": KEEP_MODES["NONE"], "ANY_DROP": False}
    if isinstance(rule, LynxRule):
        base.update(BETA=rule.beta, TIE_BY_MASS=rule.tie_by_mass, alpha=float(rule.alpha))
    elif isinstance(rule, OwnTopRule):
        base.update(FLOOR_K=rule.j)
    elif isinstance(rule, CoverageRule):
        base.update(fraction_units=rule.fraction_units)
        if rule.dropped_cap_units is not None:
            base.update(KEEP_MODE=KEEP_MODES["DROPPED_CAP"], dropped_cap_units=rule.dropped_cap_units,
                        ANY_DROP=rule.keep_on_any_drop)
    elif isinstance(rule, (BudgetRule, TopNRule)):
        base.update(rule_n=rule.n)
    if given_keep:
        base.update(KEEP_MODE=KEEP_MODES["GIVEN"])
    return base


class TallyLayout(NamedTuple):
    bits: int  # per field: every tally is at most T
    per_word: int  # fields per int32 word
    words: int
    words_pow2: int  # the words' axis of launch 1's stacked sum over rows


def tally_layout(num_rows: int, bins: int) -> TallyLayout:
    """How launch 1 packs its per-expert counts (votes, sure takes, then `bins` per-bin voter counts)
    into int32 words; the sums over programs stay exact, since no field's total exceeds T."""
    bits = max(1, num_rows.bit_length())
    per_word = max(1, 31 // bits)
    words = -(-(TALLY_BINS.value + bins) // per_word)
    return TallyLayout(bits, per_word, words, next_pow2(words))


def mass_partial_dtype(num_rows: int) -> torch.dtype:
    """Launch 1's per-expert routed mass (at most T << MASS_BITS in total) as int32 where it fits: launch 2
    adds every program's partials, and int32 adds are half the instructions of int64 ones."""
    return torch.int32 if num_rows << MASS_BITS < 2**31 else torch.int64


def bit_words(block_e: int) -> int:
    """int64 words of a row's expert bit mask (lynx's picks = 2)."""
    return max(1, block_e // 64)


def reads_own_weights(args: dict) -> bool:
    """Whether launch 2 reads the rows' own weights (coverage's dropped-weight cap), so launch 1 stores them."""
    return args["KEEP_MODE"] == KEEP_MODES["DROPPED_CAP"] and not args["ANY_DROP"]


class TritonPlan(NamedTuple):
    """A call's two launches, ready to run (buffers allocated): `rows()` then `decide()` fill `result`.
    Apart for the benchmark's per-launch times: decide() alone may be replayed, its inputs stay put."""

    result: RoutingResult
    rows: Callable[[], None]
    decide: Callable[[], None]


def route_triton(call: RoutingCall) -> RoutingResult:
    """Two launches; allocations only (torch.empty launches nothing)."""
    plan = plan_triton(call)
    plan.rows()
    plan.decide()
    return plan.result


class LaunchConstants(NamedTuple):
    """The constexprs of the two launches for one call (what Triton compiles a specialisation for), and
    the rule's scalar parameters."""

    rows: dict
    decide: dict
    rule: dict


def launch_constants(call: RoutingCall, config: LaunchConfig) -> LaunchConstants:
    """Shapes, rule and configuration as the kernels' constexprs (tools compile from these too)."""
    num_rows, num_experts = call.logits.shape
    top_k = call.topk_ids.shape[1]
    args = rule_arguments(call.rule, isinstance(call.rule, GivenRule) and call.given_keep is not None)
    block_e, block_k = block_sizes(num_experts, top_k)
    tally = tally_layout(num_rows, args["BETA"] + 1 if args["MODE"] == MODES["LYNX"] else 0)
    programs = triton.cdiv(num_rows, config.block_t)
    both = dict(MODE=args["MODE"], TOP_K=top_k, BETA=args["BETA"], BLOCK_T=config.block_t, BLOCK_E=block_e,
                BLOCK_K=block_k, PICKS=config.picks, WORDS=bit_words(block_e),
                NUM_REAL_MODE=num_real_arguments(call.num_real, call.logits.device, None)[0],
                TALLY_BITS=tally.bits, TALLIES_PER_WORD=tally.per_word, TALLY_WORDS=tally.words)  # fmt: skip
    rows = dict(both, FLOOR_K=args["FLOOR_K"], STORE_WEIGHTS=reads_own_weights(args), TALLY_WORDS_P2=tally.words_pow2)
    decide = dict(
        both, SLOTS=call.slots, TIE_BY_MASS=args["TIE_BY_MASS"], KEEP_MODE=args["KEEP_MODE"], ANY_DROP=args["ANY_DROP"],
        HAS_BUDGET=call.budget_max_experts is not None, RENORMALIZE=call.renormalize, CHUNK=config.chunk,
        SCAN_T=config.scan_t, PARTS=config.parts, ONE_LOAD=programs <= config.parts,
        BITS_T=bits_rows(num_rows, config.decide_warps), SORT_RULE=rule_sorts(call.rule, num_rows, block_e, config),
        SORT_TOP_UP=top_up_sorts(num_rows, block_e, config), SORT_CAP=cap_sorts(num_rows, block_e, config),
        LOG_E=block_e.bit_length() - 1,
    )  # fmt: skip
    return LaunchConstants(rows, decide, args)


def plan_triton(call: RoutingCall, config: LaunchConfig | None = None) -> TritonPlan:
    """The call's launches with `config` (default: `default_launch_config` of the shapes and device)."""
    if call.logits.stride(1) != 1:
        call = call._replace(logits=call.logits.contiguous())
    # The outputs are written with the inputs' row strides: a column slice (routed columns beside fused
    # shared-expert slots) must be copied, else empty_like's dense outputs are overrun.
    if not (call.topk_ids.is_contiguous() and call.topk_weights.is_contiguous()):
        call = call._replace(topk_ids=call.topk_ids.contiguous(), topk_weights=call.topk_weights.contiguous())
    logits = call.logits
    if not logits.is_cuda and not INTERPRETING and not ALLOW_CPU_TENSORS:
        raise RuntimeError("route_triton got CPU tensors but Triton's interpreter is off (TRITON_INTERPRET=1)")
    num_rows, num_experts = logits.shape
    if config is None:
        config = default_launch_config(num_rows, num_experts, call.topk_ids.shape[1], logits.device)
    constants = launch_constants(call, config)
    args = constants.rule
    buffers = _buffers(call, config, constants)
    _, num_real_ptr, num_real_value = num_real_arguments(call.num_real, logits.device, buffers.unused)
    programs = buffers.part_mass.shape[0]

    def launch_rows():
        routing_rows_kernel[(programs,)](
            logits, call.topk_ids, num_real_ptr, buffers.own_ids, buffers.own_values, buffers.own_weights,
            buffers.row_state, buffers.bins, buffers.bin_masks, buffers.part_tallies, buffers.part_mass,
            logits.stride(0), call.topk_ids.stride(0), num_real_value, num_rows, num_experts, args["alpha"],
            **constants.rows, **warps_option(config.rows_warps),
        )  # fmt: skip

    def launch_decide():
        routing_decide_kernel[(programs,)](
            logits, call.topk_ids, call.topk_weights, num_real_ptr, buffers.own_ids, buffers.own_values,
            buffers.own_weights, buffers.row_state, buffers.bins, buffers.bin_masks, buffers.part_tallies,
            buffers.part_mass, *_budget_and_given(call, buffers), buffers.scratch, buffers.out_ids,
            buffers.out_weights, buffers.active.view(torch.uint8),
            logits.stride(0), call.topk_ids.stride(0), call.topk_weights.stride(0), num_real_value, num_rows,
            num_experts, programs, args["rule_n"], args["fraction_units"], args["dropped_cap_units"],
            **constants.decide, **warps_option(config.decide_warps),
        )  # fmt: skip

    result = RoutingResult(buffers.out_ids, buffers.out_weights, buffers.active)
    return TritonPlan(result, launch_rows, launch_decide)


class _Buffers(NamedTuple):
    own_ids: torch.Tensor
    own_values: torch.Tensor
    own_weights: torch.Tensor
    row_state: torch.Tensor
    bins: torch.Tensor
    bin_masks: torch.Tensor
    part_tallies: torch.Tensor
    part_mass: torch.Tensor
    scratch: torch.Tensor
    out_ids: torch.Tensor
    out_weights: torch.Tensor
    active: torch.Tensor
    unused: torch.Tensor  # for the pointers a call does not read


def _buffers(call: RoutingCall, config: LaunchConfig, constants: LaunchConstants) -> _Buffers:
    """Every buffer of the two launches, sized from shapes only (graph safe; torch.empty launches nothing)."""
    num_rows, num_experts = call.logits.shape
    block_e, block_k, words = constants.rows["BLOCK_E"], constants.rows["BLOCK_K"], constants.rows["WORDS"]
    lynx = constants.rows["MODE"] == MODES["LYNX"]
    device = call.logits.device
    programs = triton.cdiv(num_rows, config.block_t)

    def empty(*shape, dtype=torch.int32):
        return torch.empty(*shape, dtype=dtype, device=device)

    unused = empty(1, dtype=torch.int8)
    own_weights = empty(num_rows, block_k, dtype=torch.int64)
    return _Buffers(
        own_ids=empty(num_rows, block_k), own_values=empty(num_rows, block_k, dtype=torch.float32),
        own_weights=own_weights, row_state=empty(num_rows),
        bins=empty(num_rows, num_experts, dtype=torch.int8) if lynx and config.picks != 2 else unused,
        bin_masks=empty(num_rows, words, dtype=torch.int64) if lynx and config.picks == 2 else own_weights,
        part_tallies=empty(programs, constants.rows["TALLY_WORDS"], block_e),
        part_mass=empty(programs, block_e, dtype=mass_partial_dtype(num_rows)),
        scratch=empty(programs, SCRATCH_ROWS, block_e, dtype=torch.int64),
        out_ids=torch.empty_like(call.topk_ids), out_weights=torch.empty_like(call.topk_weights),
        active=torch.empty(num_experts, dtype=torch.bool, device=device), unused=unused,
    )  # fmt: skip


def _budget_and_given(call: RoutingCall, buffers: _Buffers) -> tuple:
    """(budget max, budget fraction, given active, given keep) pointers; where a call has none, placeholders
    of the right dtypes, never read."""
    has_budget = call.budget_max_experts is not None
    return (
        call.budget_max_experts if has_budget else buffers.own_weights,  # int64
        call.budget_mass_fraction if has_budget else buffers.own_values,  # fp32
        call.given_active.view(torch.uint8) if call.given_active is not None else buffers.unused,
        call.given_keep.view(torch.uint8) if call.given_keep is not None else buffers.unused,
    )
