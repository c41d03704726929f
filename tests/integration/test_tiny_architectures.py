"""`lynx-sglang serve` serves random tiny checkpoints of each supported MoE architecture with `lynx`
on (and reports stats), and with `baseline` answers token for token like transformers' greedy
decoding in float32."""

import pytest
import torch
from live_server import RunningServer, get_json, post

from lynx_sglang.tiny_checkpoints import SOFTMAX_ARCHITECTURES, build_tiny_checkpoint

pytestmark = pytest.mark.slow

PROMPTS = ["123+45=", "r4821=", "Hello, MoE!", "7*8="]
NEW_TOKENS = 12


def transformers_greedy(model_dir, prompt_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    outputs = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq = torch.tensor([ids])
            for _ in range(NEW_TOKENS):  # no KV cache, no generate(): obviously-correct greedy
                next_id = model(seq).logits[0, -1].argmax()
                seq = torch.cat([seq, next_id.view(1, 1)], dim=1)
            outputs.append(seq[0, len(ids) :].tolist())
    return outputs


@pytest.mark.parametrize("arch", SOFTMAX_ARCHITECTURES)  # the routers the policies prune today
def test_serves_with_lynx_and_matches_transformers_with_baseline(arch, tmp_path):
    from transformers import AutoTokenizer

    model_dir = build_tiny_checkpoint(arch, tmp_path / arch, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = transformers_greedy(model_dir, prompt_ids)

    srv = RunningServer(["--model-path", str(model_dir), "--lynx-policy", "lynx", "--lynx-admin-token", "t"],
                        tmp_path / "server.log")
    try:
        srv.wait_healthy()
        generate(srv, prompt_ids)  # a decode batch of four under lynx
        stats = get_json(srv.url + "/lynx/stats")
        status, _ = post(srv.url + "/lynx/policy", {"policy": "baseline"}, headers={"Authorization": "Bearer t"})
        assert status == 200
        got = generate(srv, prompt_ids)
    finally:
        srv.stop()
    assert stats["policy"] == "lynx" and stats["pruned_steps"] > 0 and len(stats["layers"]) == 4, stats
    assert 0 < stats["distinct_experts_after"] <= stats["distinct_experts_before"] <= 8
    assert got == expected, f"{arch}: SGLang {got} != transformers {expected}"


def generate(server, prompt_ids):
    body = {"input_ids": prompt_ids, "sampling_params": {"temperature": 0, "max_new_tokens": NEW_TOKENS,
                                                         "ignore_eos": True}}
    status, results = post(server.url + "/generate", body, timeout=300)
    assert status == 200, results
    return [r["output_ids"] for r in results]
