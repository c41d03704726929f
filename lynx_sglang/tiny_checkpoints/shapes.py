"""Named shapes of public models, `--shape` overrides and the memory arithmetic of `bench serve`'s
large models. Named shapes become config-only folders (`write_config_only`): SGLang's
`--load-format dummy` makes their random weights on the device from config.json alone, so a 93 GB model
is served without a checkpoint on disk."""

from __future__ import annotations

import math
from pathlib import Path

# The public config.json of mistralai/Mixtral-8x7B-v0.1, Qwen/Qwen3-30B-A3B, zai-org/GLM-4.5-Air (its
# biased sigmoid router with a shared expert; the multi-token-prediction layer left out) and the text model of
# meta-llama/Llama-4-Scout-17B-16E (sigmoid top-1 with a shared expert; SGLang's CPU path cannot serve it) on
# the Hugging Face hub.
NAMED_SHAPES: dict[str, dict] = {
    "mixtral-8x7b": {
        "model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
        "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
        "tie_word_embeddings": False, "dtype": "bfloat16",
    },
    "qwen3-30b-a3b": {
        "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
        "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
        "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
        "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
        "rope_theta": 1e6, "attention_bias": False, "tie_word_embeddings": False, "dtype": "bfloat16",
    },
    "glm-4.5-air": {
        "model_type": "glm4_moe", "architectures": ["Glm4MoeForCausalLM"],
        "hidden_size": 4096, "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 46,
        "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128, "partial_rotary_factor": 0.5,
        "n_routed_experts": 128, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 1, "topk_group": 1,
        "first_k_dense_replace": 1, "routed_scaling_factor": 1.0, "norm_topk_prob": True, "use_qk_norm": False,
        "attention_bias": True, "num_nextn_predict_layers": 0, "vocab_size": 151552,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 1e6, "tie_word_embeddings": False,
        "dtype": "bfloat16",
    },
    "llama-4-scout": {
        "model_type": "llama4_text", "architectures": ["Llama4ForCausalLM"],
        "hidden_size": 5120, "intermediate_size": 8192, "intermediate_size_mlp": 16384, "num_hidden_layers": 48,
        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 16,
        "num_experts_per_tok": 1, "interleave_moe_layer_step": 1, "use_qk_norm": True, "attention_chunk_size": 8192,
        "vocab_size": 202048, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 5e5,
        "tie_word_embeddings": False, "dtype": "bfloat16",
    },
}  # fmt: skip
# Fields a `--shape` override may not change: they say what the model is, not how large.
FIXED_FIELDS = ("model_type", "architectures", "mlp_only_layers", "dtype")


class ShapeError(ValueError):
    """A bad `--shape`; the message is one line naming the field, the value and what is allowed."""


