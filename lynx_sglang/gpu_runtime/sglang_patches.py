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


_ACTIVATION = "sglang.kernels.ops.activation.activation"
REPLACEMENTS = {
    f"{_ACTIVATION}.silu_and_mul": silu_and_mul,
    f"{_ACTIVATION}.gelu_and_mul": gelu_and_mul,
    f"{_ACTIVATION}.gelu_tanh_and_mul": gelu_tanh_and_mul,
    # The KV-cache store falls back to torch indexing when the JIT kernel "cannot be used".
    "sglang.kernels.ops.kvcache.kvcache.can_use_store_cache": no,
    # Qwen3-MoE's fused rotary + KV write is a JIT kernel; without it the torch rotary path runs.
    "sglang.srt.models.utils.enable_fused_set_kv_buffer": no,
}
