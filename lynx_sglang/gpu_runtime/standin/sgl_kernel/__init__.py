"""Stand-in for `sgl_kernel` on CUDA machines where the real one cannot be imported.

Put first on PYTHONPATH by `lynx-sglang serve` (see `lynx_sglang.gpu_runtime`). Names SGLang calls
on the serving path are implemented; every other name SGLang imports is a stub that raises
`NotImplementedError` naming itself when called.
"""

from __future__ import annotations

from lynx_sglang.gpu_runtime.standin_names import stub


def moe_align_block_size(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
                         cumsum_buffer, pad_sorted_token_ids=False, ignore_invalid_expert=False):
    from lynx_sglang.gpu_runtime.align import moe_align_block_size as align

    align(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad, cumsum_buffer,
          pad_sorted_token_ids, ignore_invalid_expert)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return stub(f"sgl_kernel.{name}")


__version__ = "0.0.0+lynx-gpu-standin"
