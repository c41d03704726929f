"""Per-family defaults: the router kind is read from a checkpoint's config.json for `lynx-sglang
policies`, and from each layer's TopK configuration by the server, which builds the layer's policy
with it."""

import json

import pytest
import torch

from lynx_sglang import cli
from lynx_sglang.config import ConfigError, LynxConfig
from lynx_sglang.model_config import MoeShape, moe_layer_ids, router_kind_of
from lynx_sglang.policy_catalog import main as policies_main
from lynx_sglang.policy_setup import validate_for_model
from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

topk = pytest.importorskip("sglang.srt.layers.moe.topk")


@pytest.mark.parametrize("config, kind", [
    ({"model_type": "mixtral"}, None),
    ({"model_type": "qwen3_moe"}, None),
    ({"model_type": "deepseek_v3", "n_group": 8, "topk_group": 4}, "biased-grouped-sigmoid"),
    ({"model_type": "glm4_moe", "n_group": 1, "topk_group": 1}, "biased-sigmoid"),
    ({"model_type": "deepseek_v2", "topk_method": "group_limited_greedy", "n_group": 8, "topk_group": 3},
     "grouped-softmax"),
    ({"model_type": "deepseek_v2", "topk_method": "greedy"}, None),
    ({"model_type": "llama4_text"}, "sigmoid"),
])  # fmt: skip
def test_router_kind_from_config_json(config, kind):
    assert router_kind_of(config) == kind


