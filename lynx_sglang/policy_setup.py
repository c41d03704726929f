"""From a `LynxConfig` and a model's MoE shape to policy objects; shared by the launcher (to reject a
bad setting before SGLang starts) and the scheduler (to build the policies it runs)."""

from __future__ import annotations

from dataclasses import replace

from lynx_sglang.config import ConfigError, LynxConfig
from lynx_sglang.model_config import MoeShape
from lynx_sglang.policies import PolicyConfigError, accepted_parameters, get_policy, resolve_policy_class
from lynx_sglang.setting_values import expert_cache_slots


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
    if config.layers is not None and "layers" in config.params:
        # the setting would replace the parameter (policy_params) without a word
        raise ConfigError(f"layers: given twice, as the setting (layers {layer_list(config.layers)}) and as the "
                          f"policy parameter layers={config.params['layers']!r}; give it once, as --lynx-layers")
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
        try:  # the top level is built too (and serves again when a switch ends the schedule)
            validate_for_experts(replace(config, schedule=None), num_experts, top_k, renormalize, model_name)
        except ConfigError as error:
            raise ConfigError(f"the top-level setting beside the schedule: {error}") from None
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
