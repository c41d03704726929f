"""`python -m lynx_sglang.tiny_checkpoints`: every architecture builds a checkpoint that transformers
loads with the asked number of experts and top-k, and with its family's own router parameters; bad
experts / top-k values are refused before anything is written."""

import json

import pytest
import torch

from lynx_sglang.tiny_checkpoints import (
    ARCHITECTURES,
    ROUTER_ARCHITECTURES,
    RouterShapeError,
    build_tiny_checkpoint,
    router_shape,
)
from lynx_sglang.tiny_checkpoints.__main__ import main
from lynx_sglang.tiny_checkpoints.configs import ROUTED_SCALING_FACTOR, grouping


def load(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def moe_blocks(model):
    """(layer index, MoE block) for every decoder layer whose MLP routes to experts."""
    blocks = []
    for index, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None)
        if any(hasattr(mlp, name) for name in ("gate", "router")) and hasattr(mlp, "experts"):
            blocks.append((index, mlp))
    return blocks


def experts_and_top_k(config) -> tuple[int, int]:
    experts = next(getattr(config, name) for name in ("num_local_experts", "n_routed_experts", "num_experts")
                   if getattr(config, name, None))  # fmt: skip
    return experts, config.num_experts_per_tok


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_loads_with_the_asked_experts_and_top_k(arch, tmp_path):
    experts, top_k = (12, 1) if arch == "llama4" else (12, 3)
    model = load(build_tiny_checkpoint(arch, tmp_path, seed=2, num_experts=experts, top_k=top_k))
    assert experts_and_top_k(model.config) == (experts, top_k)
    blocks = moe_blocks(model)
    assert blocks, f"{arch}: no MoE layer"
    for _, block in blocks:
        router = getattr(block, "gate", None) if hasattr(block, "gate") else block.router
        assert router.weight.shape == (experts, model.config.hidden_size)
        assert router.weight.std() > 0.05, "router weights are the large random ones that make routing decisive"
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7, 8]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["deepseek_v3", "glm4_moe"])
def test_grouped_sigmoid_routers_carry_bias_groups_scaling_shared_experts_and_a_dense_first_layer(arch, tmp_path):
    model = load(build_tiny_checkpoint(arch, tmp_path, num_experts=16, top_k=4))
    config = model.config
    assert (config.n_group, config.topk_group) == (4, 2)
    assert config.routed_scaling_factor == ROUTED_SCALING_FACTOR and config.norm_topk_prob
    assert config.n_shared_experts == 1 and config.first_k_dense_replace == 1
    assert [index for index, _ in moe_blocks(model)] == [1, 2, 3], "layer 0 is dense"
    for _, block in moe_blocks(model):
        assert block.gate.e_score_correction_bias.abs().min() > 0, "every expert has a non-zero bias"
        assert hasattr(block, "shared_experts")
    # The bias changes which experts are chosen (it would be invisible otherwise), not their weights.
    gate = moe_blocks(model)[0][1].gate
    hidden = torch.randn(256, config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, weights, ids = gate(hidden)
        bias = gate.e_score_correction_bias.clone()
        gate.e_score_correction_bias.zero_()
        _, _, unbiased_ids = gate(hidden)
        gate.e_score_correction_bias.copy_(bias)
    changed = (ids.sort(-1).values != unbiased_ids.sort(-1).values).any(-1).float().mean()
    assert 0.05 < changed < 0.95, f"bias changed the choice on {changed:.0%} of rows"
    torch.testing.assert_close(weights.sum(-1), torch.full((256,), ROUTED_SCALING_FACTOR))


def test_the_correction_bias_is_stored_in_the_safetensors_as_float32(tmp_path):
    from safetensors import safe_open

    build_tiny_checkpoint("glm4_moe", tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
    assert bias.dtype == torch.float32 and bias.shape == (8,) and bias.abs().min() > 0


def test_llama4_routes_top_1_by_sigmoid_beside_a_shared_expert(tmp_path):
    model = load(build_tiny_checkpoint("llama4", tmp_path))
    assert model.config.num_experts_per_tok == 1 and model.config.model_type == "llama4_text"
    block = moe_blocks(model)[0][1]
    assert hasattr(block, "shared_expert")
    hidden = torch.randn(32, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores, logits = block.router(hidden)
    chosen = torch.isfinite(logits) & (scores > 0)
    assert (chosen.sum(-1) == 1).all()
    torch.testing.assert_close(scores.max(-1).values, torch.sigmoid(logits.max(-1).values))


def test_gpt_oss_has_a_router_bias_and_unquantised_experts(tmp_path):
    model = load(build_tiny_checkpoint("gpt_oss", tmp_path))
    assert getattr(model.config, "quantization_config", None) is None
    block = moe_blocks(model)[0][1]
    assert block.router.bias.abs().min() > 0
    assert block.experts.gate_up_proj.dtype == torch.float32


@pytest.mark.parametrize(
    ("experts", "top_k", "expected"),
    [(8, 2, (4, 2)), (16, 4, (4, 2)), (16, 8, (4, 2)), (16, 12, (4, 3)), (6, 3, (2, 1)), (6, 4, (2, 2)),
     (3, 2, (1, 1)), (2, 2, (1, 1))],
)  # fmt: skip
def test_grouping_keeps_enough_groups_for_top_k(experts, top_k, expected):
    groups, topk_group = grouping(experts, top_k)
    assert (groups, topk_group) == expected
    assert topk_group * (experts // groups) >= top_k and experts // groups >= 2


def test_the_cli_writes_the_asked_router_shape_and_takes_the_aliases(tmp_path, capsys):
    assert main(["glm4_moe", str(tmp_path / "a"), "--num-experts", "16", "--top-k", "4", "--seed", "3"]) == 0
    assert main(["glm4_moe", str(tmp_path / "b"), "--experts", "16", "--topk", "4", "--seed", "3"]) == 0
    configs = [json.loads((tmp_path / name / "config.json").read_text()) for name in "ab"]
    assert configs[0] == configs[1]
    assert (configs[0]["n_routed_experts"], configs[0]["num_experts_per_tok"]) == (16, 4)
    assert configs[0]["architectures"] == ["Glm4MoeForCausalLM"]
    assert str(tmp_path / "a") in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--num-experts", "1"], "number of experts must be an integer of at least 2, got 1"),
     (["--top-k", "0"], "top-k must be an integer from 1 to the number of experts (8), got 0"),
     (["--experts", "4", "--topk", "5"], "top-k must be an integer from 1 to the number of experts (4), got 5"),
     (["--top-k", "two"], "argument --top-k/--topk: invalid int value: 'two'")],
)  # fmt: skip
def test_the_cli_refuses_bad_experts_and_top_k_before_writing(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["mixtral", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_an_unknown_architecture(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["deepseek_v4", str(tmp_path)])
    assert "invalid choice: 'deepseek_v4'" in capsys.readouterr().err


@pytest.mark.parametrize("value", [True, 2.0, "8"])
def test_router_shape_refuses_non_integers_from_python(value):
    with pytest.raises(RouterShapeError, match="number of experts must be an integer"):
        router_shape("olmoe", value, 1)


def test_router_defaults_are_tiny_and_llama4_is_top_1():
    assert {arch: (router_shape(arch).num_experts, router_shape(arch).top_k) for arch in ROUTER_ARCHITECTURES} == {
        "deepseek_v3": (8, 2), "glm4_moe": (8, 2), "llama4": (8, 1), "gpt_oss": (8, 2),
    }  # fmt: skip


def test_a_mixtral_shape_may_set_the_router_size_in_config_field_names(tmp_path):
    """`lynx-sglang bench serve` passes its shapes with `num_local_experts` / `num_experts_per_tok`:
    the router is randomised at that size, and a clash with `num_experts` is refused."""
    model = load(build_tiny_checkpoint("mixtral", tmp_path, num_local_experts=4, num_experts_per_tok=3))
    assert experts_and_top_k(model.config) == (4, 3)
    assert model.model.layers[0].mlp.gate.weight.std() > 0.3
    with pytest.raises(ValueError, match="num_local_experts given twice with different values: 8 and 4"):
        build_tiny_checkpoint("mixtral", tmp_path / "clash", num_experts=8, num_local_experts=4)
