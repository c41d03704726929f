"""The biased-router trainer (lynx_sglang/embedded/train_router.py): the correction bias follows the
auxiliary-loss-free rule, the load it follows counts only real tokens, and the checkpoint carries the
bias and the config fields SGLang's glm4_moe.py reads."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lynx_sglang.embedded.train_router import (  # noqa: E402
    MODEL_CONFIG,
    ExpertLoad,
    build_model,
    main,
    update_correction_bias,
)


def test_an_overloaded_expert_loses_bias_and_an_idle_one_gains_it():
    bias = torch.zeros(4)
    update_correction_bias(bias, torch.tensor([10, 2, 4, 0]), 0.25)  # mean 4
    assert bias.tolist() == [-0.25, 0.25, 0.0, 0.25]
    update_correction_bias(bias, torch.tensor([10, 2, 4, 0]), 0.25)
    assert bias.tolist() == [-0.5, 0.5, 0.0, 0.5]


def test_the_load_counts_the_chosen_experts_of_real_tokens_only():
    model = build_model(0, layers=2, hidden=64)
    load = ExpertLoad(model)
    ids = torch.randint(4, 50, (3, 7))
    attention = torch.ones(3, 7, dtype=torch.long)
    attention[1, 4:] = 0
    attention[2, 2:] = 0
    load.start_step(attention)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=attention)
    load.end_step(into_window=True)
    top_k = MODEL_CONFIG["num_experts_per_tok"]
    for counts, window in zip(load.step, load.window):
        assert int(counts.sum()) == int(attention.sum()) * top_k
        assert torch.equal(counts, window)
    with torch.no_grad():  # no mask set: generation and probes are not counted
        model(input_ids=ids)
    assert all(torch.equal(c, w) for c, w in zip(load.step, load.window))
    load.close()


def test_one_step_saves_the_bias_it_learnt_and_a_glm_config(tmp_path):
    from safetensors.torch import load_file

    rate = 0.5  # exact in float32, so the saved bias is exactly rate times a sign
    argv = ["--out", str(tmp_path), "--steps", "1", "--batch-size", "8", "--eval-count", "8", "--eval-every", "0",
            "--balance-window", "1", "--bias-update-rate", str(rate), "--seed", "3"]  # fmt: skip
    assert main(argv) == 0

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Glm4MoeForCausalLM"] and config["model_type"] == "glm4_moe"
    expected = {k: MODEL_CONFIG[k] for k in (
        "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "n_group", "topk_group",
        "first_k_dense_replace", "routed_scaling_factor", "norm_topk_prob", "use_qk_norm", "attention_bias",
        "head_dim", "scoring_func", "topk_method", "moe_intermediate_size", "num_hidden_layers")}  # fmt: skip
    assert {k: config[k] for k in expected} == expected
    assert config["scoring_func"] == "sigmoid" and config["n_routed_experts"] == 16

    weights = load_file(str(tmp_path / "model.safetensors"))
    report = json.loads((tmp_path / "training_report.json").read_text())
    assert len(report["layers"]) == MODEL_CONFIG["num_hidden_layers"]
    for record in report["layers"]:
        bias = weights[f"model.layers.{record['layer']}.mlp.gate.e_score_correction_bias"]
        assert bias.dtype == torch.float32 and bias.abs().max() > 0
        load = torch.tensor(record["load"], dtype=torch.float32)
        assert torch.equal(bias, rate * torch.sign(load.mean() - load)), (bias, load)
        assert record["bias_max"] == bias.max().item()
    assert set(report) >= {"train_seconds", "parameters", "heldout_transformers_digits", "heldout_transformers_uniform"}
    assert (tmp_path / "tokenizer.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-5"], "--steps must be at least 1, got -5"), (["--layers", "0"], "--layers must be at least 1"),
    (["--lr", "0"], "--lr must be positive"), (["--uniform-share", "2"], "--uniform-share must be in [0, 1]"),
    (["--warmup", "-1"], "--warmup must not be negative"),
    (["--experts", "4", "--top-k", "5"], "a mixture needs 2 or more experts and 1 <= top-k <= experts"),
])  # fmt: skip
def test_both_trainers_refuse_flags_that_cannot_make_a_model_before_training(tmp_path, capsys, flags, message):
    from lynx_sglang.embedded.train import main as train_embedded

    for trainer in (train_embedded, main):
        with pytest.raises(SystemExit) as stopped:
            trainer(["--out", str(tmp_path / "out"), *flags])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
