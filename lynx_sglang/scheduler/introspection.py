"""Everything the scheduler reads from SGLang's objects: the MoE layers of the loaded model, the
routers the policies do not model, and the layers lynx's active-expert kernel cannot compute."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lynx_sglang.model_config import moe_layer_ids
from lynx_sglang.policies.router import SCORING_FUNCTIONS, RouterModel
from lynx_sglang.scheduler.compute_table import LayerShape
from lynx_sglang.scheduler.stats import MoeLayerInfo


@dataclass(frozen=True)
class LoadedModel:
    """What binding needs from a loaded model."""

    layers: list[MoeLayerInfo]
    device: torch.device
    name: str
    tp_size: int
    timing_layer: tuple  # (w13, w2, activation) of one MoE layer, for the latency controller
    passthrough: dict[int, str]  # layer id -> why the policy leaves its routing alone (its router)
    moe_modules: tuple = ()  # the FusedMoE modules themselves (the expert cache moves their weights)
    # SGLang's overlap schedule on an asynchronous device: a step starts before the last one's result is read
    overlapped_steps: bool = False
    num_layers: int | None = None  # the decoder's layers, MoE or not (config.json's num_hidden_layers)
    moe_layers: tuple[int, ...] | None = None  # those with routed experts, by the family's rule (None: unknown)
    router_kind: str | None = None  # the first modelled router's kind (RouterModel.kind; None: plain softmax)
    # A MoE layer's rows are this rank's own batch (no attention-DP gather, no attention-CP split), so a
    # captured graph's padding rows are its last ones
    local_moe_input: bool = True


def read_model(model_runner) -> LoadedModel | None:
    """The model's MoE layers, or None when it has none."""
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
    from sglang.srt.runtime_context import get_parallel

    moe_layers = [m for m in model_runner.model.modules() if isinstance(m, FusedMoE)]
    if not moe_layers:
        return None
    hf_config = model_runner.model_config.hf_config
    text_config = getattr(model_runner.model_config, "hf_text_config", hf_config)
    num_layers = getattr(text_config, "num_hidden_layers", None)
    top_k = getattr(hf_config, "num_experts_per_tok", None)  # some MoE layers leave top_k to TopK
    first = moe_layers[0]
    device = model_device(model_runner.model, first.w13_weight.device)
    overlap_schedule = not model_runner.server_args.disable_overlap_schedule  # read on every device
    return LoadedModel(
        layers=[layer_info(m, top_k) for m in moe_layers],
        device=device,
        name=getattr(hf_config, "_name_or_path", "") or str(model_runner.model_config.model_path),
        tp_size=get_parallel().tp_size,
        timing_layer=(first.w13_weight, first.w2_weight, first.moe_runner_config.activation),
        passthrough=passthrough_layers(model_runner.model),
        router_kind=first_router_kind(model_runner.model),
        local_moe_input=get_parallel().attn_dp_size == 1 and getattr(get_parallel(), "attn_cp_size", 1) == 1,
        moe_modules=tuple(moe_layers),
        overlapped_steps=overlap_schedule and device.type != "cpu",
        num_layers=num_layers,
        # From config.json as at launch, not from the layers loaded here (a pipeline stage holds only some)
        moe_layers=moe_layer_ids(text_config.to_dict(), num_layers) if num_layers else None,
    )


def model_device(model, default: torch.device) -> torch.device:
    """Where the model computes: the device of its first parameter that is not an expert weight (with
    the expert cache, experts are made in host memory at load)."""
    experts = ("w13_weight", "w2_weight", "w13_weight_bias", "w2_weight_bias")
    return next((p.device for name, p in model.named_parameters() if not name.endswith(experts)), default)


def layer_info(layer, model_top_k: int | None) -> MoeLayerInfo:
    per_rank = layer.w13_weight[0].numel() * layer.w13_weight.element_size()
    per_rank += layer.w2_weight[0].numel() * layer.w2_weight.element_size()
    routed = layer.num_experts - layer.num_fused_shared_experts
    return MoeLayerInfo(layer.layer_id, routed, layer.top_k or model_top_k, per_rank * layer.moe_tp_size)


