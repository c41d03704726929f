"""`lynx-sglang bench kernels`: the kernel benchmark (kernels.py), plus SGLang's own fused MoE.

lynx_sglang.kernels knows nothing of SGLang; this module adds, at the same routing, what SGLang 0.5.23
itself runs for an unquantised MoE layer:
* CUDA: ``fused_experts`` of ``sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe`` (its Triton
  fused MoE: ``moe_align_block_size``, then ``invoke_fused_moe_kernel`` twice);
* CPU: ``moe_forward_native`` of ``sglang.srt.layers.moe.fused_moe_native`` (the loop over experts the
  CPU path of SGLang runs when there is no AMX kernel).
The output names which one ran, or why SGLang's could not be loaded.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch

from . import kernels as kernel_bench


def sglang_fused_experts(activation: str = "silu"):
    """SGLang's Triton fused MoE, called as its MoE runner calls it (out of place)."""
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe import fused_experts
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    config = MoeRunnerConfig(activation=activation, inplace=False)

    def run(hidden, w13, w2, topk_ids, topk_weights, active_mask):
        return fused_experts(hidden, w13, w2, StandardTopKOutput(topk_weights, topk_ids, None), config)

    return run


def sglang_moe_forward_native(activation: str = "silu"):
    """SGLang's torch MoE (its CPU path without AMX), on a stand-in for the FusedMoE layer."""
    from sglang.srt.layers.moe.fused_moe_native import moe_forward_native
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    config = MoeRunnerConfig(activation=activation)

    def run(hidden, w13, w2, topk_ids, topk_weights, active_mask):
        layer = SimpleNamespace(num_experts=w13.shape[0], w13_weight=w13, w2_weight=w2)
        return moe_forward_native(layer, hidden, StandardTopKOutput(topk_weights, topk_ids, None), config)

    return run


def sglang_implementations(device: torch.device) -> dict:
    """{"sglang": (what runs, fn)}, or {} with the reason printed when SGLang's cannot be loaded."""
    if device.type == "cuda":
        name = "sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe.fused_experts (SGLang's Triton fused MoE)"
        factory = sglang_fused_experts
    else:
        name = "sglang.srt.layers.moe.fused_moe_native.moe_forward_native (SGLang's torch MoE, its CPU path)"
        factory = sglang_moe_forward_native
    try:
        return {"sglang": (name, factory())}
    except Exception as error:  # noqa: BLE001 - report and go on with the other implementations
        print(f"# sglang: not available ({type(error).__name__}: {str(error)[:200]})")
        return {}


def main(argv=None) -> int:
    return kernel_bench.main(argv, extra_implementations=sglang_implementations)


if __name__ == "__main__":
    sys.exit(main())
