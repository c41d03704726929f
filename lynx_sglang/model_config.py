"""What a checkpoint's config.json says about its routed experts: how many, top-k, the router's kind,
which layers have them. Read at launch (a folder, or a Hub id's config.json alone) and by the tools;
policy_setup.py turns the shape into policies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lynx_sglang.model_source import local_config_dir, model_name
from lynx_sglang.setting_values import ConfigError


@dataclass(frozen=True)
class MoeShape:
    """What a checkpoint's config.json says about its routed experts."""

    num_experts: int
    top_k: int
    num_layers: int
    renormalize: bool
    model_name: str
    router_kind: str | None = None  # policies/router.py's RouterModel.kind; None: plain softmax
    moe_layers: tuple[int, ...] | None = None  # the decoder layers with routed experts (None: not known)

    @classmethod
    def from_checkpoint(cls, model_dir: Path, revision: str | None = None) -> "MoeShape | None":
        """None when the model has no routed experts (nothing to prune). model_dir: a folder or a Hub id."""
        return cls.from_config(read_model_config(Path(model_dir), revision), Path(model_dir))

    @classmethod
    def from_config(cls, config: dict, model_dir: Path) -> "MoeShape | None":
        """As from_checkpoint, from its config.json already read (model_dir names the model)."""
        config = config.get("text_config", config)  # multimodal wrappers nest the language model
        num_experts = next(
            (config[key] for key in ("num_local_experts", "num_experts", "n_routed_experts") if config.get(key)),
            None,
        )
        top_k = config.get("num_experts_per_tok") or config.get("moe_topk")
        if not num_experts or not top_k:
            return None
        # Mixtral always renormalises; the others say so with norm_topk_prob.
        renormalize = config.get("model_type") == "mixtral" or bool(config.get("norm_topk_prob", False))
        name = config.get("_name_or_path") or model_name(model_dir)
        num_layers = int(config.get("num_hidden_layers", 0))
        return cls(int(num_experts), int(top_k), num_layers, renormalize, str(name), router_kind_of(config),
                   moe_layer_ids(config, num_layers))


def read_model_config(model_dir: Path, revision: str | None = None) -> dict:
    """A checkpoint folder's config.json (a Hub id's: model_source.py), or a ConfigError that says what
    is wrong with the folder."""
    model_dir = local_config_dir(model_dir, revision)
    config_file = model_dir / "config.json"
    if not model_dir.exists():
        raise ConfigError(f"model path {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ConfigError(f"model path {model_dir} is not a directory (expected a Hugging Face checkpoint folder)")
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model path {model_dir} has no config.json; not a Hugging Face checkpoint") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {config_file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_file} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file} is not a JSON object; not a transformers model config")
    return config


# Architectures whose router SGLang builds as biased sigmoid (noaux_tc) whatever config.json says.
_BIASED_SIGMOID_MODEL_TYPES = ("deepseek_v3", "glm4_moe", "kimi_k2", "glm4v_moe", "bailing_moe_v2")


def router_kind_of(config: dict) -> str | None:
    """The router kind a checkpoint's config.json describes (as RouterModel.kind), None for plain softmax.
    What the server routes by is read from SGLang's TopK modules at load; this is for showing defaults."""
    model_type = config.get("model_type", "")
    groups, kept = config.get("n_group") or 1, config.get("topk_group") or 1
    grouped = "grouped-" if groups > 1 and kept < groups else ""
    if model_type in _BIASED_SIGMOID_MODEL_TYPES or config.get("topk_method") == "noaux_tc":
        return f"biased-{grouped}sigmoid"
    if model_type == "llama4_text" or model_type == "llama4":
        return "sigmoid"
    scoring = config.get("scoring_func", "softmax")
    if config.get("topk_method") == "group_limited_greedy" or scoring != "softmax":
        kind = f"{grouped}{scoring}"
        return None if kind == "softmax" else kind
    return None


def moe_layer_ids(config: dict, num_layers: int) -> tuple[int, ...] | None:
    """The layers SGLang (0.5.23) builds with routed experts, by its rule for the family; None for a
    family whose rule is not written here (nothing is checked against it)."""
    model_type = config.get("model_type", "")
    if model_type in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"):
        return tuple(range(num_layers))  # SGLang builds every layer sparse (Qwen's mlp_only_layers unread)
    first_dense = int(config.get("first_k_dense_replace") or 0)
    if model_type == "glm4_moe":
        return tuple(range(first_dense, num_layers))
    if model_type in ("deepseek_v2", "deepseek_v3", "kimi_k2"):
        every = int(config.get("moe_layer_freq") or 1)
        return tuple(layer for layer in range(first_dense, num_layers) if layer % every == 0)
    if model_type in ("llama4_text", "llama4"):
        step = int(config.get("interleave_moe_layer_step") or 0)
        return tuple(range(num_layers)) if step == 0 else tuple(range(step - 1, num_layers, step))
    return None
