"""Tile sizes of the active-expert MoE's Triton launches, chosen from the shapes and the device's SM
count only, so a CUDA graph's capture and replay launch the same grids."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# Shared memory the tile choice may use per program: below Hopper's 227 KiB per block, with room for
# the compiler's own scratch.
SHARED_MEMORY_BUDGET = 192 * 1024
# Tensors off CUDA run under Triton's interpreter: its grid is an H100 SXM's (132 SMs), as on the GPU
# the tests stand in for.
INTERPRETER_SMS = 132


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


@functools.cache
def sm_count(device: torch.device) -> int:
    """The streaming multiprocessors of `device` (read once per device)."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _pow2_floor(value: int) -> int:
    return 1 << (max(int(value), 1).bit_length() - 1)


def _block_k(size: int) -> int:
    return 128 if size >= 128 else 64 if size >= 64 else 32 if size >= 32 else 16


def choose_config(num_tokens: int, top_k: int, num_experts: int, hidden_size: int, intermediate_size: int,
                  max_active_experts: int | None = None, *, num_sms: int, element_size: int = 2) -> MoeKernelConfig:
    """Decode-oriented (a decode block has few rows, so the cost is streaming weights). BLOCK_M follows
    the expected pairs per non-empty expert; BLOCK_N is the largest power of two that still gives ~2
    programs per SM for the expected number of blocks, so every SM streams weights; BLOCK_K shrinks until
    the pipelined tiles fit shared memory."""
    num_pairs = max(num_tokens * top_k, 1)
    nonempty = min(num_pairs, num_experts, max_active_experts or num_experts)
    pairs_per_expert = num_pairs / max(nonempty, 1)
    block_m = 16 if pairs_per_expert <= 16 else (32 if pairs_per_expert <= 32 else 64)
    expected_blocks = max(nonempty, (num_pairs + block_m - 1) // block_m)
    tiles_wanted = max(1, -(-2 * num_sms // expected_blocks))

    def block_n_for(n: int) -> int:
        return max(16, min(128, _pow2_floor(max(n // tiles_wanted, 16))))

    gate_up_block_n, down_block_n = block_n_for(intermediate_size), block_n_for(hidden_size)
    gate_up_block_k, down_block_k = _block_k(hidden_size), _block_k(intermediate_size)
    stages = MoeKernelConfig.num_stages

    # Software pipelining keeps (num_stages - 1) copies of each loop's tiles in shared memory; fp32 tiles
    # of 128x128 overflow Hopper's 227 KiB (measured by `python -m lynx_sglang.tools.hopper_compile`).
    def pipelined_bytes(block_k: int, block_n: int, weight_tiles: int) -> int:
        return (stages - 1) * (block_m * block_k + weight_tiles * block_k * block_n) * element_size

    while gate_up_block_k > 16 and pipelined_bytes(gate_up_block_k, gate_up_block_n, 2) > SHARED_MEMORY_BUDGET:
        gate_up_block_k //= 2
    while down_block_k > 16 and pipelined_bytes(down_block_k, down_block_n, 1) > SHARED_MEMORY_BUDGET:
        down_block_k //= 2
    return MoeKernelConfig(block_m=block_m, gate_up_block_n=gate_up_block_n, gate_up_block_k=gate_up_block_k,
                           down_block_n=down_block_n, down_block_k=down_block_k)
