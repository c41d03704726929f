"""The runtime's work on one MoE layer call after the policy's decision, on one backend.

    finalize(router_logits, ids, weights, new_ids, new_weights, num_real, *, mask, table_row, step_fell_back)
        -> (final ids, final weights, fell_back, active mask or None)
    record(table_row, step_fell_back, num_real, router_logits, original_ids, final_ids, fell_back=None, *, mask)
        -> active mask or None

`finalize` checks a proposed routing: a real row with non-finite router logits, or a proposal with an
id outside [0, E) or a non-finite weight in a real row, makes the layer keep the model's routing for
the step (a fallback, counted). Both add the layer call's statistics to `table_row` (one row of
stats.FIELDS; None: none) and fold the fallback into `step_fell_back`; `mask` asks for the experts the
final ids use in real rows. No host sync on any backend.

The backend is chosen once, when the runtime binds to the model (`choose_backend`), resolved there to
its calls (`bookkeeping_for`) and shared by the policy's decision, the statistics and the router: one Triton launch per call on CUDA
(kernels/layer_triton.py), one call into the C++ library of the routing op on a CPU where it builds
(kernels/layer_cpu.py), else the torch ops below: dozens of small ops, each a kernel under a CUDA graph.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from lynx_sglang.policies import ids_to_mask
from lynx_sglang.policies.base import real_rows

BACKENDS = ("triton", "cpu", "torch")


def choose_backend(device) -> str:
    """Triton on CUDA, the C++ op on a CPU where it builds, torch otherwise."""
    from lynx_sglang.kernels.routing import fused_available

    if torch.device(device).type == "cuda":
        return "triton" if fused_available("triton") else "torch"
    return "cpu" if fused_available("cpu") and _cpu_layer_op_loads() else "torch"


def _cpu_layer_op_loads() -> bool:
    from lynx_sglang.kernels.layer_cpu import load_layer_op

    return load_layer_op() is not None


class Bookkeeping(NamedTuple):
    """One backend's two calls, resolved once at bind and shared by the router and the statistics."""

    name: str  # one of BACKENDS; the policy's decision runs on the same (`implementation=`)
    record: Callable
    finalize: Callable


def bookkeeping_for(backend: str) -> Bookkeeping:
    if backend == "triton":
        from lynx_sglang.kernels.layer_triton import finalize_triton, record_triton

        return Bookkeeping(backend, record_triton, finalize_triton)
    if backend == "cpu":
        from lynx_sglang.kernels.layer_cpu import finalize_cpu, record_cpu

        return Bookkeeping(backend, record_cpu, finalize_cpu)
    if backend == "torch":
        return Bookkeeping(backend, record_torch, finalize_torch)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


# ---- the torch backend: the definition the fused ones reproduce ------------------------------------
def finalize_torch(router_logits, ids, weights, new_ids, new_weights, num_real, *, mask: bool, table_row=None,
                   step_fell_back=None):  # fmt: skip
    num_experts = router_logits.shape[1]
    real = real_rows(router_logits.shape[0], num_real, router_logits.device)
    # checked in the dtypes they are returned in (a weight finite in fp32 may not be in fp16)
    new_ids, new_weights = new_ids.to(ids.dtype), new_weights.to(weights.dtype)
    bad_logits = ~torch.isfinite(router_logits.float()).all(dim=-1)
    bad_ids = ((new_ids < 0) | (new_ids >= num_experts)).any(dim=-1)
    bad_weights = ~torch.isfinite(new_weights.float()).all(dim=-1)
    fell_back = ((bad_logits | bad_ids | bad_weights) & real).any()
    final_ids, final_weights = torch.where(fell_back, ids, new_ids), torch.where(fell_back, weights, new_weights)
    active = _account(table_row, step_fell_back, real, router_logits, ids, final_ids, fell_back, mask)
    return final_ids, final_weights, fell_back, active


def record_torch(table_row, step_fell_back, num_real, router_logits, original_ids, final_ids, fell_back=None, *,
                 mask: bool = False):  # fmt: skip
    real = real_rows(router_logits.shape[0], num_real, router_logits.device)
    return _account(table_row, step_fell_back, real, router_logits, original_ids, final_ids, fell_back, mask)


def _account(table_row, step_fell_back, real, router_logits, original_ids, final_ids, fell_back, mask: bool):
    """What both calls share: the statistics of a final routing, and its active mask when asked."""
    num_experts = router_logits.shape[1]
    if table_row is not None:
        if fell_back is None:
            fell_back = torch.zeros((), dtype=torch.bool, device=router_logits.device)
        before = ids_to_mask(original_ids, real, num_experts).sum()
        after = ids_to_mask(final_ids, real, num_experts).sum()
        # A token is rerouted when one of its original experts is gone from its final ones.
        kept = (original_ids.unsqueeze(-1) == final_ids.unsqueeze(-2)).any(dim=-1)  # [T, k]
        rerouted = (real & ~kept.all(dim=-1)).sum()
        probs = torch.softmax(router_logits.float(), dim=-1).nan_to_num(0.0)
        original_probs = probs.gather(1, original_ids.long().clamp(0, num_experts - 1))
        dropped = (original_probs * ~kept * real.unsqueeze(1)).sum()
        counted = (~fell_back).double()
        figures = torch.stack([
            counted, real.sum().double() * counted, before.double() * counted,
            after.double() * counted, rerouted.double() * counted, dropped.double() * counted,
            fell_back.double(),
        ])  # fmt: skip
        table_row.add_(figures)
        step_fell_back.copy_(torch.maximum(step_fell_back, fell_back.double()))
    return ids_to_mask(final_ids, real, num_experts) if mask else None
