"""The active-expert MoE: compute only the experts a decode batch may use.

`fused_moe_active` takes the arguments of a `MoeCall` (call.py: what each means, checked for every
implementation) and runs one implementation: the Triton kernels (triton_kernels.py, tiles from
config.py, pairs grouped per active expert by align.py) on CUDA, a torch loop over the active experts
(cpu.py) on CPU, or the float64 reference (reference.py). stock.py re-implements SGLang's stock
algorithm for the benchmark's comparison. The Triton module is imported on first use, so importing this
package never decorates a kernel before a test has set TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch

from .align import ActiveAlignment
from .call import MoeCall
from .config import MoeKernelConfig

IMPLEMENTATIONS = ("auto", "triton", "cpu", "reference")


def fused_moe_active(*args, implementation: str = "auto", config: MoeKernelConfig | None = None,
                     alignment: ActiveAlignment | None = None, **kwargs) -> torch.Tensor:
    """The MoE output [T, H] of `MoeCall(*args, **kwargs)` over the active experts only: `out`, or a new
    tensor in hidden's dtype (the reference: float64). implementation: "auto" (triton on CUDA, cpu
    otherwise), "triton" (also CPU tensors under TRITON_INTERPRET=1), "cpu" or "reference". config and
    alignment: the Triton launches' tiles and pair grouping (triton_kernels.run_triton). With
    expert_slots (weights held in an expert cache's slots) every implementation runs on slot ids."""
    call = MoeCall(*args, **kwargs)
    if alignment is not None and call.expert_slots is not None:
        raise ValueError("fused_moe_active: an alignment groups expert ids, not slots; pass it without expert_slots")
    call = call.through_slots()
    if implementation == "auto":
        implementation = "triton" if call.hidden.is_cuda else "cpu"
    if implementation == "triton":
        from .triton_kernels import run_triton

        return run_triton(call, config=config, alignment=alignment)
    if config is not None or alignment is not None:
        raise ValueError(f"fused_moe_active: config and alignment are the Triton implementation's, not {implementation!r}'s")
    if implementation == "cpu":
        from .cpu import run_cpu

        return run_cpu(call)
    if implementation == "reference":
        from .reference import run_reference

        return run_reference(call)
    raise ValueError(f"fused_moe_active: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
