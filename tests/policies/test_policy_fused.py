"""The fused paths (Triton kernels, here in Triton's interpreter; the C++ CPU op) against the torch
reference: the same active set and ids, weights within 1e-6 relative, on hypothesis batches with ties,
padding rows, NaN/inf rows, budgets, fp32/bf16/fp16 logits."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.policies import ExpertBudget, get_policy
from policies_testlib import FirstExpertsPolicy, device_for, make_logits, moved, normal_routing

IMPLEMENTATIONS = [name for name in ("triton", "cpu") if fused_available(name)]
pytestmark = pytest.mark.skipif(not IMPLEMENTATIONS, reason="no fused implementation available here")


def configurations(num_experts, top_k, renormalize):
    """(label, policy) for every policy with a fused rule, and policies whose decide runs in torch
    (anchor's hitting set: in torch on the Triton path, a C++ op of its own on the CPU path)."""
    budget = max(top_k, num_experts // 3)
    configs = [
        ("lynx", {}), ("lynx", {"alpha": 3.0, "beta": 4}), ("lynx", {"alpha": 0.7, "beta": 1, "tie_break": "index"}),
        ("oea", {}), ("oea", {"k0": 1}), ("budget", {"num_experts_kept": budget}), ("topn", {"num_experts_kept": budget}),
        ("coverage", {"mass_fraction": 0.7}), ("coverage", {"mass_fraction": 0.5, "max_dropped_mass": 0.2}),
        ("coverage", {"mass_fraction": 0.4, "max_dropped_mass": 0.0}),
        ("lynx-v1", {"threshold": 0.3}), ("random", {"num_experts_kept": budget}),
        ("anchor", {}), ("anchor", {"ratio": 0.3, "fill_to_k": False}), ("anchor", {"ratio": 0.8, "min_share": 0.4}),
    ]  # fmt: skip
    out = [(f"{name} {params}", get_policy(name, num_experts, top_k, renormalize, **params)) for name, params in configs]
    out.append(("third-party", FirstExpertsPolicy(num_experts, top_k, renormalize, n=max(1, num_experts // 2))))
    if top_k >= 2:  # last, so that every other configuration has the same index at every k
        out.append(("static-topk {}", get_policy("static-topk", num_experts, top_k, renormalize)))
    return out


NUM_CONFIGURATIONS = len(configurations(8, 2, True))


def model_ids(draw, ids, num_experts):
    """The model's top-k ids as a router other than plain softmax top-k may give them. The fast
    paths take these ids as a hint for each row's own top-k and must agree with the reference, which
    recomputes it from the logits, whether or not the hint is right."""
    kind = draw(st.sampled_from(["router", "router", "reordered", "biased", "repeated"]))
    if kind == "reordered":  # the same set in another order
        ids = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))]
    elif kind == "biased":  # a router with a correction bias: other experts than the logits' top-k
        shift = draw(st.integers(1, num_experts - 1))
        ids = (ids + shift) % num_experts
    elif kind == "repeated" and ids.shape[1] > 1:
        ids = ids.clone()
        ids[:, -1] = ids[:, 0]
    return ids.contiguous()


@st.composite
def batches(draw, max_rows=12, experts=(2, 3, 4, 8, 16)):
    num_experts = draw(st.sampled_from(experts))
    top_k = draw(st.integers(1, min(8, num_experts)))
    num_rows = draw(st.integers(1, max_rows))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    logits = make_logits(num_rows, num_experts, seed=draw(st.integers(0, 2**31 - 1)), dtype=dtype,
                         scale=draw(st.sampled_from([0.3, 2.0, 6.0])), skew=draw(st.sampled_from([0.0, 2.0])),
                         grid=draw(st.booleans()))  # fmt: skip
    renormalize = draw(st.booleans())
    ids, weights = normal_routing(logits, top_k, renormalize)
    ids = model_ids(draw, ids, num_experts)
    ids = ids.to(draw(st.sampled_from([torch.int32, torch.int64])))
    poisoned = draw(st.sets(st.integers(0, num_rows - 1), max_size=2))
    for row in poisoned:  # a NaN/inf row, with the garbage routing a model would give it
        logits[row, draw(st.integers(0, num_experts - 1))] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        weights[row] = float("nan")
    num_real = draw(st.one_of(st.none(), st.integers(0, num_rows)))
    if num_real is not None and draw(st.booleans()):
        num_real = torch.tensor(num_real)
    budget = None
    if draw(st.booleans()):
        budget = ExpertBudget.unlimited(num_experts)
        budget.set_experts(draw(st.integers(1, num_experts)))
        if draw(st.booleans()):
            budget.set_mass(draw(st.sampled_from([0.2, 0.5, 0.9, 1.0])))
    return logits, ids, weights, num_real, renormalize, budget


def assert_same_decision(label, fused, reference):
    assert fused.active_mask.device == reference.active_mask.device, label
    assert torch.equal(fused.active_mask, reference.active_mask), f"{label}: active set"
    assert torch.equal(fused.topk_ids, reference.topk_ids), f"{label}: ids"
    assert fused.topk_weights.dtype == reference.topk_weights.dtype, label
    torch.testing.assert_close(fused.topk_weights, reference.topk_weights, rtol=1e-6, atol=0, equal_nan=True,
                               msg=lambda m: f"{label}: weights: {m}")  # fmt: skip


def check_batch(batch, implementation, only=None):
    """Fused against reference, on the fused path's device, for every configuration (or only the one
    at index `only`, when the batch's top-k allows it)."""
    logits, ids, weights, num_real, renormalize, budget = moved(device_for(implementation), *batch)
    configs = configurations(logits.shape[1], ids.shape[1], renormalize)
    if only is not None:
        configs = configs[only : only + 1]
    for label, policy in configs:
        reference = policy.select(logits, ids, weights, num_real, budget=budget, implementation="torch")
        fused = policy.select(logits, ids, weights, num_real, budget=budget, implementation=implementation)
        assert_same_decision(f"{implementation} {label}", fused, reference)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), config=st.integers(0, 63))
def test_fused_matches_reference(implementation, batch, config):
    """One drawn configuration per batch (the interpreter is slow); the slow test runs them all."""
    check_batch(batch, implementation, only=config % NUM_CONFIGURATIONS)


# The interpreted Triton kernels take seconds per batch on a CPU, so the whole suite draws fewer
# batches for them; LYNX_TEST_THOROUGH=1 (or a GPU) draws twice as many.
THOROUGH = os.environ.get("LYNX_TEST_THOROUGH") == "1" or torch.cuda.is_available()
EVERY_POLICY_BATCHES = {"cpu": 60, "triton": 30 if THOROUGH else 15}


@pytest.mark.slow
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("config", range(NUM_CONFIGURATIONS))
def test_fused_matches_reference_every_policy(implementation, config):
    """Batches of their own for every configuration: one test each, so that workers share the work
    (on a GPU most of the time is Triton compiling each new specialisation of the kernels)."""
    @settings(max_examples=EVERY_POLICY_BATCHES[implementation], deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(batch=batches(max_rows=40, experts=(2, 8, 16, 60, 64, 128, 256)))
    def every_policy_agrees(batch):
        check_batch(batch, implementation, only=config)

    every_policy_agrees()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("num_rows", [8, 31])
def test_counts_that_reach_t_fit_their_packed_fields(implementation, num_rows):
    """Launch 1 packs per-expert counts several to a word, each field just wide enough for T
    (triton_plan.tally_layout): rows that all route alike push the votes, the sure takes and one
    lynx bin to T itself (T = 8 is a power of two: the widest count for its field); one row differs, so
    that the decision is not trivial."""
    logits = make_logits(1, 16, seed=4).repeat(num_rows, 1)
    logits[-1] = make_logits(1, 16, seed=5)[0]
    ids, weights = normal_routing(logits, 4, True)
    check_batch((logits, ids, weights, None, True, None), implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_negative_zero_logits_route_as_positive_zero(implementation):
    """The Triton path reads a row's best logit back from its order key, where -0.0 and +0.0 are one
    key: rows whose best logits are signed zeros (ties of -0.0 and +0.0 among them) still route as the
    reference does."""
    logits = -make_logits(6, 16, seed=6).abs() - 0.5
    logits[:, :4] = torch.tensor([-0.0, 0.0, -0.0, -0.25])
    logits[1, 1] = -0.0
    logits[2, :3] = -0.0
    ids, weights = normal_routing(logits, 4, True)
    check_batch((logits, ids, weights, None, True, None), implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fused_lynx_on_qwen3_shape(implementation):
    """E 128, top-8, 24 rows of skewed logits, default (alpha, beta), with and without a budget."""
    logits = make_logits(24, 128, seed=9, dtype=torch.bfloat16, skew=2.0)
    ids, weights = normal_routing(logits, 8, True)
    device = device_for(implementation)
    logits, ids, weights, num_real = moved(device, logits, ids, weights, torch.tensor(20))
    policy = get_policy("lynx", 128, 8, True)
    for budget in (None, ExpertBudget.unlimited(128, device=device).set_experts(20)):
        reference = policy.select(logits, ids, weights, num_real, budget=budget, implementation="torch")
        fused = policy.select(logits, ids, weights, num_real, budget=budget, implementation=implementation)
        assert_same_decision(implementation, fused, reference)
        assert int(reference.active_mask.sum()) < int(torch.unique(ids[:20]).numel())  # it did prune


@pytest.mark.skipif("triton" not in IMPLEMENTATIONS, reason="Triton is not available here")
def test_two_launches_per_call_and_no_host_sync():
    """Counted by instrumentation (Triton's interpreter here): every fused rule is two Triton launches
    and no torch op; a policy deciding in torch adds its own ops, still without a host sync (anchor's
    hitting set included)."""
    from lynx_sglang.tools.launch_count import count_launches

    logits = make_logits(5, 8, seed=4)
    ids, weights = normal_routing(logits, 2, True)
    budget = ExpertBudget.unlimited(8).set_experts(5)
    logits, ids, weights, num_real, budget = moved(device_for("triton"), logits, ids, weights, torch.tensor(4), budget)
    for label, policy in configurations(8, 2, True):
        counter = count_launches(policy.select, logits, ids, weights, num_real, budget=budget,
                                 implementation="triton")  # fmt: skip
        # anchor without fill_to_k runs every stage in torch: the fused shared stages fill up to k.
        fused_stages = 0 if getattr(policy, "fill_to_k", True) is False else 2
        assert (counter.triton, counter.host_syncs) == (fused_stages, 0), (label, counter.op_names)
        if policy.fused_rule() is not None:
            assert counter.torch_ops == 0, (label, counter.op_names)


def largest_batch(num_rows, num_experts, dtype, seed=11, biased_router=False):
    """Tied logits (a coarse grid), a NaN row, an inf row, 12 padding rows, top-8: the limits the fused
    kernels are compiled for (T 512, E 256), with a budget of 3/8 of the experts. A biased router's
    ids are not the logits' top-k, so the CPU op selects every row's own top-k from the logits."""
    logits = make_logits(num_rows, num_experts, seed=seed, dtype=dtype, grid=True, skew=2.0)
    ids, weights = normal_routing(logits, 8, True)
    if biased_router:
        bias = torch.randn(1, num_experts, generator=torch.Generator().manual_seed(seed))
        ids = (logits.float() + 2.0 * bias).topk(8, dim=-1).indices.to(torch.int32)
    logits[3, 7], logits[40, 0] = float("nan"), float("inf")
    weights[3] = weights[40] = float("nan")
    budget = ExpertBudget.unlimited(num_experts).set_experts(num_experts * 3 // 8)
    return logits, ids, weights, torch.tensor(num_rows - 12), True, budget


@pytest.mark.skipif("cpu" not in IMPLEMENTATIONS, reason="the C++ op is not available here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("biased_router", [False, True])
def test_cpu_op_at_the_largest_shape(dtype, biased_router):
    check_batch(largest_batch(512, 256, dtype, biased_router=biased_router), "cpu")
    check_batch(largest_batch(256, 128, dtype, seed=5, biased_router=biased_router), "cpu")
    # E not a multiple of the op's 16 lanes or 64-expert masks: the tails of its top-k selection.
    check_batch(largest_batch(96, 100, dtype, seed=7, biased_router=biased_router), "cpu")


@pytest.mark.slow
@pytest.mark.skipif("triton" not in IMPLEMENTATIONS, reason="Triton is not available here")
def test_triton_at_the_largest_shape():
    """Policies at T 512 over few experts (the row loops; all of them on a GPU or with
    LYNX_TEST_THOROUGH=1, five otherwise); lynx at T 512, E 256 on a GPU or with
    LYNX_TEST_THOROUGH=1 (one interpreted call at that shape takes a minute or two on a CPU; E 256 is
    covered at up to 40 rows above, and the C++ op at T 512, E 256 in every run)."""
    if not THOROUGH:  # the row loops are the same for every policy: one of each kind of rule
        for only in (0, 3, 5, 8, 10):  # lynx, oea, budget, coverage with a dropped-mass cap, lynx-v1
            check_batch(largest_batch(512, 16, torch.bfloat16), "triton", only=only)
        return
    check_batch(largest_batch(512, 16, torch.bfloat16), "triton")
    logits, ids, weights, num_real, _, budget = moved(device_for("triton"), *largest_batch(512, 256, torch.bfloat16))
    policy = get_policy("lynx", 256, 8, True)
    reference = policy.select(logits, ids, weights, num_real, budget=budget, implementation="torch")
    fused = policy.select(logits, ids, weights, num_real, budget=budget, implementation="triton")
    assert_same_decision("triton lynx T=512 E=256", fused, reference)


def test_lynx_beyond_the_exact_int64_vote_uses_the_reference():
    """T**(beta+1) >= 2**62: the fused paths decline (static check) and select runs the torch code."""
    from lynx_sglang.kernels.routing.rules import max_lynx_rows

    assert max_lynx_rows(8) ** 9 < 2**62 <= (max_lynx_rows(8) + 1) ** 9
    logits = make_logits(max_lynx_rows(8) + 1, 16, seed=2)
    ids, weights = normal_routing(logits, 2, True)
    policy = get_policy("lynx", 16, 2, True, beta=8)
    for implementation in IMPLEMENTATIONS:
        on_device = moved(device_for(implementation), logits, ids, weights)
        fused = policy.select(*on_device, implementation=implementation)
        assert_same_decision(implementation, fused, policy.select(*on_device, implementation="torch"))


def test_lynx_vote_base_is_the_number_of_voters():
    """S = sum over voters of B**(bin + beta) with B the number of voters (10 here), so a vote in a
    higher bin outweighs every vote in the bins below. Top-1, beta 2: expert 0 has two votes in bin 0
    (S = 2 B**2 + 8), expert 1 one in bin 0 and eight in bin -1 (S = B**2 + 8 B + 1). Row 9 holds both
    in its bin 0 and takes the first in the batch's order: expert 0 at B = 10, expert 1 at any base of
    6 or less. Row 0 votes for expert 0 in bin 0 but takes expert 7, so only row 9 can make 0 active."""
    logits = torch.full((10, 8), -5.0)  # bin -2 at alpha 1
    logits[0, 7] = logits[0, 0] = 0.0  # row 0: experts 7 and 0 in bin 0, takes 7 (the larger S)
    logits[1:9, 7] = 0.0  # rows 1-8: expert 7 in bin 0, expert 1 in bin -1
    logits[1:9, 1] = -1.5
    logits[9, 0] = logits[9, 1] = 0.0  # row 9: experts 0 and 1 in bin 0
    ids, weights = normal_routing(logits, 1, True)
    policy = get_policy("lynx", 8, 1, True, alpha=1.0, beta=2)
    assert policy.select(logits, ids, weights, implementation="torch").active_mask.nonzero().flatten().tolist() == [0, 7]
    for implementation in IMPLEMENTATIONS:
        on_device = moved(device_for(implementation), logits, ids, weights)
        reference = policy.select(*on_device, implementation="torch")  # on the fused path's device
        assert_same_decision(implementation, policy.select(*on_device, implementation=implementation), reference)


def test_fused_paths_decline_more_slots_than_experts():
    """k > E: launch 2 takes the voters as their votes over k (each votes for k distinct experts), which
    needs k <= E, so the fused paths decline and select runs the reference (a static check)."""
    from lynx_sglang.kernels.routing import LynxRule, RoutingCall, fused_supports

    logits = make_logits(4, 8, seed=3)
    ids, weights = normal_routing(logits, 8, True)
    assert fused_supports(RoutingCall(LynxRule(1.0, 4), logits, ids, weights, None, 8, True))
    wide_ids = torch.cat([ids, ids[:, :1]], dim=1)
    wide_weights = torch.cat([weights, weights[:, :1]], dim=1)
    assert not fused_supports(RoutingCall(LynxRule(1.0, 4), logits, wide_ids, wide_weights, None, 9, True))


@pytest.mark.skipif("triton" not in IMPLEMENTATIONS, reason="Triton is not available here")
def test_the_triton_path_refuses_anchors_rule_it_cannot_do():
    from lynx_sglang.kernels.routing import AnchorRule, RoutingCall, fused_route

    logits = make_logits(4, 8, seed=1)
    ids, weights = normal_routing(logits, 2, True)
    logits, ids, weights = moved(device_for("triton"), logits, ids, weights)
    call = RoutingCall(AnchorRule(log_ratio=-1.2, min_share_units=0, fill_to_k=False), logits, ids, weights, None, 2, True)
    with pytest.raises(TypeError, match="no fused kernel for rule AnchorRule"):
        fused_route(call, "triton")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_lynx_at_a_large_k_needs_many_experts_of_its_threshold_bin(implementation):
    """k 40 of 64 experts at a low alpha: rows need up to 40 experts of their threshold bin (on Triton a
    field of launch 1's row state wider than any top-8 batch needs) and take them in the batch's order."""
    logits = make_logits(5, 64, seed=12, scale=0.5)
    ids, weights = normal_routing(logits, 40, True)
    policy = get_policy("lynx", num_experts=64, top_k=40, alpha=0.3, beta=2, tie_break="index")
    on_device = moved(device_for(implementation), logits, ids, weights)
    reference = policy.select(*on_device, implementation="torch")
    fused = policy.select(*on_device, implementation=implementation)
    assert_same_decision(f"{implementation} lynx k=40", fused, reference)
    assert int(reference.active_mask.sum()) < 64  # it prunes: the picks decide the set
