"""SGLang's own `select_experts`, given the TopK configuration each model class builds, chooses the
same experts with the same weights as the transformers router of that family, on the tiny checkpoints.
This pins the router model (scores ranked, bias used only to choose, renormalisation, where the routed
scaling factor goes) that the policies must follow, also for architectures SGLang's CPU path does not
serve."""

import pytest
import torch

from lynx_sglang.tiny_checkpoints import ROUTED_SCALING_FACTOR, build_tiny_checkpoint

topk = pytest.importorskip("sglang.srt.layers.moe.topk")

ROWS = 512
# (experts, top-k) per architecture: grouped routers with four groups of four, two groups kept.
SHAPES = {"deepseek_v3": (16, 4), "glm4_moe": (16, 4), "llama4": (16, 1), "gpt_oss": (16, 4)}


def sglang_topk_config(arch, config, router) -> "topk.TopKConfig":
    """The TopKConfig the SGLang 0.5.23 model class builds for one MoE layer of `arch` (unquantised,
    no shared-expert fusion), with `torch_native` set as `TopK.forward_native` sets it on the CPU path."""
    if arch in ("deepseek_v3", "glm4_moe"):
        # deepseek_v2.py DeepseekV2MoE (scoring_func from config.json) and glm4_moe.py
        # Glm4MoeSparseMoeBlock (no scoring_func: the biased grouped router is sigmoid regardless).
        return topk.TopKConfig(
            top_k=config.num_experts_per_tok, use_grouped_topk=True, num_expert_group=config.n_group,
            topk_group=config.topk_group, renormalize=config.norm_topk_prob,
            correction_bias=router.e_score_correction_bias.data, routed_scaling_factor=config.routed_scaling_factor,
            scoring_func="sigmoid" if arch == "deepseek_v3" else "softmax", torch_native=True,
        )  # fmt: skip
    if arch == "llama4":
        from sglang.srt.models.llama4 import Llama4MoE

        return topk.TopKConfig(top_k=config.num_experts_per_tok, renormalize=False,
                               custom_routing_function=Llama4MoE.custom_routing_function, torch_native=True)  # fmt: skip
    if arch == "gpt_oss":  # gpt_oss.py GptOssSparseMoeBlock: plain softmax top-k, renormalised
        return topk.TopKConfig(top_k=config.num_experts_per_tok, renormalize=True, torch_native=True)
    raise AssertionError(arch)


def transformers_routing(arch, block, hidden):
    """(router logits, top-k ids, weights) of the family's own transformers router."""
    if arch in ("deepseek_v3", "glm4_moe"):
        logits, weights, ids = block.gate(hidden)
        return logits, ids, weights
    if arch == "llama4":
        scores, logits = block.router(hidden)
        ids = logits.topk(block.top_k, dim=-1).indices
        return logits, ids, scores.gather(1, ids)
    logits, weights, ids = block.router(hidden)  # gpt-oss: logits include the router bias
    return logits, ids, weights


def by_expert(ids, weights):
    order = ids.argsort(-1)
    return ids.gather(1, order).long(), weights.gather(1, order).float()


