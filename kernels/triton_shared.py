"""What the routing and bookkeeping Triton launches share: tile sizes, warps, and which rows are real.

Importing this module imports Triton: the kernel modules import it, the package's entry points only
lazily (a test sets TRITON_INTERPRET=1 before the first kernel is decorated).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .interpret import interpreter_on, patch_language_once_per_launch, reduce_marked_combines_with_numpy

# Decided when the kernels below this import are decorated, as Triton decides it.
INTERPRETING = interpreter_on()
if INTERPRETING:
    patch_language_once_per_launch()
    reduce_marked_combines_with_numpy()


def next_pow2(value: int) -> int:
    return 1 << max(int(value) - 1, 0).bit_length()


def block_sizes(num_experts: int, top_k: int) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_K): the expert and slot axes of every tile."""
    return max(next_pow2(num_experts), 16), next_pow2(top_k)


def warps_for(elements: int, most: int = 4) -> int:
    """Warps for a tile: no more threads than it has elements. More threads than elements replicate
    values across threads, which Triton 3.6 miscompiles on sm_90 at some shapes (an LLVM SLP-vectorizer
    assertion at T 1, E 64, 4 warps; seen on an H100)."""
    return max(1, min(most, elements // 32))


def warps_option(warps: int) -> dict:
    """The launch's num_warps, left out under the interpreter (which has no warps)."""
    return {} if INTERPRETING else {"num_warps": warps}


def num_real_arguments(num_real, device, placeholder) -> tuple[int, torch.Tensor, int]:
    """(NUM_REAL_MODE, pointer, scalar) for `is_real_row`: a device tensor is read by the kernel (graph
    replays see new values); a python int, or a tensor on another device, becomes a scalar argument."""
    if num_real is None:
        return 0, placeholder, 0
    if isinstance(num_real, torch.Tensor):
        if num_real.device == device:
            return 2, num_real, 0
        num_real = int(num_real)  # a CPU scalar next to CUDA logits: read on the host, as torch does
    return 1, placeholder, int(num_real)


@triton.jit
def is_real_row(rows, num_rows, num_real_ptr, num_real, NUM_REAL_MODE: tl.constexpr):
    """Rows below num_real: mode 0 every row, 1 a scalar argument, 2 a 0-dim tensor on the device."""
    real = rows < num_rows
    if NUM_REAL_MODE == 1:
        real = real & (rows < num_real)
    elif NUM_REAL_MODE == 2:
        real = real & (rows < tl.load(num_real_ptr))
    return real


@triton.jit
def column(matrix, slot, j):
    """Column j of a small [BT, BK] matrix (exact: one term is non-zero)."""
    return tl.sum(tl.where(slot[None, :] == j, matrix, 0), axis=1)
