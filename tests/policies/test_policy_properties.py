"""Property tests over random shapes for every built-in policy (docs/policies.md, "Guarantees")."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lynx_sglang.policies import get_policy, ids_to_mask, remap_topk
from policies_testlib import make_logits, normal_routing, policies_under_test, weight_tolerance

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw):
    num_experts = draw(st.sampled_from([8, 16, 60, 64, 128]))
    top_k = draw(st.sampled_from([k for k in (1, 2, 4, 6, 8) if k < num_experts]))
    num_rows = draw(st.one_of(st.integers(1, 8), st.integers(1, 256)))
    logits = make_logits(
        num_rows, num_experts, seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])),
        scale=draw(st.sampled_from([0.5, 2.0, 4.0])), skew=draw(st.sampled_from([0.0, 1.0, 4.0])),
        grid=draw(st.booleans()),
    )
    num_real = draw(st.integers(0, num_rows))
    if draw(st.booleans()):
        num_real = torch.tensor(num_real)
    renormalize = draw(st.booleans())
    ids, weights = normal_routing(logits, top_k, renormalize)
    ids = ids.to(draw(st.sampled_from([torch.int32, torch.int64])))
    return logits, ids, weights, num_real, renormalize


def check_decision(label, kind, policy, decision, logits, ids, weights, num_real, renormalize):
    num_rows, top_k = ids.shape
    real = int(num_real)
    out_ids, out_weights, active = decision
    assert out_ids.shape == ids.shape and out_ids.dtype == ids.dtype, label
    assert out_weights.shape == weights.shape and out_weights.dtype == weights.dtype, label
    assert active.shape == (policy.num_experts,) and active.dtype == torch.bool, label

    # Padding rows pass through unchanged.
    assert torch.equal(out_ids[real:], ids[real:]), label
    assert torch.equal(out_weights[real:], weights[real:]), label

    r_ids, r_weights = out_ids[:real].long(), out_weights[:real]
    assert torch.isfinite(r_weights).all() and (r_weights >= 0).all(), label
    used = r_weights > 0
    expected_slots = policy.slots_used if kind == "static" else top_k
    assert (used.sum(-1) == expected_slots).all(), (label, used.sum(-1))
    # Used slots hold distinct experts, all active.
    same = r_ids.unsqueeze(2) == r_ids.unsqueeze(1)
    both_used = used.unsqueeze(2) & used.unsqueeze(1)
    off_diagonal = ~torch.eye(top_k, dtype=torch.bool)
    assert not (same & both_used & off_diagonal).any(), label
    assert active[r_ids][used].all(), label
    # Weight sums.
    target = torch.ones(real) if renormalize else weights[:real].sum(-1)
    torch.testing.assert_close(r_weights.sum(-1), target, rtol=weight_tolerance(weights.dtype), atol=1e-6)

    if kind == "identity":
        assert torch.equal(out_ids, ids) and torch.equal(out_weights, weights), label
        assert torch.equal(active, ids_to_mask(ids[:real], None, policy.num_experts)), label
    if kind != "static":
        # A token whose experts all stayed active is not touched at all.
        untouched = active[ids[:real].long()].all(-1)
        assert torch.equal(out_ids[:real][untouched], ids[:real][untouched]), label
        assert torch.equal(out_weights[:real][untouched], weights[:real][untouched]), label
    if kind == "budget":
        assert int(active.sum()) <= policy.num_experts_kept, label
    if label.startswith("random"):
        assert int(active.sum()) == policy.num_experts_kept, label


@SETTINGS
@given(batch=batches(), other_seed=st.integers(0, 2**31 - 1))
def test_every_policy_keeps_its_guarantees(batch, other_seed):
    logits, ids, weights, num_real, renormalize = batch
    num_rows, num_experts = logits.shape
    top_k = ids.shape[1]
    real = int(num_real)
    # The same real rows with different padding rows.
    other = make_logits(num_rows, num_experts, seed=other_seed, dtype=logits.dtype, scale=5.0)
    other[:real] = logits[:real]
    other_ids, other_weights = normal_routing(other, top_k, renormalize)
    for label, policy, kind in policies_under_test(num_experts, top_k, renormalize):
        decision = policy.select(logits, ids, weights, num_real=num_real)
        check_decision(label, kind, policy, decision, logits, ids, weights, num_real, renormalize)
        again = policy.select(logits.clone(), ids.clone(), weights.clone(), num_real=num_real)
        assert all(torch.equal(a, b) for a, b in zip(decision, again)), f"{label}: not deterministic"
        padded = policy.select(other, other_ids, other_weights, num_real=num_real)
        assert torch.equal(padded.active_mask, decision.active_mask), f"{label}: padding changed the set"
        assert torch.equal(padded.topk_ids[:real], decision.topk_ids[:real]), label
        assert torch.equal(padded.topk_weights[:real], decision.topk_weights[:real]), label


@SETTINGS
@given(batch=batches())
def test_remap_is_identity_when_every_chosen_expert_is_active(batch):
    logits, ids, weights, num_real, renormalize = batch
    real = int(num_real)
    union = ids_to_mask(ids[:real], None, logits.shape[1])
    new_ids, new_weights = remap_topk(logits, ids, weights, union, renormalize=renormalize)
    assert torch.equal(new_ids[:real], ids[:real])
    assert torch.equal(new_weights[:real], weights[:real])


@pytest.mark.parametrize("renormalize", [True, False])
def test_remap_moves_dropped_choice_to_next_best_active_expert(renormalize):
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    probs = torch.softmax(logits, -1)
    ids = torch.tensor([[0, 1]])
    weights = probs[:, :2] / probs[:, :2].sum() if renormalize else probs[:, :2]
    active = torch.tensor([False, True, True, True])
    new_ids, new_weights = remap_topk(logits, ids, weights, active, renormalize=renormalize)
    assert new_ids.tolist() == [[1, 2]]
    expected = probs[0, 1:3] / probs[0, 1:3].sum() * (1.0 if renormalize else probs[0, :2].sum())
    torch.testing.assert_close(new_weights[0], expected)


def test_remap_keep_original_rows_and_fewer_slots():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    ids, weights = normal_routing(logits, 2, True)
    active = torch.tensor([False, False, True, True])
    new_ids, new_weights = remap_topk(logits, ids, weights, active, keep_original_rows=torch.tensor([True, False]),
                                      slots_used=1)
    assert new_ids.tolist() == [[0, 1], [3, 3]]
    assert new_weights[1].tolist() == [1.0, 0.0]
    assert torch.equal(new_weights[0], weights[0])


def test_static_topk_zero_weight_slots_repeat_an_active_expert():
    logits = make_logits(5, 16, seed=1)
    ids, weights = normal_routing(logits, 4, True)
    policy = get_policy("static-topk", 16, 4, True, top_k_used=1)
    decision = policy.select(logits, ids, weights)
    assert (decision.topk_weights[:, 1:] == 0).all()
    assert (decision.topk_ids[:, 1:] == decision.topk_ids[:, :1]).all()
    assert torch.equal(decision.topk_ids[:, 0], ids[:, 0])


def test_layers_not_selected_pass_through():
    logits = make_logits(6, 16, seed=2)
    ids, weights = normal_routing(logits, 4, True)
    policy = get_policy("budget", 16, 4, True, num_experts_kept=4, layers=[1, 3])
    skipped = policy.select(logits, ids, weights, num_real=4, layer_id=2)
    assert torch.equal(skipped.topk_ids, ids) and torch.equal(skipped.topk_weights, weights)
    assert torch.equal(skipped.active_mask, ids_to_mask(ids[:4], None, 16))
    pruned = policy.select(logits, ids, weights, num_real=4, layer_id=3)
    assert int(pruned.active_mask.sum()) <= 4
    with pytest.raises(ValueError, match="needs layer_id"):
        policy.select(logits, ids, weights)


def test_random_depends_on_seed_and_layer_not_on_hidden_state():
    logits = make_logits(32, 64, seed=3)
    ids, weights = normal_routing(logits, 8, True)
    first = get_policy("random", 64, 8, True, num_experts_kept=16, seed=1)
    masks = {(seed, layer): get_policy("random", 64, 8, True, num_experts_kept=16, seed=seed)
             .select(logits, ids, weights, layer_id=layer).active_mask
             for seed in (1, 2) for layer in (0, 1)}
    assert torch.equal(first.select(logits, ids, weights, layer_id=0).active_mask, masks[1, 0])
    assert len({tuple(mask.tolist()) for mask in masks.values()}) == 4


def test_coverage_cap_lets_tokens_keep_their_experts():
    logits = make_logits(16, 64, seed=4, scale=3.0)
    ids, weights = normal_routing(logits, 8, True)
    loose = get_policy("coverage", 64, 8, True, mass_fraction=0.3).select(logits, ids, weights)
    capped = get_policy("coverage", 64, 8, True, mass_fraction=0.3, max_dropped_mass=0.0).select(
        logits, ids, weights)
    assert int(loose.active_mask.sum()) < int(capped.active_mask.sum())
    # A cap of 0 means no token may drop anything: routing is unchanged.
    assert torch.equal(capped.topk_ids, ids) and torch.equal(capped.topk_weights, weights)


def test_lynx_float64_path_for_huge_keys_still_keeps_the_guarantees():
    """T**(beta+1) * (beta+2) * E >= 2**62 switches lynx's vote to float64 (exact up to 2**53)."""
    logits = make_logits(200, 64, seed=7, skew=2.0)
    ids, weights = normal_routing(logits, 8, True)
    policy = get_policy("lynx", 64, 8, True, alpha=3.0, beta=8)
    assert 200 ** 9 * 10 * 64 >= 2**62
    decision = policy.select(logits, ids, weights, num_real=150)
    check_decision("lynx beta=8", "free", policy, decision, logits, ids, weights, 150, True)
    assert int(decision.active_mask.sum()) < int(ids_to_mask(ids[:150], None, 64).sum())

