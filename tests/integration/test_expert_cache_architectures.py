"""`--lynx-expert-cache` beyond the embedded model's 8 experts and top-2: tiny random checkpoints with
60 experts top-4 and a shared expert (Qwen2-MoE), and 64 experts top-8 (OLMoE) with fewer slots than a
token's top-k, so that every forward streams experts through in rounds. Under `baseline` the served
greedy tokens equal transformers'; after a live switch to the cache-aware `lynx` the server prunes
with no fallback and copies fewer experts. One server per checkpoint."""

import pytest
from live_server import RunningServer, generate_greedy, get_json, post, transformers_greedy

from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

pytestmark = pytest.mark.slow

PROMPTS = ["123+45=", "r4821=", "Hello, MoE!", "7*8="]
NEW_TOKENS = 10
AUTH = {"Authorization": "Bearer t"}


@pytest.mark.parametrize(("arch", "experts", "top_k", "cache", "slots"), [
    ("qwen2_moe", 60, 4, "25%", 15),
    ("olmoe", 64, 8, "3", 3),
], ids=["qwen2_moe-60x4-quarter", "olmoe-64x8-three-slots"])  # fmt: skip
def test_baseline_through_the_cache_answers_as_transformers_and_the_cache_aware_lynx_copies_fewer(
    arch, experts, top_k, cache, slots, tmp_path
):
    from transformers import AutoTokenizer

    model_dir = build_tiny_checkpoint(arch, tmp_path / arch, seed=1, num_experts=experts, top_k=top_k)
    prompt_ids = [AutoTokenizer.from_pretrained(model_dir)(p)["input_ids"] for p in PROMPTS]
    expected = transformers_greedy(model_dir, prompt_ids, NEW_TOKENS)
    srv = RunningServer.healthy_one(["--model-path", str(model_dir), "--lynx-policy", "baseline",
                                     "--lynx-admin-token", "t", "--lynx-expert-cache", cache],
                                    tmp_path / "server.log")  # fmt: skip
    try:
        assert generate_greedy(srv, prompt_ids, NEW_TOKENS) == expected
        plain = get_json(srv.url + "/lynx/stats")["expert_cache"]
        switch = {"policy": "lynx", "params": {"prefer_resident": True}}
        assert post(srv.url + "/lynx/policy", switch, headers=AUTH)[0] == 200
        post(srv.url + "/lynx/stats/reset", {}, headers=AUTH)
        generate_greedy(srv, prompt_ids, NEW_TOKENS)
        aware = get_json(srv.url + "/lynx/stats")
    finally:
        srv.stop()
    assert {layer["slots"] for layer in plain["layers"]} == {slots} and plain["layers"][0]["num_experts"] == experts
    assert aware["pruned_steps"] > 0 and aware["fallback_steps"] == 0
    assert aware["expert_cache"]["cache_misses"] < plain["cache_misses"], (plain, aware["expert_cache"])