def test_the_policies_table_shows_a_glm_models_router_and_its_defaults(tmp_path, capsys):
    model = build_tiny_checkpoint("glm4_moe", tmp_path / "glm", seed=0, num_experts=16, top_k=4)
    assert policies_main(["--model-path", str(model), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["router_kind"] == "biased-grouped-sigmoid"
    lynx = next(entry for entry in table["policies"] if entry["name"] == "lynx")
    assert {p["name"]: p["default"] for p in lynx["parameters"]}["alpha"] == "2.0 (for this model)"
    assert "router_kind" not in {p["name"] for entry in table["policies"] for p in entry["parameters"]}


@pytest.mark.parametrize("arch", ["llama4", "mixtral"])
def test_the_policies_table_of_a_top1_model_marks_what_it_cannot_take(tmp_path, capsys, arch):
    """Llama-4 routes each token to one expert: static-topk (k' < k) has nothing to drop. The table
    lists it as not for this model instead of ending in a traceback, and shows every other policy."""
    model = build_tiny_checkpoint(arch, tmp_path / arch, seed=0, num_experts=12, top_k=1)
    assert policies_main(["--model-path", str(model), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    unavailable = {entry["name"]: entry["unavailable"] for entry in table["policies"] if entry["unavailable"]}
    assert table["top_k"] == 1 and list(unavailable) == ["static-topk"], unavailable
    assert "top_k >= 2" in unavailable["static-topk"]
    budget = next(entry for entry in table["policies"] if entry["name"] == "budget")
    assert {p["name"]: p["allowed"] for p in budget["parameters"]}["num_experts_kept"] == "1..12"
    assert policies_main(["--model-path", str(model)]) == 0
    assert "not for this model: policy 'static-topk': needs a model with top_k >= 2" in capsys.readouterr().out


def test_the_server_builds_each_layers_policy_with_its_router_kind():
    from test_runtime_routing import DECODE, E, K, T, make_runtime, route, routing

    runtime = make_runtime("lynx")
    logits, output = routing()
    sigmoid = topk.TopKConfig(top_k=K, scoring_func="sigmoid", correction_bias=torch.zeros(E))
    runtime.begin_step(DECODE)
    route(runtime, logits, output, 0)
    route(runtime, logits, output, 1, config=sigmoid)
    runtime.end_step(DECODE, T)
    alphas = {key[3]: policy.alpha for key, policy in runtime.settings.policies.items()}
    assert alphas == {None: 0.7, "biased-sigmoid": 2.0}  # 8 experts top-2 softmax: Mixtral's (0.7, 1)


@pytest.mark.parametrize("folder, message", [
    ("missing", "does not exist"), ("empty", "has no config.json; not a Hugging Face checkpoint"),
    ("broken", "config.json is not valid JSON"), ("list", "config.json is not a JSON object"),
])  # fmt: skip
def test_a_folder_that_is_no_checkpoint_gets_one_line_not_a_traceback(tmp_path, capsys, folder, message):
    for name, text in (("empty", None), ("broken", "{nope"), ("list", "[1, 2]")):
        (tmp_path / name).mkdir()
        if text is not None:
            (tmp_path / name / "config.json").write_text(text)
    with pytest.raises(SystemExit) as stopped:
        policies_main(["--model-path", str(tmp_path / folder)])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    from lynx_sglang.experiments.sweep import main as sweep_main

    assert sweep_main(["--model-path", str(tmp_path / folder), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, moe_layers", [
    ({"model_type": "mixtral"}, (0, 1, 2, 3, 4, 5)),
    ({"model_type": "qwen3_moe", "mlp_only_layers": [1]}, (0, 1, 2, 3, 4, 5)),  # SGLang reads no mlp_only_layers
    ({"model_type": "deepseek_v3", "first_k_dense_replace": 3}, (3, 4, 5)),
    ({"model_type": "deepseek_v2", "first_k_dense_replace": 1, "moe_layer_freq": 2}, (2, 4)),
    ({"model_type": "glm4_moe", "first_k_dense_replace": 1}, (1, 2, 3, 4, 5)),
    ({"model_type": "llama4_text", "interleave_moe_layer_step": 2}, (1, 3, 5)),
    ({"model_type": "llama4_text", "interleave_moe_layer_step": 1}, (0, 1, 2, 3, 4, 5)),
    ({"model_type": "some_new_moe"}, None),  # no rule written here: nothing is checked
])  # fmt: skip
def test_moe_layers_follow_sglangs_rule_per_family(config, moe_layers):
    assert moe_layer_ids(config, 6) == moe_layers


def test_a_layer_list_of_dense_layers_only_is_refused_before_the_server_starts(tmp_path, capsys):
    """GLM-4.5's (and DeepSeek-V3's) first layers are dense: `--lynx-layers 0` would prune nothing."""
    model = build_tiny_checkpoint("glm4_moe", tmp_path / "glm", seed=0, num_experts=8, top_k=2)
    shape = MoeShape.from_checkpoint(model)
    assert shape.moe_layers == (1, 2, 3)
    with pytest.raises(ConfigError, match=r"^layers: 0 holds no MoE layer of this model \(its MoE layers: 1-3\)"):
        validate_for_model(LynxConfig(policy="lynx", layers=(0,)), shape)
    validate_for_model(LynxConfig(policy="lynx", layers=(0, 1)), shape)  # a range over dense ones too is fine
    # The policy's own `layers` parameter (a sweep's `lynx:layers=[0]`) is held to the same rules
    with pytest.raises(ConfigError, match=r"^layers: 0 holds no MoE layer"):
        validate_for_model(LynxConfig(policy="lynx", params={"layers": [0]}), shape)
    with pytest.raises(ConfigError, match=r"^layers: 7 is not a layer of this model \(layers 0..3\)"):
        validate_for_model(LynxConfig(policy="lynx", params={"layers": [1, 7]}), shape)
    with pytest.raises(ConfigError, match=r"^layers: an empty list names no layer"):
        validate_for_model(LynxConfig(policy="lynx", params={"layers": []}), shape)
    with pytest.raises(ConfigError, match=r"parameter 'layers'='1-2' must be a list of layer ids such as \[1,2,3\]"):
        validate_for_model(LynxConfig(policy="lynx", params={"layers": "1-2"}), shape)
    capsys.readouterr()
    assert cli.main(["serve", "--model-path", str(model), "--lynx-policy", "lynx", "--lynx-layers", "0"]) == 2
    assert capsys.readouterr().err == ("lynx-sglang serve: error: layers: 0 holds no MoE layer of this model (its MoE "
                                       "layers: 1-3): a dense layer has no routed experts to prune\n")


def test_a_per_layer_list_longer_than_the_model_is_refused():
    """anchor's per-layer lists are indexed by layer id: a fifth value on a 4-layer model is one the
    user meant for a layer that does not exist (a shorter list repeats its last value, as documented)."""
    shape = MoeShape(8, 2, 4, True, "tiny", moe_layers=(1, 2, 3))
    with pytest.raises(ConfigError, match=r"^policy 'anchor': parameter 'layer_caps' has 5 values, one per layer by "
                                          r"layer id, but this model has 4 layers \(0..3, its MoE layers 1-3\)"):
        validate_for_model(LynxConfig(policy="anchor", params={"layer_caps": [1, 2, 3, 4, 5]}), shape)
    schedule = [{"from_rows": 1}, {"from_rows": 8, "params": {"ratio": [0.5] * 6}}]
    with pytest.raises(ConfigError, match=r"^schedule\[1\] \(from 8 rows up\): policy 'anchor': parameter 'ratio'"):
        validate_for_model(LynxConfig(policy="anchor", schedule=schedule), shape)
    validate_for_model(LynxConfig(policy="anchor", params={"layer_caps": [0, 2, 3, 4], "ratio": [0.5, 0.3]}), shape)
