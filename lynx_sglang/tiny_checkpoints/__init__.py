"""Random tiny MoE checkpoints of the architectures SGLang serves, for tests and quick experiments.

    python -m lynx_sglang.tiny_checkpoints glm4_moe ./tiny-glm --num-experts 16 --top-k 4

Each is 4 layers, hidden 128, 8 experts, top-2 (Llama-4: top-1) unless told otherwise, float32, with
the embedded model's character tokenizer, so it loads offline in both transformers and SGLang. Each
architecture keeps its family's real router (`configs.ROUTER_KINDS`). Weights are random (seeded):
use float32, since bf16 on random weights gives near-tie greedy flips between implementations.
"""

from __future__ import annotations

from pathlib import Path

from lynx_sglang.tiny_checkpoints.configs import (
    ROUTED_SCALING_FACTOR,
    ARCHITECTURES,
    ROUTER_ARCHITECTURES,
    ROUTER_KINDS,
    SOFTMAX_ARCHITECTURES,
    RouterShape,
    RouterShapeError,
    build_config,
    router_shape,
)
from lynx_sglang.tiny_checkpoints.shapes import (
    FIXED_FIELDS,
    NAMED_SHAPES,
    ShapeError,
    fit_layers,
    kv_bytes_per_token,
    parse_shape,
    weight_bytes,
    write_config_only,
)

__all__ = [
    "ARCHITECTURES", "FIXED_FIELDS", "NAMED_SHAPES", "ROUTED_SCALING_FACTOR", "ROUTER_ARCHITECTURES", "ROUTER_KINDS",
    "SOFTMAX_ARCHITECTURES", "RouterShape", "RouterShapeError", "ShapeError", "build_tiny_checkpoint",
    "fit_layers", "kv_bytes_per_token", "parse_shape", "router_shape", "weight_bytes", "write_config_only",
]  # fmt: skip

# Router weight scales. Random init is small; larger router weights make routing decisive, as in a
# trained model. Sigmoid routers get a smaller scale so that scores stay off 0 and 1, where the
# correction bias alone would decide; their bias is as large as the score gaps, so it changes choices.
_SOFTMAX_ROUTER_STD = 0.5
_SIGMOID_ROUTER_STD = 0.1
_CORRECTION_BIAS_STD = 0.1


def build_tiny_checkpoint(
    arch: str,
    out_dir: str | Path,
    seed: int = 0,
    dtype: str = "float32",
    *,
    num_experts: int | None = None,
    top_k: int | None = None,
    **shape,
) -> Path:
    """A random checkpoint of `arch` with `num_experts` routed experts and `top_k` (None: the tiny
    defaults); `shape` overrides config fields (mixtral only), e.g. for the large memory-bound model
    of `lynx-sglang bench serve`."""
    import torch
    import transformers as tf

    from lynx_sglang.embedded.tokenizer import save_tokenizer

    # A mixtral `shape` may carry the router's size in the config's own field names (bench serve's shapes).
    num_experts = _one_value("num_local_experts", num_experts, shape.pop("num_local_experts", None))
    top_k = _one_value("num_experts_per_tok", top_k, shape.pop("num_experts_per_tok", None))
    router = router_shape(arch, num_experts, top_k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(out)
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = build_config(arch, len(tokenizer), special, router, shape)
    config.dtype = dtype
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    _randomise_routers(model, arch, router.num_experts)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _one_value(field: str, given, from_shape):
    if given is not None and from_shape is not None and given != from_shape:
        raise ValueError(f"{field} given twice with different values: {given} and {from_shape}")
    return given if given is not None else from_shape


def _randomise_routers(model, arch: str, num_experts: int) -> None:
    import torch

    sigmoid = arch in ("deepseek_v3", "glm4_moe", "llama4")
    std = _SIGMOID_ROUTER_STD if sigmoid else _SOFTMAX_ROUTER_STD
    with torch.no_grad():
        for name, p in model.named_parameters():
            # The router, not a shared-expert gate (Qwen2-MoE's has one row).
            if name.endswith(("gate.weight", "router.weight")) and p.shape[0] == num_experts:
                p.normal_(0.0, std)
            elif name.endswith("router.bias"):  # gpt-oss ranks by logits plus this bias
                p.normal_(0.0, std)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3 / GLM-4.5: used only to choose
                buffer.normal_(0.0, _CORRECTION_BIAS_STD)
