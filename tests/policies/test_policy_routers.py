"""The router model (policies/router.py) for every router kind SGLang serves beyond plain softmax top-k:
its choices are SGLang's own select_experts', the fused paths (C++ op; Triton under the interpreter,
slow tier) agree with the torch reference on hypothesis batches with ties, padding and non-finite rows,
remapped rows get the model's weights, shared-expert slots are never pruned, and a lone row keeps the
model's routing, ties included."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policies_testlib import device_for, make_logits, moved
from test_policy_fused import IMPLEMENTATIONS, THOROUGH, assert_same_decision, configurations

from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.policies import ExpertBudget, RouterModel, get_policy, stable_topk_indices

topk = pytest.importorskip("sglang.srt.layers.moe.topk")

# (kind, scoring, biased, groups): each router family SGLang 0.5.23 serves. Groups are (n_group,
# topk_group) over 16 experts; the biased grouped sigmoid is DeepSeek-V3's and GLM-4.5's.
ROUTER_KINDS = {
    "sigmoid": ("sigmoid", False, None),  # Llama-4 (top-1), sigmoid models without bias
    "biased-sigmoid": ("sigmoid", True, None),  # GLM-4.5 / Kimi-K2 with n_group 1
    "biased-grouped-sigmoid": ("sigmoid", True, (4, 2)),  # DeepSeek-V3
    "grouped-softmax": ("softmax", False, (4, 2)),  # DeepSeek-V2
    "biased-sqrtsoftplus": ("sqrtsoftplus", True, None),
}
FUSED = [pytest.param(name, marks=pytest.mark.slow) if name == "triton" else name for name in IMPLEMENTATIONS]
ALL = ["torch"] + FUSED


def router_of(kind: str, num_experts: int, seed: int, shared_slots: int = 0, bias_scale: float = 0.3) -> RouterModel:
    scoring, biased, groups = ROUTER_KINDS[kind]
    bias = torch.randn(num_experts, generator=torch.Generator().manual_seed(seed)) * bias_scale if biased else None
    return RouterModel(scoring, bias, *(groups or (None, None)), shared_slots=shared_slots)


def sglang_config(router: RouterModel, top_k: int, renormalize: bool) -> "topk.TopKConfig":
    grouped = router.num_expert_group is not None
    return topk.TopKConfig(top_k=top_k, use_grouped_topk=grouped, num_expert_group=router.num_expert_group,
                           topk_group=router.topk_group, renormalize=renormalize,
                           correction_bias=router.correction_bias, scoring_func=router.scoring,
                           torch_native=True)  # fmt: skip


def sglang_routing(router: RouterModel, logits: torch.Tensor, top_k: int, renormalize: bool = True):
    """SGLang's own (ids, weights) for the router, plus `shared_slots` columns naming shared experts E, E+1.."""
    output = topk.select_experts(torch.zeros(logits.shape[0], 4), logits.float(), sglang_config(router, top_k, renormalize))
    ids, weights = output.topk_ids.to(torch.int32), output.topk_weights.float()
    if router.shared_slots:
        shared = logits.shape[1] + torch.arange(router.shared_slots, dtype=torch.int32).expand(logits.shape[0], -1)
        ids, weights = torch.cat([ids, shared], 1), torch.cat([weights, torch.ones(shared.shape)], 1)
    return ids, weights


@pytest.mark.parametrize("kind", list(ROUTER_KINDS))
def test_the_policies_own_choice_is_sglangs(kind):
    logits = make_logits(256, 16, seed=3, scale=2.0, skew=1.0)
    router = router_of(kind, 16, seed=5)
    ids, _ = sglang_routing(router, logits, 4)
    own = stable_topk_indices(router.choice_logits(logits), 4)
    assert torch.equal(own.sort(-1).values, ids.long().sort(-1).values)


