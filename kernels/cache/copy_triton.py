"""The plan's copies as one Triton launch per weight tensor (copy.py says why a kernel, not memcpy).

Grid (N plan entries, cdiv(expert elements, BLOCK)). Program (i, tile) reads source_expert[i]; -1
returns before touching any weight, else it copies its tile of host[source] into slots[target_slot[i]].
Offsets are int64 (an expert of a large model passes 2**31 bytes across E). The host pointer is the
pinned store's device address under unified virtual addressing (ExpertCache refuses an unpinned store
for CUDA slots when it is built, so nothing is asked of the driver here, inside a graph capture);
under the interpreter both are CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_shared import INTERPRETING
from .plan import CopyPlan

BLOCK = 4096  # elements per program: 8 KiB of bf16, enough loads in flight per SM to keep PCIe busy


@triton.jit
def _copy_experts_kernel(host_ptr, slots_ptr, source_ptr, target_ptr, expert_numel, BLOCK: tl.constexpr):
    entry = tl.program_id(0)
    tile = tl.program_id(1)
    source = tl.load(source_ptr + entry)
    if source < 0:
        return  # no copy for this entry: nothing read from the host
    target = tl.load(target_ptr + entry)
    offsets = tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < expert_numel
    values = tl.load(host_ptr + source.to(tl.int64) * expert_numel + offsets, mask=inside)
    tl.store(slots_ptr + target.to(tl.int64) * expert_numel + offsets, values, mask=inside)


def copy_experts_triton(plan: CopyPlan, host: torch.Tensor, slots: torch.Tensor) -> None:
    if not slots.is_cuda and not INTERPRETING:
        raise RuntimeError("copy_experts got CPU slots for Triton but its interpreter is off: set "
                           "TRITON_INTERPRET=1 before the first import of the kernels, or use implementation='cpu'")
    if not (host.is_contiguous() and slots.is_contiguous()):
        raise ValueError("copy_experts: the host store and the slots must be contiguous")
    expert_numel = slots[0].numel()
    grid = (plan.source_expert.shape[0], triton.cdiv(expert_numel, BLOCK))
    target = plan.target_slot.to(torch.int32)
    _copy_experts_kernel[grid](host, slots, plan.source_expert, target, expert_numel, BLOCK=BLOCK)
