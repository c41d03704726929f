"""What both launches of the fused routing agree on: the rule codes as constexprs, the fixed point, the
row state launch 1 leaves for launch 2, the tally fields, and the per-row helpers both call."""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_shared import INTERPRETING
from .rules import FP32_BIG, KEEP_MODES, MASS_BITS, MODES, RATIO_BITS

# The rule codes (rules.MODES, rules.KEEP_MODES) as the kernels compare them.
MODE_LYNX, MODE_OWN_TOP, MODE_BUDGET, MODE_TOPN, MODE_COVERAGE = (
    tl.constexpr(MODES[name]) for name in ("LYNX", "OWN_TOP", "BUDGET", "TOPN", "COVERAGE"))
KEEP_NONE, KEEP_DROPPED_CAP = tl.constexpr(KEEP_MODES["NONE"]), tl.constexpr(KEEP_MODES["DROPPED_CAP"])

TAKEN = tl.constexpr(-2147483648)  # below every int32 key: a column already taken or not there
BIG = tl.constexpr(FP32_BIG)
MASS_SHIFT = tl.constexpr(MASS_BITS)
MASS_ONE = tl.constexpr(1 << MASS_BITS)
RATIO_SCALE = tl.constexpr(float(1 << RATIO_BITS))
# The interpreter cannot call libdevice (extern functions): it counts bits with shifts and masks instead.
HARDWARE_POPCOUNT = tl.constexpr(not INTERPRETING)
# Launch 1's one int32 per row for launch 2: bit 0 voter, bit 1 all logits finite; for lynx also the
# bin-b* experts the row still needs (at most k <= 64) and -b* (at most beta <= 8). One store per row
# where three cost three layout conversions of a per-row vector (each through shared memory).
STATE_VOTER, STATE_FINITE = tl.constexpr(1), tl.constexpr(2)
NEED_SHIFT, NEED_MASK, THRESHOLD_SHIFT = tl.constexpr(2), tl.constexpr(127), tl.constexpr(9)
# Launch 1's per-expert counts, each at most T, packed into int32 words (triton_plan.tally_layout): the
# votes (own top-k), the experts some row takes for sure, then lynx's voters per bin (-beta first).
# Launch 2 then loads a few words per expert and program instead of one int32 per count.
TALLY_VOTES, TALLY_SURE, TALLY_BINS = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
# Rows of each launch-2 program's scratch ([SCRATCH_ROWS, BLOCK_E] int64): vectors that other threads gather.
SCRATCH_ROWS = 8
ROW_KEY, ROW_TIE, ROW_VALUE, ROW_ORDER, ROW_PICKED, ROW_TOPPED, ROW_ACTIVE, ROW_SORT = (
    tl.constexpr(i) for i in range(SCRATCH_ROWS))


@triton.jit
def clean_logits(logits_ptr, stride_row, rows, cols, row_ok, col_ok):
    """[BT, BE] fp32 logits with NaN/-inf -> -BIG and +inf -> +BIG, and [BT] "all finite"."""
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_row + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    nan = x != x
    pos_inf = x == float("inf")
    neg_inf = x == float("-inf")
    finite = tl.sum(((nan | pos_inf | neg_inf) & mask).to(tl.int32), axis=1) == 0
    x = tl.where(nan | neg_inf, -BIG, x)
    return tl.where(pos_inf, BIG, x), finite


@triton.jit
def row_voter(state):
    return (state & STATE_VOTER) != 0


@triton.jit
def row_need(state):
    return (state >> NEED_SHIFT) & NEED_MASK


@triton.jit
def row_threshold(state):
    return -(state >> THRESHOLD_SHIFT)


@triton.jit
def order_key(x):
    """int32 keys in the order of fp32 x (no NaN); -0.0 and +0.0 equal (as keys.float32_order_key)."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def key_value(key):
    """The fp32 value of an order key (inverse of order_key; -0.0 comes back as +0.0, which no later
    step tells apart): a row's best value without a reduction over the row."""
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
    return bits.to(tl.float32, bitcast=True)
