"""A re-implementation of the STOCK fused-MoE algorithm (SGLang / vLLM), for comparison only.

This package never imports SGLang; `lynx-sglang bench kernels` compares against SGLang's real fused MoE
(``sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe.fused_experts``). The stock flow, as there
(adapted from vLLM):

1. ``moe_align_block_size`` over ALL E experts: histogram of topk_ids over E, each expert's count padded
   to BLOCK_SIZE_M, sorted token ids in a buffer of ``T*k + E*(BLOCK_SIZE_M - 1)`` slots (capped at
   ``T*k*BLOCK_SIZE_M`` when T*k < E), one expert id per block, and ``num_tokens_post_padded``.
2. ``fused_moe_kernel`` with w13 -> intermediate_cache1 [T*k, 2I] (grid = all possible blocks x N tiles,
   1-D with GROUP_SIZE_M swizzle; programs past num_tokens_post_padded exit).
3. ``silu_and_mul`` (a separate kernel) -> intermediate_cache2 [T*k, I].
4. ``fused_moe_kernel`` with w2 and MUL_ROUTED_WEIGHT -> intermediate_cache3 [T, k, H].
5. ``moe_sum`` over k -> out [T, H].

Differences from ours (:mod:`.triton_kernels`): alignment and grid over all E experts, not the active list;
a separate activation pass over a [T*k, 2I] buffer; every id in topk_ids is computed (there is no
active mask: a policy must remap ids first, which is what the benchmark does, so both compute the same
experts). The only addition to the stock kernel is the interpreter-only ``UPCAST_DOT`` flag, so the
comparison can also be tested on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..triton_shared import INTERPRETING


def moe_align_block_size_stock(
    topk_ids: torch.Tensor, block_size: int, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stock alignment over all E experts: (sorted_token_ids, expert_ids, num_tokens_post_padded)."""
    num_pairs = topk_ids.numel()
    device = topk_ids.device
    max_num_tokens_padded = num_pairs + num_experts * (block_size - 1)
    if num_pairs < num_experts:
        max_num_tokens_padded = min(num_pairs * block_size, max_num_tokens_padded)
    max_num_blocks = triton.cdiv(max_num_tokens_padded, block_size)

    flat_ids = topk_ids.reshape(-1).long()
    counts = torch.zeros(num_experts, dtype=torch.int32, device=device)
    counts.scatter_add_(0, flat_ids, torch.ones_like(flat_ids, dtype=torch.int32))
    padded_counts = (counts + block_size - 1) // block_size * block_size
    padded_end = torch.cumsum(padded_counts, 0, dtype=torch.int32)
    padded_start = padded_end - padded_counts
    pair_start = torch.cumsum(counts, 0, dtype=torch.int32) - counts
    num_tokens_post_padded = padded_end[-1:].clone()

    sorted_pairs = torch.argsort(flat_ids, stable=True)
    sorted_experts = flat_ids[sorted_pairs]
    rank = torch.arange(num_pairs, device=device, dtype=torch.int32) - pair_start[sorted_experts]
    destination = (padded_start[sorted_experts] + rank).long()
    sorted_token_ids = torch.full((max_num_tokens_padded,), num_pairs, dtype=torch.int32, device=device)
    sorted_token_ids.scatter_(0, destination, sorted_pairs.to(torch.int32))

    block_start = torch.arange(max_num_blocks, device=device, dtype=torch.int32) * block_size
    expert_ids = torch.searchsorted(padded_end, block_start, right=True).clamp(max=num_experts - 1).to(torch.int32)
    return sorted_token_ids, expert_ids, num_tokens_post_padded


