"""The expert compute of pruned steps: lynx's active-expert kernel where it applies, else SGLang's own."""

from __future__ import annotations

from typing import NamedTuple

import torch

from lynx_sglang.scheduler.compute_table import ComputeTable, LayerShape
from lynx_sglang.scheduler.introspection import active_kernel_unsupported, layer_shape, moe_output_scale
from lynx_sglang.scheduler.log import NoteOnce
from lynx_sglang.scheduler.settings import PolicySettings
from lynx_sglang.scheduler.step import Step


class KernelChoice:
    """`--lynx-kernel` as a choice per decode step: "lynx" or "sglang".

    auto: SGLang's for baseline (so baseline is plain SGLang); for the other policies the measured
    table's kernel for the batch's rows where the device has a table with the layer's shape
    (compute_table.py), else lynx's, except on a lone row the policy leaves alone (lone_row.py): that
    step is the model's own, and SGLang's compute, as baseline's, keeps concurrency 1 at baseline's speed
    (at one row SGLang's algorithm took 28-31 % less time than lynx's kernel at the 64- and 128-expert
    shapes on an H100, docs/benchmarks/kernels-gpu.md). lynx and triton: lynx's; sglang: SGLang's."""

    def __init__(self, kernel: str, table: ComputeTable | None):
        self.kernel = kernel
        self.table = table

    def for_step(self, policy: str, shape: LayerShape, rows: int, lone_row_kept: bool = False) -> str:
        """rows: the batch's rows, a static shape (a CUDA graph's batch size); lone_row_kept: one row
        whose routing the policy leaves alone, from a setting the graphs are captured with
        (runtime.graphs_hold_current_settings). The choice is graph safe."""
        if self.kernel == "sglang" or (self.kernel == "auto" and policy == "baseline"):
            return "sglang"
        if self.kernel != "auto":
            return "lynx"
        measured = self.table.kernel_for(shape, rows) if self.table is not None else None
        return measured or ("sglang" if lone_row_kept else "lynx")

    def describe(self, policy: str, shape: LayerShape, lynx_name: str) -> str:
        names = {"lynx": lynx_name, "sglang": "sglang"}
        entries = self.table.by_shape.get(shape.key) if self.table is not None else None
        if self.kernel != "auto" or policy == "baseline" or entries is None:
            return names[self.for_step(policy, shape, 1)]
        bands: list[tuple[int, str]] = []  # neighbours with the same kernel merged
        for rows, kernel in entries:
            if bands and bands[-1][1] == kernel:
                bands[-1] = (rows, kernel)
            else:
                bands.append((rows, kernel))
        if len(bands) == 1:
            return names[bands[0][1]]
        return ", ".join([f"{names[kernel]} up to {rows} rows" for rows, kernel in bands[:-1]]
                         + [f"{names[bands[-1][1]]} above"])  # fmt: skip


class LayerCompute(NamedTuple):
    layer_id: int
    shape: LayerShape | None  # None with kernel: read only from weights lynx's kernel can compute
    kernel: ActiveExpertCompute | None  # None: lynx's kernel cannot compute this layer
    unsupported: str | None


class ExpertCompute:
    """Which compute runs a pruned step's MoE layer, and running it. Whether lynx's kernel can compute
    a layer is decided at its first pure decode step (said once in the log where it cannot)."""

    def __init__(self, settings: PolicySettings, note: NoteOnce, table: ComputeTable | None):
        self.settings = settings
        self.note = note
        self.choice = KernelChoice(settings.config.kernel, table)
        self._layers: dict[int, LayerCompute] = {}  # by id of the MoE layer

    def run(self, step: Step, layer, method, dispatch_output, sglang_compute, routed: bool):
        """The layer's output on a pruned step; `sglang_compute(dispatch_output)` runs SGLang's own.
        routed: whether the policy routed this layer (a layer it passes through keeps SGLang's compute)."""
        if step.pure_decode and routed:
            compute = self._compute_for(layer, method, dispatch_output)
            rows = dispatch_output.hidden_states.shape[0]
            lone_row_kept = self.settings.keeps_routing(rows)
            if compute.kernel is not None and self.choice.for_step(self.settings.config.policy, compute.shape,
                                                                   rows, lone_row_kept) == "lynx":  # fmt: skip
                return compute.kernel(layer, dispatch_output)
            if lone_row_kept:
                return sglang_compute(dispatch_output)  # the model's own routing: nothing to make distinct
        if self.settings.config.policy != "baseline" and not layer.w13_weight.is_cuda:
            # SGLang's CPU loop needs distinct experts per row; its CUDA kernels take repeated ones.
            dispatch_output = for_sglang_cpu_loop(dispatch_output, layer.w13_weight.shape[0])
        return sglang_compute(dispatch_output)

    def describe(self) -> dict[int, str]:
        """What computes each MoE layer's pruned decode steps now (layers that have run one)."""
        policy = self.settings.config.policy
        return {c.layer_id: f"sglang ({c.unsupported})" if c.kernel is None else
                self.choice.describe(policy, c.shape, c.kernel.name)
                for c in sorted(self._layers.values(), key=lambda c: c.layer_id)}  # fmt: skip

    def _compute_for(self, layer, method, dispatch_output) -> LayerCompute:
        compute = self._layers.get(id(layer))
        if compute is None:
            reason = active_kernel_unsupported(layer, method)
            if reason:
                if self.choice.kernel != "sglang":
                    self.note(f"MoE layers with {reason} keep SGLang's expert compute (the policy still applies)")
                compute = LayerCompute(layer.layer_id, None, None, reason)
            else:
                top_k = dispatch_output.topk_output.topk_ids.shape[1]
                kernel = ActiveExpertCompute(self.settings.config.kernel, layer.w13_weight.is_cuda)
                compute = LayerCompute(layer.layer_id, layer_shape(layer, top_k), kernel, None)
            self._layers[id(layer)] = compute
        return compute


class ActiveExpertCompute:
    """Runs a decode step's experts through lynx_sglang.kernels: the experts present in the final ids.

    No active mask: the final ids name exactly the experts to compute (padding rows hold -1, which
    contributes nothing), so a mask built from them would add nothing but work.

    No max_active_experts: it is a static bound, captured into every CUDA graph, and a bound below
    the experts a call really uses drops pairs without a trace. Nothing the server can do at run time
    stays under one below min(T x k, E), the kernel's own bound: POST /lynx/policy switches policy and
    budget without recapturing (to no budget, or to a policy without one), the tpot_ms controller
    moves its cap between 1 and E, a mass budget bounds nothing, and a layer call that falls back (a
    check failed, the policy raised) computes the model's own routing."""

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
        scale = moe_output_scale(layer, hidden.is_cuda)
        return StandardCombineInput(hidden_states=out if scale == 1.0 else out.mul_(scale))


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
