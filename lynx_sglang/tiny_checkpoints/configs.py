"""Tiny transformers configs, one per architecture, each with its family's real router.

Softmax top-k: mixtral, qwen2_moe, qwen3_moe, olmoe. Biased grouped sigmoid (noaux_tc) with a shared
expert, a routed scaling factor and dense first layers: deepseek_v3, glm4_moe. Sigmoid top-1 plus a
shared expert: llama4. Softmax over the top-k of logits with a router bias: gpt_oss.
"""

from __future__ import annotations

from dataclasses import dataclass

SOFTMAX_ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
ROUTER_ARCHITECTURES = ("deepseek_v3", "glm4_moe", "llama4", "gpt_oss")
ARCHITECTURES = SOFTMAX_ARCHITECTURES + ROUTER_ARCHITECTURES

# The router each family ranks experts by (for docs, tests and the CLI's help).
ROUTER_KINDS = {
    "mixtral": "softmax top-k, renormalised",
    "qwen2_moe": "softmax top-k, not renormalised, gated shared expert",
    "qwen3_moe": "softmax top-k, renormalised",
    "olmoe": "softmax top-k, not renormalised",
    "deepseek_v3": "sigmoid, correction bias, grouped, scaled, shared expert",
    "glm4_moe": "sigmoid, correction bias, grouped, scaled, shared expert",
    "llama4": "sigmoid top-1 of logits, shared expert",
    "gpt_oss": "softmax over the top-k logits, router bias",
}

DEFAULT_EXPERTS = 8
DEFAULT_TOP_K = {"llama4": 1}  # Llama-4's real router is top-1; every other default is top-2

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
# DeepSeek-V3 and GLM-4.5 are 2.5 (GLM-4.5's public config); 1.0 would hide a scaling mistake.
ROUTED_SCALING_FACTOR = 2.5


class RouterShapeError(ValueError):
    """Experts and top-k that the architecture's router cannot take; the message says why."""


@dataclass(frozen=True)
class RouterShape:
    num_experts: int
    top_k: int
    num_groups: int = 1
    topk_group: int = 1


def router_shape(arch: str, num_experts: int | None = None, top_k: int | None = None) -> RouterShape:
    """Experts, top-k and (for grouped routers) groups; `None` takes the tiny default."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    experts = DEFAULT_EXPERTS if num_experts is None else num_experts
    k = DEFAULT_TOP_K.get(arch, 2) if top_k is None else top_k
    if isinstance(experts, bool) or not isinstance(experts, int) or experts < 2:
        raise RouterShapeError(f"number of experts must be an integer of at least 2, got {experts!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= experts:
        raise RouterShapeError(f"top-k must be an integer from 1 to the number of experts ({experts}), got {k!r}")
    if arch not in ("deepseek_v3", "glm4_moe"):
        return RouterShape(experts, k)
    groups, topk_group = grouping(experts, k)
    return RouterShape(experts, k, groups, topk_group)


def grouping(num_experts: int, top_k: int) -> tuple[int, int]:
    """(n_group, topk_group) for a grouped router: the most groups (up to 4) of at least two experts
    each (a group's score is its two best experts), and half of them kept, or more when top-k
    needs more experts than half the groups hold. The limit then binds, as in DeepSeek-V3 (8 of 4)."""
    groups = next(g for g in (4, 2, 1) if num_experts % g == 0 and num_experts // g >= 2)
    per_group = num_experts // groups
    topk_group = max(groups // 2, -(-top_k // per_group))
    return groups, topk_group


def build_config(arch: str, vocab_size: int, special: dict, router: RouterShape, shape: dict):
    """The transformers config of a tiny `arch`; `shape` overrides fields (mixtral only)."""
    import transformers as tf

    if shape and arch != "mixtral":
        raise ValueError(f"shape overrides are only supported for mixtral, not {arch}")
    common = {**_COMMON, **special, "vocab_size": vocab_size}
    experts, k = router.num_experts, router.top_k
    if arch == "mixtral":
        return tf.MixtralConfig(**{
            **common, "intermediate_size": 256, "num_local_experts": experts, "num_experts_per_tok": k, **shape,
        })  # fmt: skip
    if arch == "qwen2_moe":
        return tf.Qwen2MoeConfig(
            **common, intermediate_size=256, moe_intermediate_size=128, shared_expert_intermediate_size=256,
            num_experts=experts, num_experts_per_tok=k, norm_topk_prob=False, decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(
            **common, head_dim=32, intermediate_size=256, moe_intermediate_size=128, num_experts=experts,
            num_experts_per_tok=k, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        )
    if arch == "olmoe":
        return tf.OlmoeConfig(
            **common, intermediate_size=128, num_experts=experts, num_experts_per_tok=k, norm_topk_prob=False
        )
    return _router_family_config(tf, arch, common, router)


def _router_family_config(tf, arch: str, common: dict, router: RouterShape):
    experts, k = router.num_experts, router.top_k
    grouped = dict(
        n_routed_experts=experts, num_experts_per_tok=k, n_group=router.num_groups, topk_group=router.topk_group,
        n_shared_experts=1, routed_scaling_factor=ROUTED_SCALING_FACTOR, norm_topk_prob=True,
        first_k_dense_replace=1, intermediate_size=256, moe_intermediate_size=64,
    )
    if arch == "deepseek_v3":
        # Multi-head latent attention with a cache row of 256 + 32 = 288, one of the two widths (with
        # DeepSeek's 576) that SGLang's Triton MLA decode kernel takes. SGLang's CPU path builds
        # DeepSeek's rotary embedding only from a YaRN rope_scaling; factor 1 makes YaRN the plain
        # rotary embedding in both libraries.
        rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 1.0, "original_max_position_embeddings":
                common["max_position_embeddings"], "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                "mscale_all_dim": 1.0}  # fmt: skip
        return tf.DeepseekV3Config(
            **common, **grouped, kv_lora_rank=256, q_lora_rank=64, qk_rope_head_dim=32, qk_nope_head_dim=32,
            v_head_dim=32, rope_parameters=rope,
            # Fields of DeepSeek-V3's public config.json that transformers ignores and SGLang reads.
            moe_layer_freq=1, scoring_func="sigmoid", topk_method="noaux_tc",
        )
    if arch == "glm4_moe":
        return tf.Glm4MoeConfig(**common, **grouped, head_dim=32, use_qk_norm=True, attention_bias=True)
    if arch == "llama4":
        return tf.Llama4TextConfig(
            **common, head_dim=32, intermediate_size=64, intermediate_size_mlp=256, num_local_experts=experts,
            num_experts_per_tok=k, interleave_moe_layer_step=1, no_rope_layers=[1, 1, 1, 0],
            attention_chunk_size=common["max_position_embeddings"],
            # As Llama-4-Maverick. With q/k norm SGLang casts q and k to bf16 off CUDA (llama4.py), which
            # breaks a float32 model on CPU.
            use_qk_norm=False,
        )
    if arch == "gpt_oss":
        return tf.GptOssConfig(
            **common, head_dim=32, intermediate_size=64, num_local_experts=experts, num_experts_per_tok=k,
            sliding_window=128, layer_types=["sliding_attention", "full_attention"] * 2,
            rope_parameters={"rope_type": "default", "rope_theta": 150000.0},
        )
    raise AssertionError(arch)
