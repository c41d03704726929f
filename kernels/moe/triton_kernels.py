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
:func:`config.choose_config` picks BLOCK_N from the expected number of blocks. Programs of a block past the
real count read one int32 (``block_expert == -1``) and return before touching any weight.

Graph safety: no ``.item()``, no host sync, and every buffer is sized from shapes only; see
docs/kernels.md.

Interpreter: bf16 ``tl.dot`` is wrong in Triton's CPU interpreter, so ``UPCAST_DOT`` (constexpr, set only
when interpreting bf16) converts both operands to fp32 before the dot. On a GPU it is False and the dot
stays native bf16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_shared import INTERPRETING
from .align import ActiveAlignment, align_active_experts
from .call import ACTIVATIONS, MoeCall
from .config import MoeKernelConfig, choose_config, sm_count

ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
_SILU = tl.constexpr(ACTIVATION_CODES["silu"])


@triton.jit
def _apply_activation(gate, ACTIVATION: tl.constexpr):
    if ACTIVATION == _SILU:
        return gate * tl.sigmoid(gate)
    else:  # exact GELU, the erf form
        return 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))


@triton.jit
def _block_pairs(sorted_pair_ids_ptr, block, num_pairs, BLOCK_M: tl.constexpr):
    """The block's (token, slot) pairs as int64 row offsets (T*k*I can pass 2**31 at prefill sizes), and
    which are real: padding rows carry the sentinel num_pairs."""
    pair = tl.load(sorted_pair_ids_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    return pair.to(tl.int64), pair < num_pairs


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
    pair, row_ok = _block_pairs(sorted_pair_ids_ptr, block, num_pairs, BLOCK_M)
    token = pair // TOP_K
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
    pair, row_ok = _block_pairs(sorted_pair_ids_ptr, block, num_pairs, BLOCK_M)
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


def run_triton(call: MoeCall, *, config: MoeKernelConfig | None = None,
               alignment: ActiveAlignment | None = None) -> torch.Tensor:
    """The three launches. `config` defaults to `choose_config` of the shapes and the device's SMs;
    `alignment` may be passed to reuse one alignment across layers that share routing (rare) or in
    benchmarks, built with the same block_m as `config`. Graph safe: see docs/kernels.md."""
    hidden, w13, w2 = call.hidden, call.w13, call.w2
    if not hidden.is_cuda and not INTERPRETING:
        raise RuntimeError("fused_moe_active got CPU tensors for Triton but its interpreter is off: set "
                           "TRITON_INTERPRET=1 before the first import of the kernels, or use implementation='cpu'")
    (num_tokens, hidden_size), top_k = hidden.shape, call.topk_ids.shape[1]
    intermediate_size = call.intermediate_size
    if config is None:
        config = choose_config(num_tokens, top_k, call.num_experts, hidden_size, intermediate_size,
                               call.max_active_experts, num_sms=sm_count(hidden.device),
                               element_size=hidden.element_size())  # fmt: skip
    if alignment is None:
        alignment = align_active_experts(call.topk_ids, call.num_experts, config.block_m, call.active_mask,
                                         call.max_active_experts)  # fmt: skip
    elif alignment.block_m != config.block_m:
        raise ValueError(f"alignment.block_m {alignment.block_m} != config.block_m {config.block_m}")
    out = call.output()
    if num_tokens == 0:
        return out
    # Workspaces sized from shapes only (graph safe). Rows of pairs that are not computed stay
    # uninitialised and are never read (the combine masks them).
    num_pairs = num_tokens * top_k
    intermediate = torch.empty(num_pairs, intermediate_size, dtype=hidden.dtype, device=hidden.device)
    pair_out = torch.empty(num_pairs, hidden_size, dtype=hidden.dtype, device=hidden.device)
    upcast = INTERPRETING and hidden.dtype == torch.bfloat16
    launch = {} if INTERPRETING else {"num_warps": config.num_warps, "num_stages": config.num_stages}

    grid = (alignment.max_blocks, triton.cdiv(intermediate_size, config.gate_up_block_n))
    _gate_up_activation_kernel[grid](
        hidden, w13, intermediate, alignment.sorted_pair_ids, alignment.block_expert,
        num_pairs, hidden_size, intermediate_size,
        hidden.stride(0), hidden.stride(1),
        w13.stride(0), w13.stride(1), w13.stride(2),
        intermediate.stride(0), intermediate.stride(1),
        TOP_K=top_k, ACTIVATION=ACTIVATION_CODES[call.activation],
        BLOCK_M=config.block_m, BLOCK_N=config.gate_up_block_n, BLOCK_K=config.gate_up_block_k,
        UPCAST_DOT=upcast, **launch,
    )  # fmt: skip
    grid = (alignment.max_blocks, triton.cdiv(hidden_size, config.down_block_n))
    _down_weighted_kernel[grid](
        intermediate, w2, pair_out, call.topk_weights.reshape(-1).contiguous(), alignment.sorted_pair_ids,
        alignment.block_expert, num_pairs, hidden_size, intermediate_size,
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
