"""Experts touched per decode batch on the committed embedded checkpoint (real model, transformers)."""

import pytest

from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
from lynx_sglang.embedded.routing import first_eos, measure, table, union_size


def test_union_size_counts_distinct_experts():
    assert union_size([(0, 1), (1, 2), (0, 2)]) == 3
    assert union_size([(5, 7)]) == 2


def test_first_eos_is_the_first_end_or_the_token_budget():
    import torch

    generated = torch.tensor([[5, 2, 0, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12], [2, 0, 0, 0, 0, 0, 0, 0]])
    assert first_eos(generated, eos_id=2) == [1, 8, 0]


@pytest.fixture(scope="module")
def routing():
    return measure(EMBEDDED_MODEL_DIR, batches=4, batch_size=32, distribution="digits", seed=4321)


def test_every_layer_reports_decode_batches_of_32(routing):
    assert routing["batch_size"] == 32 and routing["num_experts"] == 8
    for row in routing["layers"].values():
        assert row["first_step"]["batches"] == 4
        assert row["decode_tokens"]["batches"] == sum(row["histogram"].values()) > 4
        assert 1 <= row["decode_tokens"]["min"] <= row["decode_tokens"]["mean"] <= row["decode_tokens"]["max"] <= 8


def test_routing_of_the_committed_checkpoint_is_not_collapsed(routing):
    # A decode batch of 32 must touch several experts in every layer, or there is nothing to prune.
    for layer, row in routing["layers"].items():
        assert row["decode_tokens"]["mean"] >= 4, (layer, row)
    assert "| 0 |" in table(routing)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size: invalid integer of at least 1 value: '0'"),
    (["--batches", "-1"], "--batches: invalid integer of at least 1 value: '-1'"),
    (["--model-path", "no-such-folder"], "--model-path no-such-folder: no readable config.json"),
])  # fmt: skip
def test_bad_arguments_are_one_line_not_a_traceback(argv, message, capsys):
    from lynx_sglang.embedded.routing import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m lynx_sglang.embedded.routing: error: ") and message in error
    assert len(error.splitlines()) == 1


def test_a_model_of_another_kind_is_named(tmp_path, capsys):
    from lynx_sglang.embedded.routing import main

    (tmp_path / "config.json").write_text('{"model_type": "qwen3_moe"}')
    with pytest.raises(SystemExit):
        main(["--model-path", str(tmp_path)])
    assert "a qwen3_moe model; this measures Mixtral checkpoints" in capsys.readouterr().err
