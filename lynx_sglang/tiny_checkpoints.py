"""Random tiny MoE checkpoints of the architectures SGLang serves, for tests and quick experiments.

    python -m lynx_sglang.tiny_checkpoints qwen3_moe ./tiny-qwen3

Each is 4 layers, hidden 128, 8 experts, top-2, float32, with the embedded model's character tokenizer,
so it loads offline in both transformers and SGLang. Weights are random (seeded): use float32, since
bf16 on random weights gives near-tie greedy flips between implementations.
"""

from __future__ import annotations

import sys
from pathlib import Path

ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")

_COMMON = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    # OLMoE's q/k-norm in SGLang assumes as many KV heads as query heads; use that everywhere.
    num_key_value_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def _config(arch: str, vocab_size: int, special: dict, shape: dict):
    import transformers as tf

    if arch == "mixtral":
        return tf.MixtralConfig(**{
            **_COMMON, **special, "vocab_size": vocab_size, "intermediate_size": 256,
            "num_local_experts": 8, "num_experts_per_tok": 2, **shape,
        })  # fmt: skip
    if shape:
        raise ValueError(f"shape overrides are only supported for mixtral, not {arch}")
    if arch == "qwen2_moe":
        return tf.Qwen2MoeConfig(
            **_COMMON, **special, vocab_size=vocab_size, intermediate_size=256, moe_intermediate_size=128,
            shared_expert_intermediate_size=256, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
        )
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(
            **_COMMON, **special, vocab_size=vocab_size, head_dim=32, intermediate_size=256,
            moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
            decoder_sparse_step=1, mlp_only_layers=[],
        )
    if arch == "olmoe":
        return tf.OlmoeConfig(
            **_COMMON, **special, vocab_size=vocab_size, intermediate_size=128,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
        )
    raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")


def build_tiny_checkpoint(arch: str, out_dir: str | Path, seed: int = 0, dtype: str = "float32", **shape) -> Path:
    """A random checkpoint of `arch`; `shape` overrides config fields (mixtral only), e.g. for the
    large memory-bound model of `lynx-sglang bench serve`."""
    import torch
    import transformers as tf

    from lynx_sglang.embedded.tokenizer import save_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(out)
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = _config(arch, len(tokenizer), special, shape)
    config.dtype = dtype
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    # Random init is small; larger router weights make routing decisive, as in a trained model.
    num_experts = getattr(config, "num_experts", None) or config.num_local_experts
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.weight") and p.shape[0] == num_experts:  # the router, not a shared-expert gate
                p.normal_(0.0, 0.5)
    model.save_pretrained(out, safe_serialization=True)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ARCHITECTURES:
        print(f"usage: python -m lynx_sglang.tiny_checkpoints {{{'|'.join(ARCHITECTURES)}}} OUT_DIR", file=sys.stderr)
        return 2
    print(build_tiny_checkpoint(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