@pytest.mark.parametrize("kind", list(ROUTER_KINDS))
def test_remapped_rows_get_the_models_weights_and_kept_rows_keep_theirs(kind):
    logits = make_logits(24, 16, seed=7, scale=2.0)
    router = router_of(kind, 16, seed=2, shared_slots=1)
    for renormalize in (True, False):
        ids, weights = sglang_routing(router, logits, 4, renormalize)
        decision = get_policy("budget", 16, 4, renormalize, num_experts_kept=10).select(
            logits, ids, weights, implementation="torch", router=router)
        assert torch.equal(decision.topk_ids[:, 4:], ids[:, 4:]) and torch.equal(decision.topk_weights[:, 4:], weights[:, 4:])
        assert decision.active_mask.shape == (16,) and int(decision.active_mask.sum()) <= 10
        new_ids = decision.topk_ids[:, :4].long()
        moved_rows = ~(new_ids == ids[:, :4].long()).all(-1)
        assert moved_rows.any() and (~moved_rows).any()
        scores = router.scores(logits).gather(1, new_ids)
        target = 1.0 if renormalize else weights[:, :4].sum(-1, keepdim=True)
        expected = torch.where(moved_rows.unsqueeze(1), scores / scores.sum(-1, keepdim=True) * target, weights[:, :4])
        torch.testing.assert_close(decision.topk_weights[:, :4], expected, rtol=1e-5, atol=1e-7)
        assert torch.equal(decision.topk_weights[~moved_rows, :4], weights[~moved_rows, :4])  # bit for bit