@triton.jit
def fused_moe_kernel_stock(
    a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, num_tokens_post_padded_ptr,
    N, K, EM, num_valid_tokens,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr, top_k: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """The stock block kernel (bf16/fp16/fp32 path, no quantisation), as in SGLang/vLLM."""
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(EM, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    num_tokens_post_padded = tl.load(num_tokens_post_padded_ptr)
    if pid_m * BLOCK_SIZE_M >= num_tokens_post_padded:
        return
    offs_token_id = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M).to(tl.int64)
    offs_token = tl.load(sorted_token_ids_ptr + offs_token_id).to(tl.int64)
    token_mask = offs_token < num_valid_tokens
    off_experts = tl.load(expert_ids_ptr + pid_m).to(tl.int64)

    offs_bn = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N).to(tl.int64)) % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + (offs_token[:, None] // top_k * stride_am + offs_k[None, :] * stride_ak)
    b_ptrs = b_ptr + off_experts * stride_be + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)

    accumulator = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        a = tl.load(a_ptrs, mask=token_mask[:, None] & (offs_k[None, :] < K - k * BLOCK_SIZE_K), other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_SIZE_K, other=0.0)
        if UPCAST_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        accumulator += tl.dot(a, b)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk

    if MUL_ROUTED_WEIGHT:
        moe_weight = tl.load(topk_weights_ptr + offs_token, mask=token_mask, other=0)
        accumulator = accumulator * moe_weight[:, None]
    accumulator = accumulator.to(c_ptr.dtype.element_ty)
    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + stride_cm * offs_token[:, None] + stride_cn * offs_cn[None, :]
    c_mask = token_mask[:, None] & (offs_cn[None, :] < N)
    tl.store(c_ptrs, accumulator, mask=c_mask)


def stock_default_config(num_tokens: int, num_experts: int) -> dict[str, int]:
    """vLLM/SGLang's fallback config when no tuned JSON exists for the device and shape."""
    if num_tokens <= num_experts:
        return {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
    return {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}


def _invoke_stock_kernel(a, b, c, topk_weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
                         mul_routed_weight, top_k, config):  # fmt: skip
    num_valid_tokens = c.shape[0]
    em = sorted_token_ids.shape[0]
    if a.shape[0] < config["BLOCK_SIZE_M"]:
        # Stock trick for tiny batches: cap the padded length by what T*k pairs can fill.
        em = min(em, a.shape[0] * top_k * config["BLOCK_SIZE_M"])
    n = b.shape[1]
    grid = (triton.cdiv(em, config["BLOCK_SIZE_M"]) * triton.cdiv(n, config["BLOCK_SIZE_N"]),)
    fused_moe_kernel_stock[grid](
        a, b, c, topk_weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
        n, b.shape[2], em, num_valid_tokens,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
        MUL_ROUTED_WEIGHT=mul_routed_weight, top_k=top_k,
        UPCAST_DOT=INTERPRETING and a.dtype == torch.bfloat16, **config,
    )  # fmt: skip


def fused_moe_stock(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    activation: str = "silu",
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """The stock algorithm end to end. Computes every id in topk_ids (all must be in [0, E))."""
    num_tokens, hidden_size = hidden.shape
    num_experts, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    if config is None:
        config = stock_default_config(num_tokens, num_experts)
    sorted_token_ids, expert_ids, num_tokens_post_padded = moe_align_block_size_stock(
        topk_ids, config["BLOCK_SIZE_M"], num_experts
    )
    cache1 = torch.empty(num_tokens * top_k, two_i, dtype=hidden.dtype, device=hidden.device)
    cache3 = torch.empty(num_tokens * top_k, hidden_size, dtype=hidden.dtype, device=hidden.device)
    flat_weights = topk_weights.reshape(-1).contiguous()
    _invoke_stock_kernel(hidden, w13, cache1, flat_weights, sorted_token_ids, expert_ids,
                         num_tokens_post_padded, False, top_k, config)  # fmt: skip
    gate, up = cache1.split(two_i // 2, dim=1)
    act = F.silu if activation == "silu" else F.gelu
    cache2 = (act(gate.float()) * up.float()).to(hidden.dtype)  # silu_and_mul / gelu_and_mul
    _invoke_stock_kernel(cache2, w2, cache3, flat_weights, sorted_token_ids, expert_ids,
                         num_tokens_post_padded, True, 1, config)  # fmt: skip
    return cache3.view(num_tokens, top_k, hidden_size).sum(dim=1)  # moe_sum
