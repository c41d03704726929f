"""REPLACE hooks for SGLang's JIT kernels (CUDA C++ that SGLang builds with nvcc at first use) on the
serving path of the GPU runtime: torch or Triton code, or the switch that tells SGLang to take its own
fallback. Registered by the plugin in every SGLang process when the GPU runtime runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gated(activation, input: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    half = input.shape[-1] // 2
    result = activation(input[..., :half]) * input[..., half:]
    if out is None:
        return result
    out.copy_(result)
    return out


# SGLang's Triton fused MoE passes row-filter arguments (expert_ids, expert_step, sorted_token_ids, ...)
# so that its JIT kernel can skip padding rows. Computing every row gives the same values in the rows the
# down projection reads; the others are never read.
def silu_and_mul(input, out=None, expert_ids=None, expert_step=1, **row_filter):
    return _gated(F.silu, input, out)


def gelu_and_mul(input, out=None, expert_ids=None, expert_step=1, **row_filter):
    return _gated(F.gelu, input, out)


def gelu_tanh_and_mul(input, out=None, expert_ids=None, expert_step=1, **row_filter):
    return _gated(lambda x: F.gelu(x, approximate="tanh"), input, out)


def no(*args, **kwargs) -> bool:
    return False


def unquantized_moe_forward_native(self, layer, dispatch_output):
    """SGLANG_FORCE_FUSED_OP_BACKEND=torch also sends the unquantized MoE to its forward_native, which
    is SGLang's CPU expert loop: it reads token counts back to the host, which a CUDA graph cannot
    capture. CUDA tensors take SGLang's Triton runner instead."""
    if dispatch_output.hidden_states.is_cuda:
        return self.forward_cuda(layer, dispatch_output)
    return self.forward_cpu(layer, dispatch_output)


def no_dual_gemm(self, gate_up_proj, hidden_size):
    """Llama's MLP (Llama-4's shared expert and dense layers) asks on CUDA whether SGLang's small-batch
    dual GEMM applies, importing its CuTe DSL kernel, hence `cutlass`, which the GPU runtime lacks, to
    find out. That kernel needs SM100; on the H100/H200 SGLang's own answer is no dual GEMM."""
    return None


def biased_grouped_topk_postprocess(topk_ids, expert_location_dispatch_info, num_token_non_padded):
    """SGLang's function without its torch.compile wrapper, on every grouped top-k layer's decode path
    (DeepSeek-V3, GLM-4.5). Llama-4 keeps two compiled functions (its routing function and the NoPE
    layers' attention scale): inductor compiles them with Triton before the graphs are captured."""
    from sglang.srt.layers.moe.topk import _mask_topk_ids_padded_region, topk_ids_logical_to_physical

    topk_ids = topk_ids_logical_to_physical(topk_ids, expert_location_dispatch_info)
    _mask_topk_ids_padded_region(topk_ids, num_token_non_padded)
    return topk_ids


_ACTIVATION = "sglang.kernels.ops.activation.activation"
REPLACEMENTS = {
    f"{_ACTIVATION}.silu_and_mul": silu_and_mul,
    f"{_ACTIVATION}.gelu_and_mul": gelu_and_mul,
    f"{_ACTIVATION}.gelu_tanh_and_mul": gelu_tanh_and_mul,
    # The KV-cache store falls back to torch indexing when the JIT kernel "cannot be used".
    "sglang.kernels.ops.kvcache.kvcache.can_use_store_cache": no,
    # Qwen3-MoE: the q/k norms fall back to two RMSNorms, the fused rotary + KV write to torch.
    "sglang.kernels.ops.layernorm.norm.can_use_fused_inplace_qknorm": no,
    "sglang.srt.models.utils.enable_fused_set_kv_buffer": no,
    "sglang.srt.layers.quantization.unquant.UnquantizedFusedMoEMethod.forward_native": unquantized_moe_forward_native,
    "sglang.srt.layers.moe.topk._biased_grouped_topk_postprocess": biased_grouped_topk_postprocess,
    "sglang.srt.layers.dual_gemm.DualGemm._select_mode": no_dual_gemm,
}
