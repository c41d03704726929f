"""The default arms of `lynx-sglang sweep`, derived from the served model's MoE shape.

Every shipped policy at several settings, with the settings that count experts (kept experts, the
budget, a token's own top-k', OEA's floor) placed between the model's top-k and half its experts, so a
16-expert top-4 model gets `topn:num_experts_kept=4,6,8` where the embedded 8-expert top-2 model gets
`2,3,4`. Each derived arm is checked with the server's own validation (policy_setup.validate_for_model)
and dropped if the model cannot take it, so the default sweep never proposes an arm the server refuses;
an arm that provably cannot change the model's routing (cannot_prune) is dropped too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from lynx_sglang.config import LIVE_SETTINGS, ConfigError, LynxConfig, build_config, parse_setting
from lynx_sglang.model_config import MoeShape
from lynx_sglang.policy_setup import validate_for_model

from .arms import Arm, ArmSpecError, parse_arms
from .client import AdminClient

# Per-layer anchor ratios calibrated on the embedded model (docs/results/calibration): they belong to
# its four MoE layers and are proposed only for a model of that shape.
EMBEDDED_SHAPE = (8, 2, 4)  # experts, top-k, MoE layers
EMBEDDED_ONLY = "anchor:ratio=[0.2,0.3,0.5,0.3],[0.2,0.3,1.0,0.3]:fill_to_k=false"


@dataclass(frozen=True)
class ServedShape:
    """What the sweep needs to know of the model: its routed experts, top-k and MoE layer count."""

    num_experts: int
    top_k: int
    moe_layers: int
    renormalize: bool = True
    model_name: str = ""

    @classmethod
    def from_stats(cls, stats: dict) -> "ServedShape | None":
        """From GET /lynx/stats: the most common (experts, top-k) of the listed MoE layers."""
        layers = stats.get("layers") or []
        if not layers:
            return None
        shapes = [(layer["num_experts"], layer["top_k"]) for layer in layers]
        num_experts, top_k = max(set(shapes), key=shapes.count)
        return cls(int(num_experts), int(top_k), len(layers))

    @classmethod
    def from_checkpoint(cls, shape: MoeShape | None) -> "ServedShape | None":
        if shape is None:
            return None
        moe_layers = shape.num_layers if shape.moe_layers is None else len(shape.moe_layers)
        return cls(shape.num_experts, shape.top_k, moe_layers, shape.renormalize, shape.model_name)

    def describe(self) -> str:
        return f"{self.num_experts} experts, top-{self.top_k}, {self.moe_layers} MoE layers"


def kept_counts(num_experts: int, top_k: int) -> list[int]:
    """Three expert counts from top-k (the least that keeps every token's top-k possible) to half the
    experts, evenly spaced and distinct: 8 experts top-2 -> 2, 3, 4; 16 top-4 -> 4, 6, 8."""
    high = max(top_k, num_experts // 2)
    values = [round(top_k + (high - top_k) * step / 2) for step in range(3)]
    return sorted(set(values))


def _values(values) -> str:
    return ",".join(str(v) for v in values)


def derived_spec(shape: ServedShape) -> str:
    """The sweep's default arms for this model, in `--policies` text form (before validation)."""
    num_experts, top_k = shape.num_experts, shape.top_k
    kept = kept_counts(num_experts, top_k)
    own_top = sorted({value for value in (1, top_k // 2) if 1 <= value < top_k})  # static-topk's k' < k
    floors = sorted({value for value in (1, top_k // 2) if value >= 1})  # OEA's k0 in 1..k
    groups = [
        "lynx:alpha=0.5,1,2,3", "lynx-v1:threshold=0.3,0.5,0.7", f"oea:k0={_values(floors)}",
        f"budget:num_experts_kept={_values(kept)}", f"topn:num_experts_kept={_values(kept)}",
        f"static-topk:top_k_used={_values(own_top)}" if own_top else "",
        f"random:num_experts_kept={max(top_k, num_experts // 2)}",
        "coverage:mass_fraction=0.6,0.8", "coverage:mass_fraction=0.6:max_dropped_mass=0.5",
        f"lynx+experts={kept[len(kept) // 2]}",
        "anchor:ratio=0.3,0.5,0.7", "anchor:ratio=0.3,0.5:fill_to_k=false",
    ]
    if (num_experts, top_k, shape.moe_layers) == EMBEDDED_SHAPE:
        groups.append(EMBEDDED_ONLY)
    return ";".join(group for group in groups if group)


def refusal(arm: Arm, shape: ServedShape, started: LynxConfig = LynxConfig()) -> str | None:
    """Why the server would refuse `arm` on this model (its own validation), or None. started: the
    setting the server starts with (served_setting), whose fixed settings the arm keeps."""
    try:
        config = arm_setting(arm, started)
        # num_layers 0: the decoder's layer count is not known here (moe_layers counts MoE layers only),
        # so layer ids are left to the server's own check
        checkpoint_shape = MoeShape(shape.num_experts, shape.top_k, 0, shape.renormalize, shape.model_name)
        validate_for_model(config, checkpoint_shape)
    except (ConfigError, ValueError) as error:
        return str(error)
    return None


def arm_setting(arm: Arm, started: LynxConfig = LynxConfig()) -> LynxConfig:
    """The setting the server would take for `arm`, switched to it from `started` as POST /lynx/policy
    does: a config file's live settings whole (what it leaves out takes the default), or the policy, its
    parameters and budget; the settings fixed at start (the expert cache, the kernel) stay."""
    if arm.config is not None:
        given = {key: parse_setting(key, value, key) for key, value in arm.config.items()}
        live = {name: given.get(name, getattr(LynxConfig(), name)) for name in LIVE_SETTINGS}
        return replace(started, **{**given, **live})
    return replace(started, policy=arm.policy, params=dict(arm.params), budget=arm.budget, schedule=None)


def served_setting(first_policy: str, serve_args, environ=os.environ) -> LynxConfig:
    """The setting `lynx-sglang serve --lynx-policy first_policy SERVE_ARGS` starts with (its flags, the
    LYNX_* variables and a --lynx-config file, as serve merges them), as an experiment starts its server."""
    from lynx_sglang.launch_checks import LaunchError
    from lynx_sglang.serve import FLAG_NAMES, lynx_settings, parse_serve_args

    try:
        namespace, _ = parse_serve_args(["--lynx-policy", first_policy, *serve_args])
        return build_config(lynx_settings(namespace), environ, flag_names=FLAG_NAMES)
    except (LaunchError, ConfigError) as error:
        raise ArmSpecError(f"--serve-arg: {error}") from None


def refusals_before_start(arms: list[Arm], args, embedded_model: Path) -> list[tuple[Arm, str]]:
    """[(arm, why)] for each arm the model a command starts would refuse, read off its config.json before
    the server starts (a large model loads for minutes); [] with --url, where the running server decides."""
    if args.url:
        return []
    shape = served_shape(None, None, args.model_path, embedded_model)
    if shape is None or not arms:
        return []
    started = served_setting(arms[0].policy, args.serve_arg)
    return [(arm, why) for arm in arms if (why := refusal(arm, shape, started))]


def check_not_all_refused(refused: dict, others: int, what: str) -> None:
    """End a run before its server starts where the model refuses all `others` arms it would compare."""
    if refused and len(refused) == others:
        reasons = "; ".join(f"{arm.label}: {why}" for arm, why in refused.items())
        raise ArmSpecError(f"the model refuses {what} ({reasons})")


def cannot_prune(arm: Arm, shape: ServedShape) -> str | None:
    """Why `arm` can never change this model's routing, whatever the batch (time spent measuring it
    is lost), or None where it may. Only what follows from E and k alone: OEA's floor k0 at k keeps
    every token's own top-k; lynx-v1 on a top-1 model finds every voter confident (confidence 1 above
    a threshold below 1) and keeps each one's own expert; a count of kept experts at E keeps them all."""
    params = arm.params
    if arm.policy == "oea" and isinstance(params.get("k0"), int) and params["k0"] >= shape.top_k:
        return f"k0={params['k0']} keeps every token's own top-{shape.top_k}"
    if arm.policy == "lynx-v1" and shape.top_k == 1 and params.get("threshold", 0.5) < 1:
        return "on a top-1 model every token is confident and votes for its own expert"
    kept = params.get("num_experts_kept")
    if arm.policy in ("topn", "budget", "random") and isinstance(kept, int) and kept >= shape.num_experts:
        return f"num_experts_kept={kept} keeps all {shape.num_experts} experts"
    return None


def usable_arms(spec: str, shape: ServedShape) -> tuple[list[Arm], list[tuple[Arm, str]]]:
    """(the arms of `spec` the model takes and that can prune, [(arm, why not)] for the others)."""
    kept, dropped = [], []
    for arm in parse_arms(spec):
        reason = refusal(arm, shape)
        useless = None if reason else cannot_prune(arm, shape)
        if reason is None and useless is None:
            kept.append(arm)
        else:
            dropped.append((arm, reason or f"cannot change this model's routing: {useless}"))
    return kept, dropped


def default_arms(shape: ServedShape) -> tuple[list[Arm], list[tuple[Arm, str]]]:
    """(the arms the model takes, [(arm, why not)] for derived arms it would refuse or that cannot prune)."""
    return usable_arms(derived_spec(shape), shape)


def calibration_candidates(shape: ServedShape) -> tuple[list[Arm], list[tuple[Arm, str]]]:
    """`lynx-sglang calibrate`'s default candidates: the policies that did best in the sweeps, each at
    settings from loose to tight, so every band finds one within the loss bound (fewer arms than the
    sweep's, to keep a calibration within minutes); and [(arm, why not)] as default_arms gives them."""
    floors = sorted({value for value in (1, shape.top_k // 2) if value >= 1})
    spec = ";".join([
        "anchor:ratio=0.2,0.3,0.4,0.5,0.7:fill_to_k=false", "lynx:alpha=0.5,1,2", f"oea:k0={_values(floors)}",
        "coverage:mass_fraction=0.6,0.8", f"topn:num_experts_kept={_values(kept_counts(shape.num_experts, shape.top_k))}",
    ])
    return usable_arms(spec, shape)


def served_shape(url: str | None, admin_token: str | None, model_path: str | None,
                 embedded_model: Path, api_key: str | None = None) -> ServedShape | None:
    """The shape of the model an experiment serves: the running server's /lynx/stats (with a URL) or
    the checkpoint's config.json (the embedded model when no path is given)."""
    if url:
        return ServedShape.from_stats(AdminClient(url, admin_token, api_key).stats())
    return ServedShape.from_checkpoint(MoeShape.from_checkpoint(Path(model_path) if model_path else embedded_model))
