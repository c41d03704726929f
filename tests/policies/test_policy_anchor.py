"""Properties of the `anchor` policy (policies/anchor.py)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_sglang.policies import PolicyConfigError, get_policy
from policies_testlib import make_logits, normal_routing
from test_policy_graph_safety import assert_static, recording_backend

SHAPES = st.sampled_from([(8, 1), (8, 2), (16, 4), (64, 8), (60, 4)])


def route(policy, logits, num_real=None, **kwargs):
    ids, weights = normal_routing(logits, policy.top_k, policy.renormalize)
    return ids, weights, policy.select(logits, ids, weights, num_real, layer_id=0, **kwargs)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, padding=st.integers(0, 7), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       ratio=st.sampled_from([0.05, 0.3, 0.5, 1.0]), min_share=st.sampled_from([0.0, 0.6, 1.0]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_one_real_row_keeps_its_routing(shape, padding, seed, renormalize, ratio, min_share, dtype):
    num_experts, top_k = shape
    policy = get_policy("anchor", num_experts, top_k, renormalize, ratio=ratio, min_share=min_share)
    logits = make_logits(1 + padding, num_experts, seed=seed, dtype=dtype)
    ids, weights, decision = route(policy, logits, num_real=torch.tensor(1))
    assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights)


def logits_on_k_favourites(num_experts, top_k, rows, seed):
    """Every row prefers the same k experts (in its own order): the batch uses k experts in all."""
    generator = torch.Generator().manual_seed(seed)
    favourites = torch.randperm(num_experts, generator=generator)[:top_k]
    logits = torch.randn(rows, num_experts, generator=generator) - 20.0
    logits[:, favourites] = torch.randn(rows, top_k, generator=generator) * 2
    return logits


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, rows=st.integers(2, 40), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       ratio=st.sampled_from([0.05, 0.5, 1.0]))
def test_a_batch_that_already_fits_in_k_experts_is_unchanged(shape, rows, seed, renormalize, ratio):
    num_experts, top_k = shape
    policy = get_policy("anchor", num_experts, top_k, renormalize, ratio=ratio)
    logits = logits_on_k_favourites(num_experts, top_k, rows, seed)
    ids, weights, decision = route(policy, logits)
    assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, rows=st.integers(1, 64), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       ratio=st.sampled_from([0.1, 0.3, 0.5, 0.8]), skew=st.sampled_from([0.0, 2.0]))
def test_every_token_keeps_an_expert_it_rates_almost_as_high_as_its_first(shape, rows, seed, renormalize, ratio, skew):
    num_experts, top_k = shape
    policy = get_policy("anchor", num_experts, top_k, renormalize, ratio=ratio)
    logits = make_logits(rows, num_experts, seed=seed, skew=skew)
    ids, weights, decision = route(policy, logits)
    probs = torch.softmax(logits, dim=-1)
    first = decision.topk_ids[:, 0].long()
    assert torch.all(probs.gather(1, first.unsqueeze(1)).squeeze(1) >= ratio * probs.max(dim=1).values * (1 - 1e-6))
    assert torch.all(decision.active_mask[decision.topk_ids.long()])
    assert int(decision.active_mask.sum()) >= top_k
    sums = decision.topk_weights.sum(dim=1)
    target = torch.ones_like(sums) if renormalize else weights.sum(dim=1)
    assert torch.allclose(sums, target, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=SHAPES, rows=st.integers(1, 64), seed=st.integers(0, 10_000))
def test_ratio_one_keeps_exactly_the_tokens_first_choices(shape, rows, seed):
    """With only the top-1 acceptable (continuous logits: no ties), the set is the union of the
    tokens' first choices, as oea with k0=1, wherever that saves an expert; elsewhere the batch keeps
    its own routing."""
    num_experts, top_k = shape
    logits = make_logits(rows, num_experts, seed=seed)
    ids, weights, anchor = route(get_policy("anchor", num_experts, top_k, True, ratio=1.0), logits)
    _, _, oea = route(get_policy("oea", num_experts, top_k, True, k0=1), logits)
    own_experts = int(ids.unique().numel())
    if int(oea.active_mask.sum()) < own_experts:
        assert torch.equal(anchor.active_mask, oea.active_mask)
        assert torch.equal(anchor.topk_ids, oea.topk_ids)
    else:
        assert torch.equal(anchor.topk_ids, ids) and torch.equal(anchor.topk_weights, weights)


def test_a_lower_ratio_never_needs_more_experts_on_shared_near_ties():
    # Half the tokens rate experts 0 and 1 alike, half rate 1 and 2 alike: expert 1 serves everyone.
    logits = torch.full((8, 8), -5.0)
    logits[:4, 0], logits[:4, 1] = 2.0, 1.9
    logits[4:, 2], logits[4:, 1] = 2.0, 1.8
    strict = route(get_policy("anchor", 8, 1, True, ratio=1.0), logits)[2]
    tolerant = route(get_policy("anchor", 8, 1, True, ratio=0.5), logits)[2]
    assert strict.active_mask.nonzero().flatten().tolist() == [0, 2]
    assert tolerant.active_mask.nonzero().flatten().tolist() == [1]
    assert tolerant.topk_ids.flatten().tolist() == [1] * 8


def test_tokens_below_min_share_are_not_served():
    # Four confident tokens on expert 3; four unsure tokens split between 5 and 6 with top-1 share ~0.52.
    logits = torch.full((8, 8), -6.0)
    logits[:4, 3], logits[:4, 4] = 4.0, 0.0
    logits[4:, 5], logits[4:, 6] = 1.0, 0.9
    served_all = route(get_policy("anchor", 8, 2, True, ratio=0.95), logits)[2]
    confident_only = route(get_policy("anchor", 8, 2, True, ratio=0.95, min_share=0.6), logits)[2]
    assert served_all.active_mask[[3, 5]].all()
    assert not confident_only.active_mask[5] and not confident_only.active_mask[6]
    assert confident_only.active_mask.sum() == 2  # expert 3 plus the shared top-up to k


def test_padding_rows_and_row_order_change_nothing():
    logits = make_logits(24, 16, seed=3, skew=1.0)
    policy = get_policy("anchor", 16, 4, True, ratio=0.4)
    _, _, plain = route(policy, logits)
    padded = torch.cat([logits, make_logits(8, 16, seed=99, scale=9.0)])
    _, _, with_padding = route(policy, padded, num_real=torch.tensor(24))
    assert torch.equal(plain.active_mask, with_padding.active_mask)
    assert torch.equal(plain.topk_ids, with_padding.topk_ids[:24])
    order = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    _, _, shuffled = route(policy, logits[order])
    assert torch.equal(plain.active_mask, shuffled.active_mask)
    assert torch.equal(plain.topk_ids[order], shuffled.topk_ids)


def test_fused_and_reference_paths_agree():
    policy = get_policy("anchor", 64, 8, False, ratio=0.3, min_share=0.2)
    logits = make_logits(40, 64, seed=11, skew=2.0, dtype=torch.bfloat16)
    ids, weights = normal_routing(logits, 8, False)
    auto = policy.select(logits, ids, weights, torch.tensor(33), layer_id=0)
    reference = policy.select(logits, ids, weights, torch.tensor(33), layer_id=0, implementation="torch")
    assert torch.equal(auto.active_mask, reference.active_mask) and torch.equal(auto.topk_ids, reference.topk_ids)
    torch.testing.assert_close(auto.topk_weights, reference.topk_weights, rtol=1e-6, atol=0)


def test_compiles_fullgraph_with_static_shapes():
    policy = get_policy("anchor", 16, 4, True, ratio=0.5, min_share=0.3)
    logits = make_logits(6, 16, seed=5, dtype=torch.bfloat16)
    ids, weights = normal_routing(logits, 4, True)
    torch._dynamo.reset()
    graphs = []
    compiled = torch.compile(policy.select, fullgraph=True, backend=recording_backend(graphs))
    got = compiled(logits, ids, weights, torch.tensor(4), layer_id=0)
    want = policy.select(logits, ids, weights, torch.tensor(4), layer_id=0, implementation="torch")  # what dynamo traces
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and graphs
    for graph_module in graphs:
        assert_static(graph_module, "anchor")


@pytest.mark.parametrize("params, message", [
    ({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"ratio": []}, "ratio"), ({"ratio": [0.5, 2.0]}, "ratio"),
    ({"min_share": -0.1}, "min_share"), ({"other": 1}, "unknown parameter"),
])
def test_bad_parameters_are_refused_at_construction(params, message):
    with pytest.raises(PolicyConfigError, match=message):
        get_policy("anchor", 8, 2, True, **params)


def test_log_ratio_constant_is_the_fp32_log():
    policy = get_policy("anchor", 8, 2, True, ratio=0.3)
    assert policy._log_ratio[0] == pytest.approx(math.log(0.3), rel=1e-7)


def test_per_layer_settings_take_the_last_entry_for_deeper_layers():
    logits = make_logits(40, 16, seed=8, skew=1.0)
    ids, weights = normal_routing(logits, 2, True)
    layered = get_policy("anchor", 16, 2, True, ratio=[1.0, 0.2], min_share=[0.0, 0.0, 0.9])
    for layer, ratio, min_share in ((0, 1.0, 0.0), (1, 0.2, 0.0), (2, 0.2, 0.9), (9, 0.2, 0.9)):
        single = get_policy("anchor", 16, 2, True, ratio=ratio, min_share=min_share)
        for got, want in zip(layered.select(logits, ids, weights, layer_id=layer), single.select(logits, ids, weights, layer_id=layer)):
            assert torch.equal(got, want), layer


# ---- layer_caps ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(shape=SHAPES, padding=st.integers(0, 5), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       layer=st.integers(0, 5))
def test_a_lone_token_keeps_its_routing_under_caps_below_k(shape, padding, seed, renormalize, layer):
    num_experts, top_k = shape
    policy = get_policy("anchor", num_experts, top_k, renormalize, layer_caps=[1, 0, 1])
    logits = make_logits(1 + padding, num_experts, seed=seed)
    ids, weights = normal_routing(logits, top_k, renormalize)
    decision = policy.select(logits, ids, weights, torch.tensor(1), layer_id=layer)
    assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights)


@settings(max_examples=40, deadline=None)
@given(shape=SHAPES, rows=st.integers(2, 48), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       cap=st.integers(1, 4))
def test_a_capped_layer_uses_at_most_cap_experts_and_others_are_untouched(shape, rows, seed, renormalize, cap):
    num_experts, top_k = shape
    capped = get_policy("anchor", num_experts, top_k, renormalize, ratio=0.5, layer_caps=[0, cap])
    free = get_policy("anchor", num_experts, top_k, renormalize, ratio=0.5)
    logits = make_logits(rows, num_experts, seed=seed, skew=1.0)
    ids, weights = normal_routing(logits, top_k, renormalize)
    for layer in (1, 7):  # layer 7 takes the list's last entry
        decision = capped.select(logits, ids, weights, layer_id=layer)
        assert int(decision.active_mask.sum()) <= cap
        assert torch.all(decision.active_mask[decision.topk_ids.long()])
        sums = decision.topk_weights.sum(dim=1)
        assert torch.allclose(sums, torch.ones_like(sums) if renormalize else weights.sum(dim=1), atol=1e-5)
    for got, want in zip(capped.select(logits, ids, weights, layer_id=0), free.select(logits, ids, weights, layer_id=0)):
        assert torch.equal(got, want)


def test_layer_cap_and_a_callers_budget_take_the_smaller():
    from lynx_sglang.policies import ExpertBudget

    policy = get_policy("anchor", 16, 2, True, ratio=1.0, layer_caps=[6])
    logits = make_logits(40, 16, seed=2)
    ids, weights = normal_routing(logits, 2, True)
    budget = ExpertBudget.unlimited(16).set_experts(3)
    assert int(policy.select(logits, ids, weights, layer_id=0, budget=budget).active_mask.sum()) == 3
    budget.set_experts(12)
    assert int(policy.select(logits, ids, weights, layer_id=0, budget=budget).active_mask.sum()) == 6


def test_capped_layers_compile_fullgraph_with_static_shapes():
    policy = get_policy("anchor", 16, 4, True, layer_caps=[2])
    logits = make_logits(6, 16, seed=5)
    ids, weights = normal_routing(logits, 4, True)
    torch._dynamo.reset()
    graphs = []
    compiled = torch.compile(policy.select, fullgraph=True, backend=recording_backend(graphs))
    got = compiled(logits, ids, weights, torch.tensor(4), layer_id=0)
    want = policy.select(logits, ids, weights, torch.tensor(4), layer_id=0, implementation="torch")
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and int(got.active_mask.sum()) <= 2
    for graph_module in graphs:
        assert_static(graph_module, "anchor layer_caps")


@pytest.mark.parametrize("caps", [[], 3, [0, 9], [-1], ["2"]])
def test_bad_layer_caps_are_refused(caps):
    with pytest.raises(PolicyConfigError, match="layer_caps"):
        get_policy("anchor", 8, 2, True, layer_caps=caps)


# ---- where nothing can be saved, nothing changes ----------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, padding=st.integers(0, 7), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       ratio=st.sampled_from([0.05, 0.5, 1.0]), fill_to_k=st.booleans(), layer_caps=st.sampled_from([None, [1], [0, 2]]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_a_lone_row_keeps_its_routing_in_every_mode(shape, padding, seed, renormalize, ratio, fill_to_k, layer_caps, dtype):
    num_experts, top_k = shape
    policy = get_policy("anchor", num_experts, top_k, renormalize, ratio=ratio, fill_to_k=fill_to_k, layer_caps=layer_caps)
    logits = make_logits(1 + padding, num_experts, seed=seed, dtype=dtype)
    ids, weights = normal_routing(logits, top_k, renormalize)
    for layer in (0, 1):
        decision = policy.select(logits, ids, weights, torch.tensor(1), layer_id=layer)
        assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, rows=st.integers(2, 40), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       ratio=st.sampled_from([0.05, 0.5, 1.0]), spare=st.integers(0, 3))
def test_a_batch_that_fits_a_callers_budget_is_unchanged(shape, rows, seed, renormalize, ratio, spare):
    from lynx_sglang.policies import ExpertBudget

    num_experts, top_k = shape
    policy = get_policy("anchor", num_experts, top_k, renormalize, ratio=ratio)
    logits = logits_on_k_favourites(num_experts, top_k, rows, seed)
    ids, weights = normal_routing(logits, top_k, renormalize)
    budget = ExpertBudget.unlimited(num_experts).set_experts(min(num_experts, top_k + spare))
    decision = policy.select(logits, ids, weights, layer_id=0, budget=budget)
    assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, rows=st.integers(2, 40), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       fill_to_k=st.booleans(), ratio=st.sampled_from([0.05, 0.3, 0.6]), skew=st.sampled_from([0.0, 2.0]))
def test_the_batch_keeps_its_routing_unless_it_computes_fewer_experts(shape, rows, seed, renormalize, fill_to_k, ratio, skew):
    num_experts, top_k = shape
    policy = get_policy("anchor", num_experts, top_k, renormalize, ratio=ratio, fill_to_k=fill_to_k)
    logits = make_logits(rows, num_experts, seed=seed, skew=skew)
    ids, weights, decision = route(policy, logits)
    if torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights):
        return
    assert int(decision.active_mask.sum()) < int(ids.unique().numel())


def test_a_batch_whose_hitting_set_is_as_large_as_its_union_is_unchanged():
    # Greedy would pick expert 2 (acceptable to three tokens) and then still need expert 0: two experts,
    # as many as the tokens' own first choices {0, 1}; moving anyone to expert 2 would save nothing.
    logits = torch.full((4, 8), -9.0)
    logits[0, 0] = 2.0
    logits[1:, 1], logits[1:, 2] = 2.0, 1.8
    logits[1, 0] = 1.0
    for fill_to_k in (True, False):
        ids, weights, decision = route(get_policy("anchor", 8, 1, True, ratio=0.5, fill_to_k=fill_to_k), logits)
        assert torch.equal(decision.topk_ids, ids) and torch.equal(decision.topk_weights, weights)


# ---- fill_to_k=false --------------------------------------------------------------------------------

def test_without_fill_to_k_a_batch_computes_only_the_experts_its_voters_need():
    # Every token rates expert 3 within half its top-1: one expert serves all; with fill_to_k the
    # batch also computes the most chosen second expert.
    logits = torch.full((6, 8), -9.0)
    logits[:3, 3], logits[:3, 5] = 2.0, 1.8
    logits[3:, 6], logits[3:, 3] = 2.0, 1.7
    ids, weights = normal_routing(logits, 2, True)
    filled = get_policy("anchor", 8, 2, True, ratio=0.5).select(logits, ids, weights, layer_id=0)
    lean = get_policy("anchor", 8, 2, True, ratio=0.5, fill_to_k=False).select(logits, ids, weights, layer_id=0)
    assert lean.active_mask.nonzero().flatten().tolist() == [3]
    assert int(filled.active_mask.sum()) == 2 and filled.active_mask[3]
    assert lean.topk_ids[:, 0].tolist() == [3] * 6
    assert torch.equal(lean.topk_weights[:, 1], torch.zeros(6)) and torch.allclose(lean.topk_weights.sum(dim=1), torch.ones(6))


@settings(max_examples=40, deadline=None)
@given(shape=SHAPES, rows=st.integers(2, 48), seed=st.integers(0, 10_000), renormalize=st.booleans(),
       ratio=st.sampled_from([0.1, 0.3, 0.5, 0.8]), skew=st.sampled_from([0.0, 2.0]))
def test_without_fill_to_k_every_token_still_keeps_an_acceptable_expert(shape, rows, seed, renormalize, ratio, skew):
    num_experts, top_k = shape
    policy = get_policy("anchor", num_experts, top_k, renormalize, ratio=ratio, fill_to_k=False)
    filled = get_policy("anchor", num_experts, top_k, renormalize, ratio=ratio)
    logits = make_logits(rows, num_experts, seed=seed, skew=skew)
    ids, weights, decision = route(policy, logits)
    probs = torch.softmax(logits, dim=-1)
    first = decision.topk_ids[:, 0].long()
    assert torch.all(probs.gather(1, first.unsqueeze(1)).squeeze(1) >= ratio * probs.max(dim=1).values * (1 - 1e-6))
    used = decision.topk_ids.long()[decision.topk_weights > 0]
    assert torch.all(decision.active_mask[used])
    assert int(decision.active_mask.sum()) <= int(route(filled, logits)[2].active_mask.sum())
    sums = decision.topk_weights.sum(dim=1)
    assert torch.allclose(sums, torch.ones_like(sums) if renormalize else weights.sum(dim=1), atol=1e-5)


def test_without_fill_to_k_compiles_fullgraph_and_the_auto_path_agrees_with_the_reference():
    policy = get_policy("anchor", 16, 4, True, ratio=0.3, fill_to_k=False, layer_caps=[0, 2])
    logits = make_logits(12, 16, seed=4, skew=1.0)
    ids, weights = normal_routing(logits, 4, True)
    for layer_id in (0, 1):  # layer 1 is capped at two experts
        want = policy.select(logits, ids, weights, torch.tensor(10), layer_id=layer_id, implementation="torch")
        got = policy.select(logits, ids, weights, torch.tensor(10), layer_id=layer_id)  # the C++ op on CPU
        assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids)
        torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)
    want = policy.select(logits, ids, weights, torch.tensor(10), layer_id=0, implementation="torch")
    torch._dynamo.reset()
    graphs = []
    compiled = torch.compile(policy.select, fullgraph=True, backend=recording_backend(graphs))
    got = compiled(logits, ids, weights, torch.tensor(10), layer_id=0)
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and graphs
    for graph_module in graphs:
        assert_static(graph_module, "anchor fill_to_k=false")


def test_fill_to_k_must_be_a_boolean():
    with pytest.raises(PolicyConfigError, match="fill_to_k"):
        get_policy("anchor", 8, 2, True, fill_to_k="no")


@pytest.mark.parametrize("num_rows,num_experts,top_k", [(256, 128, 8), (512, 256, 8), (64, 8, 2), (3, 16, 4)])
@pytest.mark.parametrize("ratio,min_share,fill_to_k", [(0.3, 0.0, False), (0.5, 0.4, True), (0.9, 0.0, True),
                                                       (1.0, 0.0, False), (0.3, 0.6, False)])  # fmt: skip
def test_the_cpu_op_makes_anchors_decision_as_the_torch_reference(num_rows, num_experts, top_k, ratio, min_share,
                                                                   fill_to_k):  # fmt: skip
    from lynx_sglang.kernels.routing import fused_available

    if not fused_available("cpu"):
        pytest.skip("the C++ op is not available here")
    policy = get_policy("anchor", num_experts, top_k, True, ratio=ratio, min_share=min_share, fill_to_k=fill_to_k)
    logits = make_logits(num_rows, num_experts, seed=num_rows + num_experts, skew=2.0, grid=True)
    ids, weights = normal_routing(logits, top_k, True)
    num_real = torch.tensor(max(num_rows - 2, 1))
    want = policy.select(logits, ids, weights, num_real, implementation="torch")
    got = policy.select(logits, ids, weights, num_real, implementation="cpu")
    assert torch.equal(got.active_mask, want.active_mask) and torch.equal(got.topk_ids, want.topk_ids)
    torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0)
    if num_rows >= 64:
        assert int(want.active_mask.sum()) < num_experts  # it did prune
