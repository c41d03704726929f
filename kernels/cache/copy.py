"""The copies of a plan: host store -> device slots, three implementations.

* `reference`: torch ops with static shapes (gather N host experts, keep the slots a plan leaves
  alone through a select, one index_copy_ over a permutation of the slots). Graph safe and obviously
  right, but it moves N experts every call: for tests.
* `cpu`: the plan's copies read to the host (`.tolist()`, a sync) and one `copy_` per copy. Not graph
  safe and need not be: a CPU has no CUDA graphs (as kernels/moe/cpu.py).
* `triton` (copy_triton.py): one launch per weight tensor over a static grid (N entries x tiles); an
  entry without a copy exits after one int32 load. It reads the host store through its device address:
  pinned memory is mapped into the GPU's address space (unified virtual addressing), so SMs load it
  over PCIe directly, with no `cudaMemcpyAsync` whose size and addresses the host would have to know
  when the graph is captured. This is what keeps a decode step with copies capturable into one CUDA
  graph; the price is that the copy uses SMs (a handful suffice to fill PCIe) rather than a copy
  engine. Runs on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch

from .plan import CopyPlan

COPY_IMPLEMENTATIONS = ("auto", "triton", "cpu", "reference")


def copy_experts(plan: CopyPlan, host: torch.Tensor, slots: torch.Tensor, implementation: str = "auto") -> None:
    """slots[plan.target_slot[i]] = host[plan.source_expert[i]] for each entry with a copy.
    host [E, ...] (pinned on CUDA machines), slots [N, ...] on the device; same dtype and trailing shape."""
    if host.shape[1:] != slots.shape[1:] or host.dtype != slots.dtype:
        raise ValueError(f"copy_experts: host {list(host.shape)} {host.dtype} and slots {list(slots.shape)} "
                         f"{slots.dtype} must share the dtype and the shape of one expert")  # fmt: skip
    if implementation == "auto":
        implementation = "triton" if slots.is_cuda else "cpu"
    if implementation == "triton":
        from .copy_triton import copy_experts_triton

        copy_experts_triton(plan, host, slots)
    elif implementation == "cpu":
        for source, target in zip(plan.source_expert.tolist(), plan.target_slot.tolist()):
            if source >= 0:
                slots[target].copy_(host[source])
    elif implementation == "reference":
        rows = host[plan.source_expert.clamp(min=0).long().to(host.device)].to(slots.device)
        keep = slots[plan.target_slot]
        copies = plan.copies.view(-1, *([1] * (slots.dim() - 1)))
        slots.index_copy_(0, plan.target_slot, torch.where(copies, rows, keep))
    else:
        raise ValueError(f"copy_experts: implementation must be one of {COPY_IMPLEMENTATIONS}, got {implementation!r}")