@pytest.fixture(scope="module", params=list(SHAPES))
def routed(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    arch = request.param
    experts, top_k = SHAPES[arch]
    model_dir = build_tiny_checkpoint(arch, tmp_path_factory.mktemp(arch), seed=4, num_experts=experts, top_k=top_k)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layer = model.model.layers[1]
    block = layer.mlp if hasattr(layer, "mlp") else layer.feed_forward
    router = block.gate if hasattr(block, "gate") else block.router
    hidden = torch.randn(ROWS, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, ids, weights = transformers_routing(arch, block, hidden)
        config = sglang_topk_config(arch, model.config, router)
        output = topk.select_experts(hidden, logits.float(), config)
    return arch, model.config, (ids, weights), output, config


def test_select_experts_chooses_the_transformers_routers_experts(routed):
    arch, config, (ids, weights), output, _ = routed
    assert type(output).__name__ == "StandardTopKOutput"
    assert output.topk_ids.shape == (ROWS, config.num_experts_per_tok)
    got_ids, _ = by_expert(output.topk_ids, output.topk_weights)
    want_ids, _ = by_expert(ids, weights)
    assert torch.equal(got_ids, want_ids), f"{arch}: rows differ: {(got_ids != want_ids).any(-1).sum()}"


def test_select_experts_gives_the_transformers_routers_weights_before_the_routed_scaling(routed):
    """DeepSeek-V3 and GLM-4.5 weights leave select_experts renormalised but unscaled: off the fused
    CUDA path SGLang multiplies the routed experts' output by routed_scaling_factor afterwards."""
    arch, config, (ids, weights), output, _ = routed
    _, got = by_expert(output.topk_ids, output.topk_weights)
    _, want = by_expert(ids, weights)
    scale = ROUTED_SCALING_FACTOR if arch in ("deepseek_v3", "glm4_moe") else 1.0
    torch.testing.assert_close(got * scale, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["deepseek_v3", "glm4_moe"])
def test_the_grouped_routers_group_limit_and_bias_both_bind_on_these_checkpoints(arch, tmp_path):
    """Without the group limit or without the bias, the choice would differ on some rows: the tiny
    checkpoints exercise both parts of the biased grouped router."""
    from transformers import AutoModelForCausalLM

    experts, top_k = SHAPES[arch]
    model_dir = build_tiny_checkpoint(arch, tmp_path, seed=4, num_experts=experts, top_k=top_k)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gate = model.model.layers[1].mlp.gate
    hidden = torch.randn(ROWS, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _, _ = gate(hidden)
    config = sglang_topk_config(arch, model.config, gate)
    chosen = topk.select_experts(hidden, logits, config).topk_ids.sort(-1).values
    ungrouped = topk.select_experts(hidden, logits, topk.TopKConfig(**{**vars_of(config), "num_expert_group": 1,
                                                                        "topk_group": 1}))  # fmt: skip
    unbiased = topk.select_experts(hidden, logits, topk.TopKConfig(**{
        **vars_of(config), "correction_bias": torch.zeros_like(config.correction_bias)}))  # fmt: skip
    for variant in (ungrouped, unbiased):
        differs = (variant.topk_ids.sort(-1).values != chosen).any(-1).float().mean()
        assert 0.02 < differs < 0.98, f"{arch}: a variant changed {differs:.0%} of rows"


def vars_of(config) -> dict:
    fields = ("top_k", "use_grouped_topk", "topk_group", "num_expert_group", "renormalize", "correction_bias",
              "routed_scaling_factor", "scoring_func", "custom_routing_function", "torch_native")  # fmt: skip
    return {name: getattr(config, name) for name in fields}


def test_the_policies_prune_each_familys_routing_as_the_server_models_its_router(routed):
    """What the server does with each family's layer, on SGLang's own select_experts output: the router
    model it reads from the TopKConfig (Llama-4's routing function included), then `lynx` and `oea`
    over an 8-row decode batch: fewer experts, valid ids, finite weights; a lone row is kept."""
    from lynx_sglang.policies import get_policy
    from lynx_sglang.scheduler.introspection import renormalizes, router_model

    arch, config, _, output, topk_config = routed
    router, reason = router_model(topk_config)
    assert reason is None, reason
    logits, ids, weights = output.router_logits[:8], output.topk_ids[:8], output.topk_weights[:8]
    experts, union = logits.shape[1], int(torch.unique(ids).numel())
    active = {}
    for name in ("lynx", "oea"):
        policy = get_policy(name, experts, config.num_experts_per_tok, renormalizes(topk_config))
        decision = policy.select(logits, ids, weights, router=router)
        active[name] = int(decision.active_mask.sum())
        assert active[name] <= union, (arch, name)
        assert ((decision.topk_ids >= 0) & (decision.topk_ids < experts)).all(), (arch, name)
        assert torch.isfinite(decision.topk_weights).all(), (arch, name)
        lone = policy.select(logits[:1], ids[:1], weights[:1], router=router)
        assert torch.equal(lone.topk_ids, ids[:1]) and torch.equal(lone.topk_weights, weights[:1]), (arch, name)
    assert min(active.values()) < union, (arch, active, union)
