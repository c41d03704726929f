"""Triton kernels of the active-expert fused MoE (the CUDA path; also runs under TRITON_INTERPRET=1).

Three launches, all over static grids:

1. ``_gate_up_activation_kernel``: grid (max_blocks, cdiv(I, BLOCK_N)). A program takes one block of up
   to BLOCK_M pairs of one expert and one BLOCK_N slice of the intermediate dimension, streams the gate
   AND up weight tiles of that slice along H, and writes ``act(gate) * up`` for its pairs into the
   intermediate buffer [T*k, I]. SiLU/GELU-and-multiply is fused: the [T*k, 2I] buffer and the separate
   activation kernel of the stock algorithm are gone.
2. ``_down_weighted_kernel``: grid (max_blocks, cdiv(H, BLOCK_N)). Same blocks; multiplies the
   intermediate rows by the expert's w2 slice and scales by the routing weight in the epilogue, writing
   one row per pair into [T*k, H].
3. ``_combine_topk_kernel``: grid (T, cdiv(H, BLOCK_H)). Sums the k slots of each token in fp32, skipping
   the pairs that were not computed (inactive or negative ids) and writes every element of ``out``. A
   separate deterministic reduce rather than atomics: no zero-fill of the output, no order-dependent
   rounding, and the extra traffic (T*k*H elements) is tiny next to the expert weights in decode.

Decode tuning: a decode block has few rows, so the cost is streaming weights. Both GEMMs are split along
N (intermediate columns, then hidden columns) so that (real blocks) x (N tiles) programs cover every SM;
:func:`choose_config` picks BLOCK_N from the expected number of blocks. Programs of a block past the
real count read one int32 (``block_expert == -1``) and return before touching any weight.

Graph safety: no ``.item()``, no host sync, and every buffer is sized from shapes only; see
docs/kernels.md.

Interpreter: bf16 ``tl.dot`` is wrong in Triton's CPU interpreter, so ``UPCAST_DOT`` (constexpr, set only
when interpreting bf16) converts both operands to fp32 before the dot. On a GPU it is False and the dot
stays native bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .align import ActiveAlignment, align_active_experts, max_blocks_bound
from .triton_shared import INTERPRETING

ACTIVATION_CODES = {"silu": 0, "gelu": 1}


@triton.jit
def _apply_activation(gate, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:  # SiLU
        return gate * tl.sigmoid(gate)
    else:  # exact GELU, the erf form
        return 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))


@triton.jit
def _gate_up_activation_kernel(
    hidden_ptr,
    w13_ptr,
    intermediate_ptr,
    sorted_pair_ids_ptr,
    block_expert_ptr,
    num_pairs,
    hidden_size,
    intermediate_size,
    stride_hidden_t,
    stride_hidden_h,
    stride_w13_e,
    stride_w13_n,
    stride_w13_k,
    stride_inter_p,
    stride_inter_n,
    TOP_K: tl.constexpr,
    ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    block = tl.program_id(0)
    n_tile = tl.program_id(1)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:
        return  # beyond the real blocks of this batch: exit before loading any weight

    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_pair_ids_ptr + offs_m)
    row_ok = pair < num_pairs  # padding rows carry the sentinel num_pairs
    pair = pair.to(tl.int64)  # row offsets in int64: T*k*I can pass 2**31 at prefill sizes
    token = (pair // TOP_K).to(tl.int64)
    offs_n = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < intermediate_size
    offs_k = tl.arange(0, BLOCK_K)

    x_ptrs = hidden_ptr + token[:, None] * stride_hidden_t + offs_k[None, :] * stride_hidden_h
    # Weight tiles are read as [BLOCK_K, BLOCK_N] (w13[e] is [2I, H], row n = output column n).
    expert_w13 = w13_ptr + expert.to(tl.int64) * stride_w13_e
    gate_ptrs = expert_w13 + offs_n[None, :] * stride_w13_n + offs_k[:, None] * stride_w13_k
    up_ptrs = gate_ptrs + intermediate_size * stride_w13_n

    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, hidden_size, BLOCK_K):
        k_ok = offs_k < hidden_size - k_start
        x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_gate = tl.load(gate_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        w_up = tl.load(up_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST_DOT:
            x = x.to(tl.float32)
            w_gate = w_gate.to(tl.float32)
            w_up = w_up.to(tl.float32)
        acc_gate = tl.dot(x, w_gate, acc_gate)
        acc_up = tl.dot(x, w_up, acc_up)
        x_ptrs += BLOCK_K * stride_hidden_h
        gate_ptrs += BLOCK_K * stride_w13_k
        up_ptrs += BLOCK_K * stride_w13_k

    activated = _apply_activation(acc_gate, ACTIVATION) * acc_up
    out_ptrs = intermediate_ptr + pair[:, None] * stride_inter_p + offs_n[None, :] * stride_inter_n
    tl.store(out_ptrs, activated.to(intermediate_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_weighted_kernel(
    intermediate_ptr,
    w2_ptr,
    pair_out_ptr,
    topk_weights_ptr,
    sorted_pair_ids_ptr,
    block_expert_ptr,
    num_pairs,
    hidden_size,
    intermediate_size,
    stride_inter_p,
    stride_inter_k,
    stride_w2_e,
    stride_w2_n,
    stride_w2_k,
    stride_pair_out_p,
    stride_pair_out_n,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    block = tl.program_id(0)
    n_tile = tl.program_id(1)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:
        return

    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_pair_ids_ptr + offs_m)
    row_ok = pair < num_pairs
    pair = pair.to(tl.int64)
    offs_n = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < hidden_size
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = intermediate_ptr + pair[:, None] * stride_inter_p + offs_k[None, :] * stride_inter_k
    expert_w2 = w2_ptr + expert.to(tl.int64) * stride_w2_e
    w_ptrs = expert_w2 + offs_n[None, :] * stride_w2_n + offs_k[:, None] * stride_w2_k

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, intermediate_size, BLOCK_K):
        k_ok = offs_k < intermediate_size - k_start
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST_DOT:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K * stride_inter_k
        w_ptrs += BLOCK_K * stride_w2_k

    # Fused routed-weight multiply: each row is one (token, slot) pair.
    routing_weight = tl.load(topk_weights_ptr + pair, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * routing_weight[:, None]
    out_ptrs = pair_out_ptr + pair[:, None] * stride_pair_out_p + offs_n[None, :] * stride_pair_out_n
    tl.store(out_ptrs, acc.to(pair_out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _combine_topk_kernel(
    pair_out_ptr,
    pair_is_computed_ptr,
    out_ptr,
    hidden_size,
    stride_pair_out_p,
    stride_out_t,
    TOP_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0)
    h_tile = tl.program_id(1)
    offs_h = h_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs_h < hidden_size
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for slot in tl.static_range(TOP_K):
        pair = token.to(tl.int64) * TOP_K + slot
        computed = tl.load(pair_is_computed_ptr + pair).to(tl.int32)
        # A pair that was not computed has garbage in pair_out: masked out, contributes 0. The flag is
        # broadcast to a vector explicitly (scalar-bool & vector masks trip the interpreter).
        row_mask = h_ok & ((offs_h * 0 + computed) != 0)
        row = tl.load(pair_out_ptr + pair * stride_pair_out_p + offs_h, mask=row_mask, other=0.0)
        acc += row.to(tl.float32)
    tl.store(out_ptr + token.to(tl.int64) * stride_out_t + offs_h, acc.to(out_ptr.dtype.element_ty), mask=h_ok)


@dataclass(frozen=True)
class MoeKernelConfig:
    """Tile sizes of the three launches. Every value is >= 16 so the configs compile on Hopper."""

    block_m: int = 16
    gate_up_block_n: int = 64
    gate_up_block_k: int = 64
    down_block_n: int = 64
    down_block_k: int = 64
    combine_block_h: int = 256
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "gate_up_block_n", "gate_up_block_k", "down_block_n", "down_block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot on Hopper), got {value}")


# Shared memory the tile choice may use per program: below Hopper's 227 KiB per block, with room for
# the compiler's own scratch.
SHARED_MEMORY_BUDGET = 192 * 1024


def _pow2_floor(value: int) -> int:
    return 1 << (max(int(value), 1).bit_length() - 1)


def choose_config(
    num_tokens: int,
    top_k: int,
    num_experts: int,
    hidden_size: int,
    intermediate_size: int,
    max_active_experts: int | None = None,
    num_sms: int = 132,
    element_size: int = 2,
) -> MoeKernelConfig:
    """Decode-oriented heuristic (shapes only, so it is the same at capture and replay).

    BLOCK_M follows the expected pairs per non-empty expert; BLOCK_N is the largest power of two that
    still gives ~2 programs per SM for the expected number of blocks, so every SM streams weights.
    The GPU table that would tune these is pending (no GPU run has been made yet).
    """
    num_pairs = max(num_tokens * top_k, 1)
    nonempty = min(num_pairs, num_experts, max_active_experts or num_experts)
    pairs_per_expert = num_pairs / max(nonempty, 1)
    block_m = 16 if pairs_per_expert <= 16 else (32 if pairs_per_expert <= 32 else 64)
    expected_blocks = max(nonempty, (num_pairs + block_m - 1) // block_m)
    wanted_programs = 2 * num_sms

    def block_n_for(n: int) -> int:
        tiles_wanted = max(1, -(-wanted_programs // expected_blocks))
        return max(16, min(128, _pow2_floor(max(n // tiles_wanted, 16))))

    gate_up_block_n = block_n_for(intermediate_size)
    down_block_n = block_n_for(hidden_size)
    gate_up_block_k = 128 if hidden_size >= 128 else 64 if hidden_size >= 64 else 32 if hidden_size >= 32 else 16
    down_block_k = 128 if intermediate_size >= 128 else 64 if intermediate_size >= 64 else 32 if intermediate_size >= 32 else 16
    num_stages = MoeKernelConfig.num_stages
    # Software pipelining keeps (num_stages - 1) copies of each loop's tiles in shared memory; fp32 tiles
    # of 128x128 overflow Hopper's 227 KiB (measured by `python -m lynx_sglang.kernels.hopper_compile`).
    def pipelined_bytes(block_k: int, block_n: int, weight_tiles: int) -> int:
        return (num_stages - 1) * (block_m * block_k + weight_tiles * block_k * block_n) * element_size

    while gate_up_block_k > 16 and pipelined_bytes(gate_up_block_k, gate_up_block_n, 2) > SHARED_MEMORY_BUDGET:
        gate_up_block_k //= 2
    while down_block_k > 16 and pipelined_bytes(down_block_k, down_block_n, 1) > SHARED_MEMORY_BUDGET:
        down_block_k //= 2
    return MoeKernelConfig(
        block_m=block_m,
        gate_up_block_n=gate_up_block_n,
        gate_up_block_k=gate_up_block_k,
        down_block_n=down_block_n,
        down_block_k=down_block_k,
    )


def fused_moe_active_triton(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    active_mask: torch.Tensor | None = None,
    activation: str = "silu",
    *,
    max_active_experts: int | None = None,
    out: torch.Tensor | None = None,
    config: MoeKernelConfig | None = None,
    alignment: ActiveAlignment | None = None,
) -> torch.Tensor:
    """Active-expert fused MoE on Triton. Graph safe: see docs/kernels.md.

    ``alignment`` may be passed to reuse one alignment across layers that share routing (rare) or in
    benchmarks; it must have been built with the same block_m as ``config``.
    """
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {tuple(ACTIVATION_CODES)}, got {activation!r}")
    if not hidden.is_cuda and not INTERPRETING:
        raise RuntimeError(
            "fused_moe_active_triton got CPU tensors but Triton's interpreter is off: set TRITON_INTERPRET=1 "
            "before importing lynx_sglang.kernels.triton_moe, or use the CPU path (fused_moe_active)."
        )
    num_tokens, hidden_size = hidden.shape
    num_experts, two_i, w13_hidden = w13.shape
    intermediate_size = two_i // 2
    top_k = topk_ids.shape[1]
    if w13_hidden != hidden_size or w2.shape != (num_experts, hidden_size, intermediate_size):
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
    if topk_weights.shape != topk_ids.shape or topk_ids.shape[0] != num_tokens:
        raise ValueError(f"topk_ids {tuple(topk_ids.shape)} and topk_weights {tuple(topk_weights.shape)} must be [T, k]")
    if config is None:
        config = choose_config(
            num_tokens, top_k, num_experts, hidden_size, intermediate_size, max_active_experts,
            element_size=hidden.element_size(),
        )  # fmt: skip
    if alignment is None:
        alignment = align_active_experts(
            topk_ids, num_experts, config.block_m, active_mask, max_active_experts
        )
    elif alignment.block_m != config.block_m:
        raise ValueError(f"alignment.block_m {alignment.block_m} != config.block_m {config.block_m}")

    num_pairs = num_tokens * top_k
    if out is None:
        out = torch.empty(num_tokens, hidden_size, dtype=hidden.dtype, device=hidden.device)
    elif out.shape != (num_tokens, hidden_size) or out.stride(1) != 1:
        raise ValueError(f"out must be [T, H] with unit stride along H, got {tuple(out.shape)} {out.stride()}")
    if num_tokens == 0:
        return out
    # Workspaces sized from shapes only (graph safe). Rows of pairs that are not computed stay
    # uninitialised and are never read (the combine masks them).
    intermediate = torch.empty(num_pairs, intermediate_size, dtype=hidden.dtype, device=hidden.device)
    pair_out = torch.empty(num_pairs, hidden_size, dtype=hidden.dtype, device=hidden.device)
    flat_weights = topk_weights.reshape(-1).contiguous()
    upcast = INTERPRETING and hidden.dtype == torch.bfloat16
    launch = {} if INTERPRETING else {"num_warps": config.num_warps, "num_stages": config.num_stages}

    grid = (alignment.max_blocks, triton.cdiv(intermediate_size, config.gate_up_block_n))
    _gate_up_activation_kernel[grid](
        hidden, w13, intermediate, alignment.sorted_pair_ids, alignment.block_expert,
        num_pairs, hidden_size, intermediate_size,
        hidden.stride(0), hidden.stride(1),
        w13.stride(0), w13.stride(1), w13.stride(2),
        intermediate.stride(0), intermediate.stride(1),
        TOP_K=top_k, ACTIVATION=ACTIVATION_CODES[activation],
        BLOCK_M=config.block_m, BLOCK_N=config.gate_up_block_n, BLOCK_K=config.gate_up_block_k,
        UPCAST_DOT=upcast, **launch,
    )  # fmt: skip
    grid = (alignment.max_blocks, triton.cdiv(hidden_size, config.down_block_n))
    _down_weighted_kernel[grid](
        intermediate, w2, pair_out, flat_weights, alignment.sorted_pair_ids, alignment.block_expert,
        num_pairs, hidden_size, intermediate_size,
        intermediate.stride(0), intermediate.stride(1),
        w2.stride(0), w2.stride(1), w2.stride(2),
        pair_out.stride(0), pair_out.stride(1),
        BLOCK_M=config.block_m, BLOCK_N=config.down_block_n, BLOCK_K=config.down_block_k,
        UPCAST_DOT=upcast, **launch,
    )  # fmt: skip
    grid = (num_tokens, triton.cdiv(hidden_size, config.combine_block_h))
    _combine_topk_kernel[grid](
        pair_out, alignment.pair_is_computed, out, hidden_size,
        pair_out.stride(0), out.stride(0),
        TOP_K=top_k, BLOCK_H=config.combine_block_h,
    )  # fmt: skip
    return out


__all__ = [
    "MoeKernelConfig",
    "choose_config",
    "fused_moe_active_triton",
    "max_blocks_bound",
    "INTERPRETING",
]
