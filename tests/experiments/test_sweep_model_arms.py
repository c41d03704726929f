"""The sweep's default arms follow the served model's experts and top-k, and the server's own
validation accepts every one of them."""

import pytest

from lynx_sglang.experiments.arms import parse_arms
from lynx_sglang.experiments.model_arms import ServedShape, default_arms, derived_spec, kept_counts, refusal
from lynx_sglang.model_config import MoeShape

# The sweep published in docs/results/ on the embedded model (8 experts, top-2, 4 MoE layers).
EMBEDDED_SWEEP = ";".join([
    "lynx:alpha=0.5,1,2,3", "lynx-v1:threshold=0.3,0.5,0.7", "oea:k0=1", "budget:num_experts_kept=2..4",
    "topn:num_experts_kept=2..4", "static-topk:top_k_used=1", "random:num_experts_kept=4",
    "coverage:mass_fraction=0.6,0.8", "coverage:mass_fraction=0.6:max_dropped_mass=0.5", "lynx+experts=3",
    "anchor:ratio=0.3,0.5,0.7", "anchor:ratio=0.3,0.5:fill_to_k=false",
    "anchor:ratio=[0.2,0.3,0.5,0.3],[0.2,0.3,1.0,0.3]:fill_to_k=false",
])


@pytest.mark.parametrize("num_experts, top_k, expected", [
    (8, 2, [2, 3, 4]), (16, 4, [4, 6, 8]), (128, 8, [8, 36, 64]), (4, 2, [2]), (2, 2, [2]), (3, 1, [1]),
])
def test_kept_counts_run_from_top_k_to_half_the_experts(num_experts, top_k, expected):
    assert kept_counts(num_experts, top_k) == expected


def test_the_embedded_model_keeps_the_published_sweep():
    arms, dropped = default_arms(ServedShape(8, 2, 4))
    assert arms == parse_arms(EMBEDDED_SWEEP) and not dropped


@pytest.mark.parametrize("shape", [(16, 4, 2), (64, 6, 27), (128, 8, 48), (256, 8, 58), (60, 4, 24), (4, 1, 2),
                                   (32, 1, 48), (2, 2, 1)])
def test_every_derived_arm_fits_the_model(shape):
    num_experts, top_k, layers = shape
    arms, dropped = default_arms(ServedShape(num_experts, top_k, layers))
    # None refused; only arms that cannot prune this model are left out (test_experiment_inputs.py)
    assert all(reason.startswith("cannot change this model's routing") for _, reason in dropped), dropped
    for arm in arms:
        for name in ("num_experts_kept", "top_k_used", "k0"):
            if name in arm.params:
                assert 1 <= arm.params[name] <= num_experts
        if arm.policy == "static-topk":
            assert arm.params["top_k_used"] < top_k
    labels = [arm.label for arm in arms]
    assert not any("[" in label for label in labels)  # the per-layer ratios belong to the embedded model only
    if top_k == 1:
        assert not any(label.startswith("static-topk") for label in labels)


def test_a_16_expert_top_4_model_gets_its_own_counts():
    spec = derived_spec(ServedShape(16, 4, 2))
    assert "budget:num_experts_kept=4,6,8" in spec and "topn:num_experts_kept=4,6,8" in spec
    assert "static-topk:top_k_used=1,2" in spec and "lynx+experts=6" in spec and "oea:k0=1,2" in spec


def test_the_refusal_is_the_servers_own_message():
    (arm,) = parse_arms("budget:num_experts_kept=2")
    reason = refusal(arm, ServedShape(16, 4, 2))
    assert "num_experts_kept" in reason and "allowed: 4..16" in reason
    assert refusal(arm, ServedShape(8, 2, 4)) is None
    (budgeted,) = parse_arms("lynx+experts=17")
    assert "1..16" in refusal(budgeted, ServedShape(16, 4, 2))
    # Three MoE layers of a four-layer GLM-4.5 (its layer 0 dense): layer 3 is one of them
    (last_layer,) = parse_arms("lynx:layers=[3]")
    assert refusal(last_layer, ServedShape(16, 4, 3)) is None


def test_the_served_shape_is_read_from_the_stats():
    layers = [{"num_experts": 16, "top_k": 4}] * 3 + [{"num_experts": 8, "top_k": 2}]
    assert ServedShape.from_stats({"layers": layers}) == ServedShape(16, 4, 4)
    assert ServedShape.from_stats({"layers": []}) is None


def test_the_served_shape_of_a_checkpoint_counts_its_moe_layers_only():
    glm = MoeShape(16, 4, num_layers=4, renormalize=True, model_name="glm", moe_layers=(1, 2, 3))
    assert ServedShape.from_checkpoint(glm).describe() == "16 experts, top-4, 3 MoE layers"
    unknown_family = MoeShape(16, 4, num_layers=4, renormalize=True, model_name="x")
    assert ServedShape.from_checkpoint(unknown_family).moe_layers == 4


def test_an_arm_is_checked_against_the_setting_its_server_starts_with():
    """prefer_resident needs the expert cache the experiment's server starts with (--serve-arg): checked
    alone, the arms of the documented offload A/B were refused before the server started."""
    from argparse import Namespace

    from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
    from lynx_sglang.experiments.arms import ArmSpecError
    from lynx_sglang.experiments.model_arms import refusals_before_start, served_setting

    arms = parse_arms("baseline;lynx:alpha=0.5:prefer_resident=true")
    assert "--lynx-expert-cache" in refusal(arms[1], ServedShape(8, 2, 4))
    started = served_setting("baseline", ["--lynx-expert-cache=2", "--lynx-cache-policy", "activation"])
    assert (started.expert_cache, started.cache_policy) == ("2", "activation")
    assert refusal(arms[1], ServedShape(8, 2, 4), started) is None
    args = Namespace(url=None, model_path=None, serve_arg=["--lynx-expert-cache=2"])
    assert refusals_before_start(arms, args, EMBEDDED_MODEL_DIR) == []
    # the server's own flags stay checked: too many slots for the model is the server's refusal
    too_many = Namespace(url=None, model_path=None, serve_arg=["--lynx-expert-cache=9"])
    assert "8 experts per layer" in refusals_before_start(arms, too_many, EMBEDDED_MODEL_DIR)[1][1]
    with pytest.raises(ArmSpecError, match=r"--serve-arg: .*--lynx-expert-cache: empty value"):
        served_setting("baseline", ["--lynx-expert-cache="])