def parse_shape(text: str, default_fields: dict) -> tuple[str | None, dict]:
    """`[NAME][,KEY=VALUE...]` -> (name or None for the default shape, overrides typed as the shape's
    own fields). `default_fields` are the fields an unnamed shape may override."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    name = None
    if items and "=" not in items[0]:
        name = items.pop(0)
        if name not in NAMED_SHAPES:
            raise ShapeError(f"--shape: unknown shape {name!r}; known shapes: {', '.join(NAMED_SHAPES)} "
                             "(or KEY=VALUE overrides of the default shape)")
    fields = NAMED_SHAPES[name] if name else default_fields
    overrides = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ShapeError(f"--shape: {item!r} is not KEY=VALUE (a shape's name may only come first)")
        allowed = [k for k in fields if k not in FIXED_FIELDS]
        if key not in allowed:
            raise ShapeError(f"--shape: unknown field {key!r} for {name or 'the default shape'}; "
                             f"known fields: {', '.join(allowed)}")
        overrides[key] = _typed_value(key, value, fields[key])
    check_consistent({**fields, **overrides}, name)
    return name, overrides


def check_consistent(fields: dict, name: str | None) -> None:
    """What no model of the architecture could be: refused here, not by a server minutes later."""
    shape = name or "the default shape"
    experts = fields.get("num_local_experts") or fields.get("num_experts") or fields.get("n_routed_experts")
    top_k = fields.get("num_experts_per_tok")
    if experts and top_k and top_k > experts:
        raise ShapeError(f"--shape: num_experts_per_tok={top_k} is more than the {experts} experts of {shape}")
    heads, kv_heads = fields.get("num_attention_heads"), fields.get("num_key_value_heads")
    if heads and kv_heads and heads % kv_heads:
        raise ShapeError(f"--shape: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    groups, top_groups = fields.get("n_group"), fields.get("topk_group")
    if experts and groups and experts % groups:
        raise ShapeError(f"--shape: {experts} experts do not split into n_group={groups} equal groups")
    if groups and top_groups and top_groups > groups:
        raise ShapeError(f"--shape: topk_group={top_groups} is more than n_group={groups}")
    if experts and top_k and groups and top_groups and top_groups * (experts // groups) < top_k:
        raise ShapeError(f"--shape: num_experts_per_tok={top_k} is more than the {top_groups * (experts // groups)} "
                         f"experts its topk_group={top_groups} of n_group={groups} groups leave a token")


def _typed_value(key: str, value: str, like):
    if isinstance(like, bool):
        if value.lower() not in ("true", "false"):
            raise ShapeError(f"--shape: {key}={value!r} is not a boolean; allowed: true or false")
        return value.lower() == "true"
    try:
        typed = type(like)(value)
    except ValueError:
        kind = "an integer" if isinstance(like, int) else "a number"
        raise ShapeError(f"--shape: {key}={value!r} is not {kind}") from None
    if not (typed > 0 and math.isfinite(typed)):
        raise ShapeError(f"--shape: {key}={value!r} must be positive")
    return typed


def weight_bytes(fields: dict, bytes_per_param: int = 2) -> tuple[int, int]:
    """(bytes outside the decoder layers, bytes of one MoE decoder layer) of a Mixtral / Qwen-MoE / GLM-4.5
    shape: embeddings, attention, router and routed (plus any shared) experts; norms are noise, and a
    dense first layer counts as a MoE one (an over-estimate: the fit errs on the safe side)."""
    hidden, heads, kv = fields["hidden_size"], fields["num_attention_heads"], fields["num_key_value_heads"]
    head_dim = fields.get("head_dim") or hidden // heads
    experts = fields.get("num_local_experts") or fields.get("num_experts") or fields["n_routed_experts"]
    expert_inter = fields.get("moe_intermediate_size") or fields["intermediate_size"]
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
    shared_inter = fields.get("shared_expert_intermediate_size", 0) + fields.get("n_shared_experts", 0) * expert_inter
    if fields["model_type"] == "llama4_text":  # one shared expert of the routed experts' size
        shared_inter = expert_inter
    shared = 3 * hidden * shared_inter
    layer = attention + hidden * experts + experts * 3 * hidden * expert_inter + shared
    outside = fields["vocab_size"] * hidden * (1 if fields.get("tie_word_embeddings") else 2)
    return outside * bytes_per_param, layer * bytes_per_param


def kv_bytes_per_token(fields: dict, bytes_per_value: int = 2) -> int:
    """KV cache bytes of one token in one decoder layer (keys and values of every KV head)."""
    head_dim = fields.get("head_dim") or fields["hidden_size"] // fields["num_attention_heads"]
    return 2 * fields["num_key_value_heads"] * head_dim * bytes_per_value


def fit_layers(fields: dict, device_bytes: float, static_fraction: float = 0.85, kv_tokens: int = 0) -> int:
    """The most decoder layers (at most the shape's own) whose weights and a KV cache of `kv_tokens`
    tokens take at most `static_fraction` of the device memory (SGLang's --mem-fraction-static: the
    rest is for activations and CUDA graphs)."""
    outside, per_layer = weight_bytes(fields)
    per_layer_with_kv = per_layer + kv_tokens * kv_bytes_per_token(fields)
    fitting = math.floor((static_fraction * device_bytes - outside) / per_layer_with_kv)
    if fitting < 1:
        raise ShapeError(f"--shape: not even one layer of this shape fits in {static_fraction:.0%} of "
                         f"{device_bytes / 2**30:.1f} GiB ({per_layer / 1e9:.2f} GB per layer, "
                         f"{outside / 1e9:.2f} GB of embeddings, a KV cache of {kv_tokens} tokens)")
    return min(fields["num_hidden_layers"], fitting)


def write_config_only(fields: dict, out_dir: str | Path) -> Path:
    """config.json of this shape plus the embedded model's tokenizer: a model folder for
    `--load-format dummy`. The tokenizer's special ids replace the model's own, so the folder is
    consistent; its vocabulary (100 tokens) is smaller than the shape's, see `lynx-sglang bench serve`."""
    import transformers as tf

    from lynx_sglang.embedded.tokenizer import save_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(out)
    values = {k: v for k, v in fields.items() if k not in ("model_type", "dtype")}
    config = tf.AutoConfig.for_model(fields["model_type"], **values, bos_token_id=tokenizer.bos_token_id,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config.dtype = fields.get("dtype", "bfloat16")
    config.save_pretrained(out)
    return out
