"""Stand-in for `sgl_kernel` on CUDA machines where the real one cannot be imported.

Put first on PYTHONPATH by `lynx-sglang serve` (see `lynx_sglang.gpu_runtime`). The functions SGLang
calls on the serving path are implemented here; every other name SGLang imports is a stub that raises
`MissingKernelError` naming itself when called (lists in `lynx_sglang.gpu_runtime.standin_names`).
"""

from __future__ import annotations

from lynx_sglang.gpu_runtime.standin_names import module_getattr


def moe_align_block_size(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
                         cumsum_buffer, pad_sorted_token_ids=False, ignore_invalid_expert=False) -> None:
    from lynx_sglang.gpu_runtime.align import moe_align_block_size as align

    align(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad, cumsum_buffer,
          pad_sorted_token_ids, ignore_invalid_expert)


def moe_sum_reduce(input, output, routed_scaling_factor) -> None:
    """output[:] = input.sum(1) * routed_scaling_factor ([M, k, H] -> [M, H]): SGLang's Triton version."""
    from sglang.kernels.ops.moe.fused_moe_triton_kernels import moe_sum_reduce_triton

    moe_sum_reduce_triton(input, output, routed_scaling_factor)


__getattr__ = module_getattr(__name__)
__version__ = "0.0.0+lynx-gpu-standin"
