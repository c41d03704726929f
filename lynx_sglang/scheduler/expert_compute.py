"""The expert compute of pruned steps: lynx's active-expert kernel where it applies, else SGLang's own."""

from __future__ import annotations

import torch

from lynx_sglang.scheduler.introspection import active_kernel_unsupported
from lynx_sglang.scheduler.log import NoteOnce
from lynx_sglang.scheduler.settings import PolicySettings
from lynx_sglang.scheduler.step import Step


class ExpertCompute:
    """Which compute runs a pruned step's MoE layer (decided once per layer, said once in the log
    where lynx's kernel cannot compute a layer), and running it."""

    def __init__(self, settings: PolicySettings, note: NoteOnce):
        self.settings = settings
        self.note = note
        self._kernels: dict[int, ActiveExpertCompute | None] = {}  # by id of the MoE layer
        self.compute_by_layer: dict[int, str] = {}  # what computed each layer's pruned decode steps

    def uses_active_kernel(self) -> bool:
        kernel, policy = self.settings.config.kernel, self.settings.config.policy
        return kernel != "sglang" and not (kernel == "auto" and policy == "baseline")

    def run(self, step: Step, layer, method, dispatch_output, sglang_compute, routed: bool):
        """The layer's output on a pruned step; `sglang_compute(dispatch_output)` runs SGLang's own.
        routed: whether the policy routed this layer (a layer it passes through keeps SGLang's compute)."""
        kernel = self._kernel_for(layer, method) if step.pure_decode and routed and self.uses_active_kernel() else None
        if kernel is not None:
            return kernel(layer, dispatch_output)
        if self.settings.config.policy != "baseline" and not layer.w13_weight.is_cuda:
            # SGLang's CPU loop needs distinct experts per row; its CUDA kernels take repeated ones.
            dispatch_output = for_sglang_cpu_loop(dispatch_output, layer.w13_weight.shape[0])
        return sglang_compute(dispatch_output)

    def _kernel_for(self, layer, method) -> ActiveExpertCompute | None:
        key = id(layer)
        if key not in self._kernels:
            reason = active_kernel_unsupported(layer, method)
            if reason:
                self.note(f"MoE layers with {reason} keep SGLang's expert compute (the policy still applies)")
            compute = None if reason else ActiveExpertCompute(self.settings.config.kernel, layer.w13_weight.is_cuda)
            self._kernels[key] = compute
            self.compute_by_layer[layer.layer_id] = f"sglang ({reason})" if reason else compute.name
        return self._kernels[key]


class ActiveExpertCompute:
    """Runs a decode step's experts through lynx_sglang.kernels: the experts present in the final ids.

    No active mask: the final ids name exactly the experts to compute (padding rows hold -1, which
    contributes nothing), so a mask built from them would add nothing but work. No
    max_active_experts either, though an expert budget bounds the policy's set: a layer call that
    falls back (non-finite logits, say) computes the model's own routing, up to min(T x k, E) experts,
    and a bound below that would drop pairs of the other rows of that step without a trace."""

    def __init__(self, kernel: str, on_cuda: bool):
        self.force_triton = kernel == "triton"
        self.name = "lynx-triton" if on_cuda or self.force_triton else "lynx-cpu"

    def __call__(self, layer, dispatch_output):
        from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

        from lynx_sglang import kernels

        hidden = dispatch_output.hidden_states
        topk = dispatch_output.topk_output
        compute = kernels.fused_moe_active_triton if self.force_triton else kernels.fused_moe_active
        out = compute(hidden, layer.w13_weight, layer.w2_weight, topk.topk_ids, topk.topk_weights, None,
                      layer.moe_runner_config.activation)
        return StandardCombineInput(hidden_states=out)


def distinct_ids_per_row(topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                         num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same routing with no expert twice in a row, for SGLang's CPU expert loop.

    A pruned routing may name an expert in several slots of a row (the remap fills the slots it cannot
    fill with the token's first choice at weight 0). SGLang's CPU loop (`moe_forward_native`) counts
    each expert once per row and then fails on the pair count. Each repeated slot here adds its weight
    to the expert's first slot and takes an expert the row does not use, at weight 0: the same sum of
    weighted expert outputs. Tensor ops with static shapes; k <= E."""
    num_rows, top_k = topk_ids.shape
    ids = topk_ids.long()
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # [T, k, k]: slot i names slot j's expert
    first_slot = same.int().argmax(dim=2)  # the first slot naming each slot's expert
    slot = torch.arange(top_k, device=ids.device)
    repeated = first_slot != slot
    weights = torch.zeros_like(topk_weights).scatter_add_(1, first_slot, topk_weights)
    used = torch.zeros(num_rows, num_experts, dtype=torch.int8, device=ids.device).scatter_(1, ids.clamp(min=0), 1)
    unused = torch.argsort(used, dim=1, stable=True)[:, :top_k]  # the row's unused experts, lowest first
    nth_repeat = (torch.cumsum(repeated.long(), dim=1) - 1).clamp(min=0)
    ids = torch.where(repeated, unused.gather(1, nth_repeat), ids)
    return ids.to(topk_ids.dtype), weights


def for_sglang_cpu_loop(dispatch_output, num_experts: int):
    """`dispatch_output` with each row's experts distinct (`distinct_ids_per_row`)."""
    topk = dispatch_output.topk_output
    ids, weights = distinct_ids_per_row(topk.topk_ids, topk.topk_weights, num_experts)
    return dispatch_output._replace(topk_output=topk._replace(topk_ids=ids, topk_weights=weights))