def layer_shape(layer, top_k: int) -> LayerShape:
    """The layer as one rank computes it: w13 is [E, 2 x I per rank, H]."""
    experts, two_i, hidden = layer.w13_weight.shape
    return LayerShape(experts, hidden, two_i // 2, top_k, str(layer.w13_weight.dtype).removeprefix("torch."))


def first_router_kind(model) -> str | None:
    """The kind of the first router the policies model (None: plain softmax, or none modelled)."""
    from sglang.srt.layers.moe.topk import TopK

    for module in model.modules():
        if isinstance(module, TopK):
            router, _ = router_model(module.topk_config)
            if router is not None:
                return None if router.is_plain else router.kind
    return None


def passthrough_layers(model) -> dict[int, str]:
    """The MoE layers the policy will leave alone and why, from their TopK modules. The routing hook
    re-checks each call; layers whose top-k never reaches select_experts are only visible here."""
    from sglang.srt.layers.moe.topk import TopK, TopKOutputFormat

    reasons = {}
    for module in model.modules():
        if not isinstance(module, TopK):
            continue
        config = module.topk_config
        if config.output_format not in (None, TopKOutputFormat.STANDARD):
            reason = f"the {config.output_format.name} top-k format"
        else:
            reason = router_passthrough_reason(config)
        if reason and getattr(module, "layer_id", None) is not None:
            reasons[module.layer_id] = reason
    return reasons


def passthrough_reason(output, router_logits, router_reason: str | None, dispatch_info) -> str | None:
    """Why a layer's routing is left alone (None: the policy applies), given why its router is
    (`router_model`'s reason, read once per layer). Static per layer."""
    if type(output).__name__ != "StandardTopKOutput":
        return f"the {type(output).__name__} top-k format"
    if router_reason:
        return router_reason
    if dispatch_info is not None:
        return "expert-location dispatch (EPLB)"
    if router_logits is None or router_logits.dim() != 2 or router_logits.shape[0] != output.topk_ids.shape[0]:
        return "router logits that do not match the top-k rows"
    return None


def router_model(topk_config) -> tuple[RouterModel | None, str | None]:
    """The layer's router as the policies model it (policies/router.py), or (None, why its routing is
    left alone). Follows select_experts in SGLang's topk.py: a biased grouped router scores by sigmoid
    whatever its scoring_func says."""
    function = topk_config.custom_routing_function
    if function is not None:
        if getattr(function, "__qualname__", "") == "Llama4MoE.custom_routing_function":
            return RouterModel("sigmoid"), None  # top-k of the logits, weighted by their sigmoid
        return None, "a custom routing function"
    if getattr(topk_config, "sqrtsoftplus_log1p", False):
        return None, "sqrtsoftplus scoring that ranks NaN first"
    bias = topk_config.correction_bias
    scoring = "sigmoid" if topk_config.use_grouped_topk and bias is not None else topk_config.scoring_func
    if scoring not in SCORING_FUNCTIONS:
        return None, f"{scoring} scoring"
    groups = (topk_config.num_expert_group, topk_config.topk_group) if topk_config.use_grouped_topk else (None, None)
    shared = topk_config.num_shared_topk_slots or 0
    return RouterModel(scoring, None if bias is None else bias.detach(), *groups, shared_slots=shared), None


def router_passthrough_reason(topk_config) -> str | None:
    """Why the policies leave a router alone (None: they model it)."""
    return router_model(topk_config)[1]


def renormalizes(topk_config) -> bool:
    """Whether the layer's top-k weights sum to 1 (else the remap keeps each token's original mass)."""
    factor = topk_config.routed_scaling_factor
    scales = bool(topk_config.apply_routed_scaling_factor_on_output and factor not in (None, 1.0))
    return topk_config.renormalize and not scales


def active_kernel_unsupported(layer, method, on_cuda: bool | None = None) -> str | None:
    """Why lynx's kernel cannot compute this layer (None: it can). Only unquantized gated experts
    with SiLU/GELU, no biases and no expert parallelism are supported. on_cuda: whether the layer
    computes on CUDA (None: where its weights are; experts in host memory compute on the device)."""
    config = layer.moe_runner_config
    weight = getattr(layer, "w13_weight", None)
    on_cuda = (weight is not None and weight.is_cuda) if on_cuda is None else on_cuda
    checks = (
        (weight is None or weight.dtype not in (torch.float32, torch.float16, torch.bfloat16),
         "quantized or non-float expert weights"),
        (getattr(layer, "moe_ep_size", 1) > 1, "expert parallelism"),
        (config.activation not in ("silu", "gelu") or not config.is_gated, f"activation {config.activation}"),
        (getattr(layer, "w13_weight_bias", None) is not None, "expert biases"),
        (config.apply_router_weight_on_input, "router weights applied on the input"),
        (config.gemm1_alpha is not None or config.gemm1_clamp_limit is not None, "clamped SwiGLU"),
        (getattr(method, "w13_swiglu_interleaved", False), "interleaved gate/up weights"),
        (config.no_combine, "no-combine output"),
        (getattr(layer, "use_intel_amx_backend", False), "the Intel AMX backend"),
        (getattr(method, "_aiter_runner", None) is not None, "the aiter MoE backend"),
        (on_cuda and _runner_backend(method) not in (None, "triton"),
         f"the {_runner_backend(method)} MoE backend"),
    )  # fmt: skip
    return next((reason for failed, reason in checks if failed), None)


def moe_output_scale(layer, on_cuda: bool) -> float:
    """What SGLang's own expert compute multiplies a layer's output by, so lynx's kernel does too: the
    routed scaling factor on CUDA, where SGLang's Triton runner scales its sum (DeepSeek-V3, GLM-4.5); 1
    on a CPU, where those models scale the layer's output themselves, and where the factor is fused
    into the top-k weights."""
    factor = layer.moe_runner_config.routed_scaling_factor
    if not on_cuda or factor in (None, 1.0) or getattr(layer, "should_fuse_routed_scaling_factor_in_topk", False):
        return 1.0
    return float(factor)


def _runner_backend(method) -> str | None:
    runner = getattr(method, "runner", None)
    backend = getattr(runner, "runner_backend", None)
    return None if backend is None else str(getattr(backend, "value", backend)).lower()


def replays_decode_graphs(model_runner) -> bool:
    """Whether decode steps replay captured graphs (not on a CPU, nor with --disable-cuda-graph)."""
    runner = getattr(model_runner, "decode_cuda_graph_runner", None)
    if runner is None or runner is getattr(model_runner, "eager_runner", None):
        return False
    return bool(getattr(runner, "capture_bs", None))


def routed_rows(model_runner, step, output) -> int | None:
    """How many rows the routing saw in a forward that returned `output`: the rows of the CUDA graph
    it replayed (padding included: the smallest captured batch size that holds the batch), else the
    step's own; None when the forward failed."""
    if output is None:
        return None
    if not getattr(output, "can_run_graph", False):
        return step.decode_rows
    sizes = getattr(model_runner.decode_cuda_graph_runner, "capture_bs", None) or ()
    return min((size for size in sizes if size >= step.decode_rows), default=None)
