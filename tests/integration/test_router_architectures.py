"""`lynx-sglang serve --lynx-policy baseline` answers token for token like transformers' greedy
decoding (float32) on tiny checkpoints of the router families beyond plain softmax top-k that SGLang's
CPU path serves: the biased grouped sigmoid routers of GLM-4.5 and DeepSeek-V3 (shared expert, routed
scaling factor) and gpt-oss's biased-logit softmax router; the same server then prunes under `lynx` and
`oea` with no fallback and no layer passed through. DeepSeek-V3's latent attention and gpt-oss's
attention sinks need SGLang's Triton attention backend, run here by Triton's interpreter. One server
per architecture. Llama-4, not served on a CPU, is pinned at its router in
tests/unit/test_router_models.py; docs/routers.md says why."""

import pytest
from live_server import RunningServer, generate_greedy, get_json, post, transformers_greedy

from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

pytestmark = pytest.mark.slow

PROMPTS = ["123+45=", "r4821=", "Hello, MoE!", "7*8="]
NEW_TOKENS = 12
# The pruning rounds check only /lynx/stats: three decode steps of the batch of four are enough, and
# every token costs seconds where Triton's interpreter runs the attention.
POLICY_TOKENS = 4
# DeepSeek-V3 and gpt-oss get SGLang's Triton attention, interpreted, from `lynx-sglang serve` itself
# (cpu_runtime/model_support.py). No warm-up request: interpreted, it costs as much as the test's own.
INTERPRETED_ATTENTION = ["--skip-server-warmup"]
# (experts, top-k, extra serve arguments, extra environment). GLM: 16 experts in four groups, two
# groups kept, top-4, so that the group limit and the bias both change choices.
SERVED_ON_CPU = {
    "glm4_moe": (16, 4, [], {}),
    "deepseek_v3": (16, 4, INTERPRETED_ATTENTION, {}),
    "gpt_oss": (8, 2, INTERPRETED_ATTENTION, {}),
}
# What computes the pruned routing: lynx's active-expert kernel where it takes the layer (scaling its
# output as SGLang's compute does: on a CPU GLM-4.5 and DeepSeek-V3 scale it themselves), else SGLang's
# own expert compute (gpt-oss's experts have biases).
EXPERT_COMPUTE = {"gpt_oss": "sglang (expert biases)", "glm4_moe": "lynx-cpu", "deepseek_v3": "lynx-cpu"}
PRUNING_POLICIES = ("lynx", "oea")


@pytest.mark.parametrize("arch", list(SERVED_ON_CPU))
def test_baseline_serving_matches_transformers_and_policies_prune(arch, tmp_path):
    from transformers import AutoTokenizer

    experts, top_k, serve_args, env = SERVED_ON_CPU[arch]
    model_dir = build_tiny_checkpoint(arch, tmp_path / arch, seed=1, num_experts=experts, top_k=top_k)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = transformers_greedy(model_dir, prompt_ids, NEW_TOKENS)

    srv = RunningServer(["--model-path", str(model_dir), "--lynx-policy", "baseline", "--lynx-admin-token", "t",
                         *serve_args], tmp_path / "server.log", env=env)  # fmt: skip
    pruned = {}
    try:
        srv.wait_healthy()
        batched = generate_greedy(srv, prompt_ids, NEW_TOKENS)  # one decode batch of four
        alone = generate_greedy(srv, prompt_ids[:1], NEW_TOKENS)
        for policy in PRUNING_POLICIES:
            status, _ = post(srv.url + "/lynx/policy", {"policy": policy}, headers={"Authorization": "Bearer t"})
            assert status == 200
            generate_greedy(srv, prompt_ids, POLICY_TOKENS)
            pruned[policy] = get_json(srv.url + "/lynx/stats"), get_json(srv.url + "/lynx/policy")
            post(srv.url + "/lynx/stats/reset", {}, headers={"Authorization": "Bearer t"})
        # GLM-4.5's and DeepSeek-V3's first layer is dense: a layer list of it alone would prune nothing
        first_only = post(srv.url + "/lynx/policy", {"config": {"policy": "lynx", "layers": "0"}},
                          headers={"Authorization": "Bearer t"})  # fmt: skip
    finally:
        srv.stop()
    assert batched == expected, f"{arch}: SGLang {batched} != transformers {expected}"
    assert alone == expected[:1]
    assert len({tuple(ids) for ids in expected}) > 1, "the prompts lead to different continuations"
    if arch == "gpt_oss":
        assert first_only[0] == 200, first_only
    else:
        assert first_only == (400, {"error": "layers: 0 holds no MoE layer of this model (its MoE layers: 1-3): "
                                             "a dense layer has no routed experts to prune"}), first_only
    for policy, (stats, served) in pruned.items():
        assert stats["pruned_steps"] > 0 and stats["fallback_steps"] == 0, (policy, stats)
        assert {layer["routing"] for layer in stats["layers"]} == {"pruned"}, (policy, stats["layers"])
        assert stats["distinct_experts_after"] < stats["distinct_experts_before"], (policy, stats)
        assert set(served["expert_compute"].values()) == {EXPERT_COMPUTE[arch]}, (policy, served)
    # lynx's defaults as it decides on this router: the sigmoid family's alpha for GLM-4.5 and DeepSeek-V3;
    # gpt-oss's plain softmax top-2 of 8 gets the (8, 2) shape's
    alpha = pruned["lynx"][1]["params_in_effect"]["alpha"]
    assert alpha == {"glm4_moe": 2.0, "deepseek_v3": 2.0, "gpt_oss": 0.7}[arch], alpha


def test_glm_with_the_expert_cache_answers_as_transformers_and_the_cache_aware_lynx_prunes(tmp_path):
    """Every forward of a GLM-4.5 layer through the cache (lynx's kernel, a quarter of the 16 experts
    resident, the shared expert beside): baseline gives transformers' greedy tokens; then the cache-aware
    lynx prunes and copies fewer experts per decode token."""
    from transformers import AutoTokenizer

    model_dir = build_tiny_checkpoint("glm4_moe", tmp_path / "glm", seed=1, num_experts=16, top_k=4)
    prompt_ids = [AutoTokenizer.from_pretrained(model_dir)(p)["input_ids"] for p in PROMPTS]
    expected = transformers_greedy(model_dir, prompt_ids, NEW_TOKENS)
    srv = RunningServer(["--model-path", str(model_dir), "--lynx-policy", "baseline", "--lynx-admin-token", "t",
                         "--lynx-expert-cache", "25%"], tmp_path / "server.log")  # fmt: skip
    auth = {"Authorization": "Bearer t"}
    try:
        srv.wait_healthy()
        post(srv.url + "/lynx/stats/reset", {}, headers=auth)
        assert generate_greedy(srv, prompt_ids, NEW_TOKENS) == expected
        plain = get_json(srv.url + "/lynx/stats")["expert_cache"]
        assert post(srv.url + "/lynx/policy", {"policy": "lynx", "params": {"prefer_resident": True}}, headers=auth)[0] == 200
        post(srv.url + "/lynx/stats/reset", {}, headers=auth)
        generate_greedy(srv, prompt_ids, NEW_TOKENS)
        stats = get_json(srv.url + "/lynx/stats")
    finally:
        srv.stop()
    assert plain["cached_layers"] > 0 and plain["layers"][0]["slots"] == 4
    assert stats["pruned_steps"] > 0 and stats["fallback_steps"] == 0
    misses = [sum(layer["decode_misses"] for layer in cache["layers"]) / cache["layers"][0]["decode_tokens"]
              for cache in (plain, stats["expert_cache"])]
    assert misses[1] < misses[0], misses
