"""Exact agreement of `lynx`, `lynx-v1` and `oea` with the slow python-loop references of
policies_testlib, on many small random cases (coarse-grid logits make ties common)."""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lynx_sglang.policies import get_policy
from policies_testlib import (
    AmbiguousCase,
    make_logits,
    normal_routing,
    reference_lynx,
    reference_lynx_v1,
    reference_oea,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def small_cases(draw):
    num_experts = draw(st.sampled_from([2, 3, 4, 6, 8, 16]))
    top_k = draw(st.integers(1, min(4, num_experts - 1)))
    num_rows = draw(st.integers(1, 12))
    logits = make_logits(
        num_rows, num_experts, seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])),
        scale=draw(st.sampled_from([0.3, 1.0, 3.0])), skew=draw(st.sampled_from([0.0, 1.0, 3.0])),
        grid=draw(st.booleans()),
    )
    num_real = draw(st.integers(0, num_rows))
    renormalize = draw(st.booleans())
    ids, weights = normal_routing(logits, top_k, renormalize)
    return logits, ids, weights, num_real, renormalize


def assert_matches(decision, expected, num_real):
    ids, weights, active = expected
    assert decision.active_mask.tolist() == active
    assert decision.topk_ids.tolist() == ids
    torch.testing.assert_close(decision.topk_weights.double(), torch.tensor(weights, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


@SETTINGS
@given(case=small_cases(), alpha=st.sampled_from([0.7, 1.0, 2.0, 3.0]), beta=st.integers(1, 4),
       num_real_as_tensor=st.booleans(), tie_break=st.sampled_from(["mass", "index"]))
def test_lynx_matches_reference(case, alpha, beta, num_real_as_tensor, tie_break):
    logits, ids, weights, num_real, renormalize = case
    policy = get_policy("lynx", logits.shape[1], ids.shape[1], renormalize, alpha=alpha, beta=beta,
                        tie_break=tie_break)
    given_num_real = torch.tensor(num_real) if num_real_as_tensor else num_real
    decision = policy.select(logits, ids, weights, num_real=given_num_real)
    expected = reference_lynx(logits, ids, weights, num_real, alpha, beta, renormalize, tie_break)
    assert_matches(decision, expected, num_real)


@SETTINGS
@given(case=small_cases(), threshold=st.sampled_from([0.0, 0.2, 0.5, 0.8]))
def test_lynx_v1_matches_reference(case, threshold):
    logits, ids, weights, num_real, renormalize = case
    policy = get_policy("lynx-v1", logits.shape[1], ids.shape[1], renormalize, threshold=threshold)
    try:
        expected = reference_lynx_v1(logits, ids, weights, num_real, threshold, renormalize)
    except AmbiguousCase:
        assume(False)
    assert_matches(policy.select(logits, ids, weights, num_real=num_real), expected, num_real)


@SETTINGS
@given(case=small_cases(), data=st.data())
def test_oea_matches_reference(case, data):
    logits, ids, weights, num_real, renormalize = case
    k0 = data.draw(st.integers(1, ids.shape[1]))
    policy = get_policy("oea", logits.shape[1], ids.shape[1], renormalize, k0=k0)
    expected = reference_oea(logits, ids, weights, num_real, k0, renormalize)
    assert_matches(policy.select(logits, ids, weights, num_real=num_real), expected, num_real)


def test_lynx_worked_example():
    """Hand-checked: 3 tokens, 4 experts, top-1, alpha=1, beta=1 (bins 0 or -1), B=3.
    Token 0 has expert 0 far ahead; tokens 1 and 2 have experts 1 and 2 within one e-fold,
    so experts 1 and 2 sit in bin 0 for both of them and the batch vote decides."""
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0],
                           [0.0, 2.0, 1.5, -5.0],
                           [0.0, 1.5, 2.0, -5.0]])
    # Token 1: q = [-1, 0, 0, -1]; token 2: q = [-1, 0, 0, -1]; token 0: q = [0, -1, -1, -1].
    # S = [1 + 2/3, 1/3 + 2, 1/3 + 2, 1].  Token 1: m1 = 0 + (S1 - 1)/3 = 4/9, m2 = 4/9: a tie,
    # lower index wins -> expert 1. Token 2 likewise -> expert 1. Token 0 -> expert 0.
    ids, weights = normal_routing(logits, 1, True)
    policy = get_policy("lynx", 4, 1, True, alpha=1.0, beta=1, tie_break="index")
    decision = policy.select(logits, ids, weights)
    assert decision.active_mask.tolist() == [True, True, False, False]
    assert decision.topk_ids.flatten().tolist() == [0, 1, 1]
    assert decision.topk_weights.flatten().tolist() == [1.0, 1.0, 1.0]


def test_lynx_tie_break_by_mass_keeps_a_lone_token_on_its_choice():
    """One token, three experts in bin 0 (alpha=1, beta=1: every logit within 1 of the top). The
    index rule moves it to expert 0 for nothing; the mass rule keeps its own top-1, expert 2."""
    logits = torch.tensor([[1.0, 1.2, 1.5, -5.0]])
    ids, weights = normal_routing(logits, 1, True)
    by_index = get_policy("lynx", 4, 1, True, alpha=1.0, beta=1, tie_break="index").select(logits, ids, weights)
    by_mass = get_policy("lynx", 4, 1, True, alpha=1.0, beta=1).select(logits, ids, weights)
    assert by_index.topk_ids.tolist() == [[0]]
    assert by_mass.topk_ids.tolist() == [[2]] and torch.equal(by_mass.topk_weights, weights)
