"""Shared helpers for the kernel tests: random MoE problems and error measures."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lynx_sglang.kernels import fused_moe_active

# Relative error bounds against the fp64 reference, per dtype: ||out - ref||_F / ||ref||_F and
# max|out - ref| / max|ref|. fp32 is exact-ish on CPU and in the interpreter (tf32 on a GPU needs more);
# fp16/bf16 allow for the rounding of the stored intermediate and per-slot outputs, and for the
# interpreter's truncating fp32 -> bf16 conversion (1-2 ulp).
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (4e-3, 1e-2),
    torch.bfloat16: (3e-2, 5e-2),
}
GPU_FP32_TOLERANCE = (5e-3, 1e-2)  # tf32 tl.dot on NVIDIA


@dataclass
class MoeProblem:
    hidden: torch.Tensor
    w13: torch.Tensor
    w2: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    active_mask: torch.Tensor | None


def make_problem(
    num_tokens: int,
    hidden_size: int,
    intermediate_size: int,
    num_experts: int,
    top_k: int,
    dtype: torch.dtype = torch.float32,
    num_active: int | None = None,
    stray_ids: bool = False,
    nan_inactive: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> MoeProblem:
    """A random problem whose ids are routed over ``num_active`` experts (all when None -> mask None).

    stray_ids: also point some slots at inactive experts and at -1 (both must contribute 0).
    nan_inactive: fill the weights of inactive experts with NaN (they must never be read).
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen)
    w13 = torch.randn(num_experts, 2 * intermediate_size, hidden_size, generator=gen) / hidden_size**0.5
    w2 = torch.randn(num_experts, hidden_size, intermediate_size, generator=gen) / intermediate_size**0.5
    if num_active is None:
        active_mask = None
        active_ids = torch.arange(num_experts)
    else:
        active_ids = torch.randperm(num_experts, generator=gen)[:num_active].sort().values
        active_mask = torch.zeros(num_experts, dtype=torch.bool)
        active_mask[active_ids] = True
    # Each token takes k distinct experts among the active ones when it can (the remap of a policy).
    scores = torch.rand(num_tokens, active_ids.numel(), generator=gen)
    take = min(top_k, active_ids.numel())
    chosen = active_ids[scores.topk(take, dim=1).indices]
    if take == 0:  # no active expert at all: every slot is padding
        chosen = torch.full((num_tokens, top_k), -1, dtype=torch.long)
    elif take < top_k:  # fewer active experts than k: repeat choices (allowed; each slot counts)
        chosen = chosen[:, torch.arange(top_k) % take]
    topk_ids = chosen.to(torch.int32)
    topk_weights = torch.rand(num_tokens, top_k, generator=gen) + 0.1
    topk_weights = topk_weights / topk_weights.sum(dim=1, keepdim=True)
    if stray_ids and num_tokens * top_k >= 2:
        flat = topk_ids.view(-1)
        flat[0] = -1
        if active_mask is not None and not bool(active_mask.all()):
            inactive = int((~active_mask).nonzero()[0])
            flat[-1] = inactive
    if nan_inactive and active_mask is not None:
        w13[~active_mask] = float("nan")
        w2[~active_mask] = float("nan")
    return MoeProblem(
        hidden.to(device=device, dtype=dtype),
        w13.to(device=device, dtype=dtype),
        w2.to(device=device, dtype=dtype),
        topk_ids.to(device),
        topk_weights.to(device=device, dtype=dtype),
        None if active_mask is None else active_mask.to(device),
    )


def reference(problem: MoeProblem, activation: str = "silu", topk_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The float64 reference of `problem` on the CPU (topk_weights: others than the problem's)."""
    mask = None if problem.active_mask is None else problem.active_mask.cpu()
    weights = problem.topk_weights if topk_weights is None else topk_weights
    return fused_moe_active(problem.hidden.cpu(), problem.w13.cpu(), problem.w2.cpu(), problem.topk_ids.cpu(),
                            weights.cpu(), mask, activation, implementation="reference")  # fmt: skip


def relative_errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = out.double() - ref.double()
    scale_fro = ref.double().norm().clamp_min(1e-30)
    scale_max = ref.double().abs().max().clamp_min(1e-30)
    return float(diff.norm() / scale_fro), float(diff.abs().max() / scale_max)


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """`out` where it was computed (the tolerance depends on the device), `ref` on the CPU."""
    fro_bound, max_bound = TOLERANCE[dtype]
    if out.is_cuda and dtype == torch.float32:
        fro_bound, max_bound = GPU_FP32_TOLERANCE
    out = out.cpu()
    assert torch.isfinite(out).all(), "output has non-finite values (unwritten or NaN weights read)"
    fro, worst = relative_errors(out, ref)
    assert fro <= fro_bound and worst <= max_bound, f"{dtype}: rel. error fro {fro:.3g} (<= {fro_bound}), max {worst:.3g} (<= {max_bound})"


def poisoned_output(num_tokens: int, hidden_size: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """An output buffer full of NaN: any element the kernel fails to write stays NaN."""
    return torch.full((num_tokens, hidden_size), float("nan"), dtype=dtype, device=device)
