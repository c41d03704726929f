"""From a `LynxConfig` and a model's MoE shape to policy objects; shared by the launcher (to reject a
bad setting before SGLang starts) and the scheduler (to build the policies it runs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lynx_sglang.config import ConfigError, LynxConfig, expert_cache_slots
from lynx_sglang.model_source import local_config_dir, model_name
from lynx_sglang.policies import PolicyConfigError, accepted_parameters, get_policy, resolve_policy_class


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
        config = read_model_config(Path(model_dir), revision)
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


def policy_params(config: LynxConfig, model_name: str, router_kind: str | None = None) -> dict:
    """The configured parameters, plus the model's name and the layer's router kind for policies that
    pick per-model defaults (the lowest precedence: a user's value wins)."""
    params = dict(config.params)
    accepted = accepted_parameters(resolve_policy_class(config.policy))
    for name, value in (("model_name", model_name), ("router_kind", router_kind)):
        if name not in params and value is not None and (accepted is None or name in accepted):
            params[name] = value
    if config.layers is not None:
        params["layers"] = list(config.layers)
    return params


def build_policy(config: LynxConfig, num_experts: int, top_k: int, renormalize: bool, model_name: str,
                 router_kind: str | None = None):
    try:
        return get_policy(config.policy, num_experts, top_k, renormalize,
                          **policy_params(config, model_name, router_kind))
    except PolicyConfigError as exc:
        raise ConfigError(str(exc)) from None
    except TypeError as exc:  # a third-party policy whose signature rejects what we pass
        raise ConfigError(f"policy {config.policy!r}: {exc}") from None


def validate_for_model(config: LynxConfig, shape: MoeShape | None) -> None:
    """Raise ConfigError (one line) for any setting the model cannot take."""
    validate_settings(config)
    if shape is None:
        return
    validate_for_experts(config, shape.num_experts, shape.top_k, shape.renormalize, shape.model_name)
    check_policy_layers(config, shape.num_layers, shape.moe_layers)
    if config.expert_cache is not None:
        expert_cache_slots(config.expert_cache, shape.num_experts)


def check_policy_layers(config: LynxConfig, num_layers: int | None, moe_layers: tuple[int, ...] | None) -> None:
    """The layers the policy applies to (`layers`, else its `layers` parameter, as policy_params hands
    them over; each band's), once the policy has checked them as layer ids."""
    per_layer = getattr(resolve_policy_or_error(config.policy), "per_layer_parameters", ())
    for index, (_, band) in enumerate(config.bands()):
        layers = band.layers if band.layers is not None else band.params.get("layers")
        if isinstance(layers, (list, tuple)) and all(type(layer) is int for layer in layers):
            check_layer_ids(tuple(layers), num_layers, moe_layers)  # other values: the policy's own error
        for name in per_layer:
            values = band.params.get(name)
            if num_layers and isinstance(values, (list, tuple)) and len(values) > num_layers:
                where = f"schedule[{index}] (from {band_rows(config, index)}): " if config.schedule else ""
                raise ConfigError(f"{where}policy '{config.policy}': parameter '{name}' has {len(values)} values, one "
                                  f"per layer by layer id, but this model has {num_layers} layers (0..{num_layers - 1}"
                                  f"{', its MoE layers ' + layer_list(moe_layers) if moe_layers else ''})")


def check_layer_ids(layers: tuple[int, ...] | None, num_layers: int | None,
                    moe_layers: tuple[int, ...] | None = None) -> None:
    """`layers` names the model's layers (0..num_layers - 1; None: unknown, nothing to check), and at
    least one with routed experts: a list of dense layers only would prune nothing, silently."""
    if layers is None:
        return
    if not layers:
        raise ConfigError("layers: an empty list names no layer, so nothing would be pruned; leave it out for all")
    if num_layers and max(layers) >= num_layers:
        raise ConfigError(f"layers: {max(layers)} is not a layer of this model (layers 0..{num_layers - 1})")
    if moe_layers and not set(layers) & set(moe_layers):
        raise ConfigError(f"layers: {layer_list(layers)} holds no MoE layer of this model (its MoE layers: "
                          f"{layer_list(moe_layers)}): a dense layer has no routed experts to prune")


def layer_list(layers) -> str:
    """Layer ids as ranges: (0, 1, 2, 5) -> '0-2,5'."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def validate_settings(config: LynxConfig) -> None:
    """What can be checked without a model: the policy exists, and takes the budget (each band's)."""
    if config.schedule:
        if config.policy == "baseline":
            raise ConfigError("schedule: has no effect with policy 'baseline'; name the policy whose settings vary")
        for _, band in config.bands():
            validate_settings(band)
        return
    resolve_policy_or_error(config.policy)
    if config.params.get("prefer_resident") is True and config.expert_cache is None:
        raise ConfigError("prefer_resident: prefers the experts the expert cache holds on the device; start the "
                          "server with --lynx-expert-cache N (without a cache every expert is resident)")
    budget = config.parsed_budget
    if budget is not None and config.policy == "baseline":
        raise ConfigError(
            f"budget: {budget} has no effect with policy 'baseline' (it computes every chosen expert); "
            "use --lynx-policy budget (or any pruning policy) with a budget"
        )


def validate_for_experts(config: LynxConfig, num_experts: int, top_k: int, renormalize: bool,
                         model_name: str) -> None:  # fmt: skip
    """The budget's range and the policy's parameters against one MoE layer shape (each band's)."""
    if config.schedule:
        for index, (_, band) in enumerate(config.bands()):
            try:
                validate_for_experts(band, num_experts, top_k, renormalize, model_name)
            except ConfigError as error:  # say which band: each holds its own params and budget
                raise ConfigError(f"schedule[{index}] (from {band_rows(config, index)}): {error}") from None
        return
    budget = config.parsed_budget
    if budget is not None:
        budget.check_range("budget", num_experts)
    build_policy(config, num_experts, top_k, renormalize, model_name)


def band_rows(config: LynxConfig, index: int) -> str:
    start = config.schedule[index]["from_rows"]
    return f"{start} row{'s' if start > 1 else ''} up"


def resolve_policy_or_error(name: str):
    try:
        return resolve_policy_class(name)
    except PolicyConfigError as exc:
        raise ConfigError(str(exc)) from None
