"""`lynx-sglang serve` serves random tiny checkpoints of each supported MoE architecture with `lynx`
on (and reports stats), and with `baseline` answers token for token like transformers' greedy
decoding in float32."""

import pytest
from live_server import RunningServer, generate_greedy, get_json, post, transformers_greedy

from lynx_sglang.tiny_checkpoints import SOFTMAX_ARCHITECTURES, build_tiny_checkpoint

pytestmark = pytest.mark.slow

PROMPTS = ["123+45=", "r4821=", "Hello, MoE!", "7*8="]
NEW_TOKENS = 12


@pytest.mark.parametrize("arch", SOFTMAX_ARCHITECTURES)  # the routers the policies prune today
def test_serves_with_lynx_and_matches_transformers_with_baseline(arch, tmp_path):
    from transformers import AutoTokenizer

    model_dir = build_tiny_checkpoint(arch, tmp_path / arch, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = transformers_greedy(model_dir, prompt_ids, NEW_TOKENS)

    srv = RunningServer(["--model-path", str(model_dir), "--lynx-policy", "lynx", "--lynx-admin-token", "t"],
                        tmp_path / "server.log")
    try:
        srv.wait_healthy()
        generate_greedy(srv, prompt_ids, NEW_TOKENS)  # a decode batch of four under lynx
        stats = get_json(srv.url + "/lynx/stats")
        status, _ = post(srv.url + "/lynx/policy", {"policy": "baseline"}, headers={"Authorization": "Bearer t"})
        assert status == 200
        got = generate_greedy(srv, prompt_ids, NEW_TOKENS)
    finally:
        srv.stop()
    assert stats["policy"] == "lynx" and stats["pruned_steps"] > 0 and len(stats["layers"]) == 4, stats
    assert 0 < stats["distinct_experts_after"] <= stats["distinct_experts_before"] <= 8
    assert got == expected, f"{arch}: SGLang {got} != transformers {expected}"