@st.composite
def routed_batches(draw):
    """A batch of a router kind with SGLang's own routing, ties (grid logits, bf16), padding rows and
    NaN/inf rows, an optional budget."""
    kind = draw(st.sampled_from(list(ROUTER_KINDS)))
    num_experts = draw(st.sampled_from([8, 16])) if ROUTER_KINDS[kind][2] else draw(st.sampled_from([2, 5, 8, 16]))
    top_k = draw(st.integers(1, min(6, num_experts // 2 if ROUTER_KINDS[kind][2] else num_experts)))
    num_rows = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    logits = make_logits(num_rows, num_experts, seed=draw(st.integers(0, 2**31 - 1)), dtype=dtype,
                         scale=draw(st.sampled_from([0.3, 2.0, 6.0])), grid=draw(st.booleans()))  # fmt: skip
    router = router_of(kind, num_experts, seed=draw(st.integers(0, 99)), shared_slots=draw(st.integers(0, 1)),
                       bias_scale=draw(st.sampled_from([0.05, 0.5, 2.0])))  # fmt: skip
    renormalize = draw(st.booleans())
    ids, weights = sglang_routing(router, logits, top_k, renormalize)
    for row in draw(st.sets(st.integers(0, num_rows - 1), max_size=2)):
        logits[row, draw(st.integers(0, num_experts - 1))] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    num_real = draw(st.one_of(st.none(), st.integers(0, num_rows).map(torch.tensor)))
    budget = None
    if draw(st.booleans()):
        budget = ExpertBudget.unlimited(num_experts).set_experts(draw(st.integers(1, num_experts)))
    return logits, ids, weights, num_real, renormalize, budget, router


@pytest.mark.parametrize("implementation", FUSED)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=routed_batches(), config=st.integers(0, 63))
def test_fused_paths_follow_the_router_model(implementation, batch, config):
    *tensors, router = batch
    logits, ids, weights, num_real, renormalize, budget = moved(device_for(implementation), *tensors)
    top_k = ids.shape[1] - router.shared_slots
    configs = configurations(logits.shape[1], top_k, renormalize)
    label, policy = configs[config % len(configs)]
    reference = policy.select(logits, ids, weights, num_real, budget=budget, implementation="torch", router=router)
    fused = policy.select(logits, ids, weights, num_real, budget=budget, implementation=implementation, router=router)
    assert_same_decision(f"{implementation} {router.kind} {label}", fused, reference)
    assert torch.equal(fused.topk_ids[:, top_k:], ids[:, top_k:])


KEEPING = [("baseline", {}), ("lynx", {}), ("lynx-v1", {}), ("oea", {}), ("anchor", {}), ("anchor", {"fill_to_k": False}),
           ("coverage", {}), ("budget", {}), ("topn", {})]  # fmt: skip


# Interpreted, each policy's launch costs ~0.15 s: fewer draws there (all of them on a GPU or thorough runs).
LONE_ROW_EXAMPLES = {"torch": 15, "cpu": 15, "triton": 15 if THOROUGH else 5}


@pytest.mark.parametrize("implementation", ALL)
@pytest.mark.parametrize("kind", list(ROUTER_KINDS))
def test_a_lone_row_keeps_the_models_routing_under_every_router(kind, implementation):
    @settings(max_examples=LONE_ROW_EXAMPLES[implementation], deadline=None)
    @given(seed=st.integers(0, 2**31 - 1), top_k=st.sampled_from([1, 4]))
    def keeps(seed, top_k):
        logits = (torch.randn(1, 16, generator=torch.Generator().manual_seed(seed)) * 2).bfloat16().float()
        router = router_of(kind, 16, seed=seed % 97, shared_slots=1)
        ids, weights = sglang_routing(router, logits, top_k)
        for name, params in KEEPING:
            decision = get_policy(name, 16, top_k, True, **params).select(
                logits, ids, weights, num_real=torch.tensor(1), layer_id=0, budget=ExpertBudget.unlimited(16),
                implementation=implementation, router=router)  # fmt: skip
            assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights), (name, params)

    keeps()


def test_non_finite_rows_do_not_vote_under_a_router_model():
    logits = make_logits(6, 16, seed=1)
    router = router_of("biased-grouped-sigmoid", 16, seed=1)
    ids, weights = sglang_routing(router, logits, 4)
    poisoned = logits.clone()
    poisoned[2, 5] = float("nan")
    policy = get_policy("oea", 16, 4, True, k0=1)
    with_nan = policy.select(poisoned, ids, weights, implementation="torch", router=router)
    keep = [0, 1, 3, 4, 5]
    without = policy.select(logits[keep], ids[keep], weights[keep], implementation="torch", router=router)
    assert torch.equal(with_nan.active_mask, without.active_mask)
    assert torch.isfinite(with_nan.topk_weights).all()


def test_a_router_model_that_does_not_fit_the_layer_is_refused():
    logits = make_logits(4, 16, seed=1)
    ids, weights = sglang_routing(RouterModel("sigmoid"), logits, 4)
    with pytest.raises(ValueError, match="does not fit 16 experts"):
        get_policy("lynx", 16, 4).select(logits, ids, weights, router=RouterModel("sigmoid", torch.zeros(8)))
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        get_policy("lynx", 16, 4).select(logits, ids, weights, router=RouterModel("sigmoid", None, 3, 1))
    with pytest.raises(ValueError, match="not modelled"):
        RouterModel("relu")
    with pytest.raises(ValueError, match="1 routed \\+ 1 shared"):
        get_policy("lynx", 16, 1).select(logits, ids, weights, router=RouterModel("sigmoid", shared_slots=1))


@pytest.mark.skipif(not fused_available("cpu"), reason="the C++ op is not available here")
def test_groups_come_first_in_a_remap():
    """A remapped token prefers the experts of its own groups, by score, before any other group's."""
    logits = make_logits(32, 16, seed=9, scale=2.0)
    router = router_of("biased-grouped-sigmoid", 16, seed=4)
    ids, weights = sglang_routing(router, logits, 4)
    decision = get_policy("budget", 16, 4, True, num_experts_kept=8).select(logits, ids, weights, router=router)
    biased_scores = router.scores(logits) + router.correction_bias
    inside = router.group_mask(biased_scores, biased_scores)
    for row in range(32):
        chosen = decision.topk_ids[row].long()
        available_inside = (decision.active_mask & inside[row]).sum()
        assert int(inside[row, chosen].sum()) == min(4, int(available_inside))
