"""Graph safety without a GPU, and the defined behaviour for NaN / inf router logits.

A compiled `select` traces the torch reference (the fused paths are opaque to dynamo), so compiled
results are compared with `implementation="torch"`.

`torch.compile(fullgraph=True)` raises on any graph break (`.item()`, `.tolist()`, a python branch
on a tensor value), even with the cheap "eager" backend. It does NOT raise on ops with
data-dependent output shapes (boolean-mask indexing, `torch.nonzero`): dynamo captures those with
"unbacked" symbolic sizes, which CUDA graphs cannot replay. So the recording backend below also
asserts that no value in the captured graph has an unbacked (data-dependent) size.
"""

import pytest
import torch
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.policies import Policy, get_policy, ids_to_mask
from policies_testlib import make_logits, normal_routing, policies_under_test

FORBIDDEN_TARGETS = {"item", "tolist", "nonzero", "masked_select", "unique", "_local_scalar_dense"}


def recording_backend(graphs):
    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward
    return backend


def assert_static(graph_module, label):
    for node in graph_module.graph.nodes:
        target = getattr(node.target, "__name__", str(node.target))
        assert target not in FORBIDDEN_TARGETS, f"{label}: {node.format_node()}"
        value = node.meta.get("example_value")
        if value is not None:
            assert not free_unbacked_symbols(value), f"{label}: data-dependent shape at {node.format_node()}"


def compile_inputs():
    logits = make_logits(6, 16, seed=5, dtype=torch.bfloat16)
    ids, weights = normal_routing(logits, 4, True)
    return logits, ids, weights


@pytest.mark.parametrize("renormalize", [True, False])
def test_every_policy_compiles_fullgraph_with_static_shapes(renormalize):
    logits, ids, weights = compile_inputs()
    for label, policy, _ in policies_under_test(16, 4, renormalize):
        # One policy object per process in serving: reset so that dynamo does not turn a float
        # parameter that differs between policies (alpha) into a graph input read with .item().
        torch._dynamo.reset()
        graphs = []
        compiled = torch.compile(policy.select, fullgraph=True, backend=recording_backend(graphs))
        for num_real in (torch.tensor(4), 5):  # a 0-dim tensor (CUDA-graph style) and a python int
            got = compiled(logits, ids, weights, num_real, layer_id=0)
            want = policy.select(logits, ids, weights, num_real, layer_id=0, implementation="torch")
            for a, b in zip(got, want):
                assert torch.equal(a, b), label
        assert graphs, label
        for graph_module in graphs:
            assert_static(graph_module, label)


def test_every_policy_compiles_through_aot_autograd():
    """aot_eager also functionalises the graph (catches in-place ops on views); still no inductor."""
    logits, ids, weights = compile_inputs()
    for label, policy, _ in policies_under_test(16, 4, True):
        torch._dynamo.reset()
        compiled = torch.compile(policy.select, fullgraph=True, backend="aot_eager")
        got = compiled(logits, ids, weights, torch.tensor(4))
        want = policy.select(logits, ids, weights, torch.tensor(4), implementation="torch")
        for a, b in zip(got, want):
            assert torch.equal(a, b), label


# ---- NaN / inf ------------------------------------------------------------------------------
POISONS = {
    "nan everywhere": lambda row: torch.full_like(row, float("nan")),
    "one nan": lambda row: row.index_fill(0, torch.tensor([3]), float("nan")),
    "one +inf": lambda row: row.index_fill(0, torch.tensor([5]), float("inf")),
    "one -inf": lambda row: row.index_fill(0, torch.tensor([0]), float("-inf")),
    "all -inf": lambda row: torch.full_like(row, float("-inf")),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_row_does_not_vote_or_poison_others(poison, renormalize, dtype):
    num_rows, num_experts, top_k, bad_row, num_real = 12, 16, 4, 7, 10
    clean = make_logits(num_rows, num_experts, seed=11, dtype=dtype, skew=1.0)
    logits = clean.clone()
    logits[bad_row] = POISONS[poison](logits[bad_row].float()).to(dtype)
    ids, weights = normal_routing(logits, top_k, renormalize)  # garbage (NaN) in the bad row, as a model gives
    # The same batch without the bad row: what every other row must see.
    keep = [t for t in range(num_rows) if t != bad_row]
    ref_ids, ref_weights = normal_routing(clean[keep], top_k, renormalize)
    for label, policy, kind in policies_under_test(num_experts, top_k, renormalize):
        decision = policy.select(logits, ids, weights, num_real=num_real)
        without = policy.select(clean[keep], ref_ids, ref_weights, num_real=num_real - 1)
        if kind == "identity":
            assert torch.equal(decision.topk_ids, ids), label
            continue
        assert torch.equal(decision.active_mask, without.active_mask), f"{label}: the bad row voted"
        assert torch.equal(decision.topk_ids[keep], without.topk_ids), label
        assert torch.equal(decision.topk_weights[keep], without.topk_weights), label
        # The bad row itself: routed inside the active set with finite, non-negative weights.
        bad_ids, bad_weights = decision.topk_ids[bad_row].long(), decision.topk_weights[bad_row]
        assert decision.active_mask[bad_ids].all(), label
        assert torch.isfinite(bad_weights).all() and (bad_weights >= 0).all(), label
        original_mass = weights[bad_row].sum()
        target = 1.0 if renormalize or not torch.isfinite(original_mass) else float(original_mass)
        assert abs(float(bad_weights.sum()) - target) < 1e-5, label


@pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
def test_one_rule_for_non_finite_rows_in_every_implementation_and_the_servers_bookkeeping():
    """The one rule (docs/policies.md): a batch with NaN, +inf and all -inf rows, and padding, decides
    alike in the torch reference, the Triton launches and the C++ op; the bookkeeping after it (torch,
    Triton, C++) keeps that decision: non-finite logits are no fallback."""
    from lynx_sglang.kernels.bookkeeping import finalize_torch
    from lynx_sglang.kernels.bookkeeping.cpu import finalize_cpu
    from lynx_sglang.kernels.bookkeeping.triton_launch import finalize_triton

    num_rows, num_experts, top_k, num_real = 12, 16, 4, torch.tensor(10)
    logits = make_logits(num_rows, num_experts, seed=21, skew=1.0)
    logits[2], logits[5, 3], logits[7] = float("nan"), float("inf"), float("-inf")
    ids, weights = normal_routing(logits, top_k, True)  # NaN weights in the NaN row, as a model gives
    implementations = ["triton"] + (["cpu"] if fused_available("cpu") else [])
    finalizers = {"torch": finalize_torch, "triton": finalize_triton}
    if fused_available("cpu"):
        finalizers["cpu"] = finalize_cpu
    for label, policy, kind in policies_under_test(num_experts, top_k, True):
        want = policy.select(logits, ids, weights, num_real, implementation="torch")
        if kind != "identity":
            for row in (2, 5, 7):  # routed inside the active set, with finite weights
                assert want.active_mask[want.topk_ids[row].long()].all(), label
            assert torch.isfinite(want.topk_weights[:10]).all(), label
        for implementation in implementations:
            got = policy.select(logits, ids, weights, num_real, implementation=implementation)
            assert torch.equal(got.topk_ids, want.topk_ids) and torch.equal(got.active_mask, want.active_mask), (
                label, implementation)  # fmt: skip
            torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-6, atol=0, equal_nan=True)
        if kind == "identity":
            continue  # the model's routing is not proposed: nothing to check
        for name, finalize in finalizers.items():
            final_ids, final_weights, fell_back, _ = finalize(logits, ids, weights, want.topk_ids, want.topk_weights,
                                                              num_real, mask=True)  # fmt: skip
            assert not bool(fell_back), (label, name)
            assert torch.equal(final_ids, want.topk_ids), (label, name)
            assert torch.equal(final_weights, want.topk_weights), (label, name)


def test_nan_in_padding_rows_is_ignored():
    logits = make_logits(8, 16, seed=12)
    ids, weights = normal_routing(logits, 4, True)
    poisoned = logits.clone()
    poisoned[5:] = float("nan")
    for label, policy, _ in policies_under_test(16, 4, True):
        a = policy.select(logits, ids, weights, num_real=5)
        b = policy.select(poisoned, ids, weights, num_real=5)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), label


def test_baseline_active_mask_counts_only_real_rows():
    logits = make_logits(8, 16, seed=13)
    ids, weights = normal_routing(logits, 2, True)
    decision = get_policy("baseline", 16, 2).select(logits, ids, weights, num_real=3)
    assert torch.equal(decision.active_mask, ids_to_mask(ids[:3], None, 16))


class _NonzeroPolicy(Policy):  # deliberately unsafe
    name = "unsafe-nonzero"

    def decide(self, ctx):
        chosen = torch.nonzero(ctx.topk_counts()).flatten()  # data-dependent shape
        return torch.zeros(self.num_experts, dtype=torch.bool).index_fill(0, chosen, True)


class _ItemPolicy(_NonzeroPolicy):
    name = "unsafe-item"

    def decide(self, ctx):
        if ctx.topk_counts().max().item() > 1:  # host sync + python branch on data
            return ctx.topk_counts() > 1
        return ctx.topk_counts() > 0


def test_the_checks_catch_unsafe_policies():
    logits, ids, weights = compile_inputs()
    torch._dynamo.reset()
    graphs = []
    torch.compile(_NonzeroPolicy(16, 4).select, fullgraph=True, backend=recording_backend(graphs))(
        logits, ids, weights)
    with pytest.raises(AssertionError, match="nonzero|data-dependent"):
        for graph_module in graphs:
            assert_static(graph_module, "unsafe")
    torch._dynamo.reset()
    with pytest.raises(Exception):
        torch.compile(_ItemPolicy(16, 4).select, fullgraph=True, backend="eager")(logits, ids, weights)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lynx", "coverage"])
def test_inductor_compiled_select_matches_eager(name):
    """The real compiler (inductor, C++ on CPU; ~30 s per policy here). Fused softmax may round the
    last bit differently, so weights are compared with a tolerance; ids and masks exactly."""
    logits = make_logits(32, 64, seed=21, skew=1.0)
    ids, weights = normal_routing(logits, 8, True)
    policy = get_policy(name, 64, 8, True)
    torch._dynamo.reset()
    got = torch.compile(policy.select, fullgraph=True)(logits, ids, weights, torch.tensor(30))
    want = policy.select(logits, ids, weights, torch.tensor(30), implementation="torch")
    assert torch.equal(got.topk_ids, want.topk_ids) and torch.equal(got.active_mask, want.active_mask)
    torch.testing.assert_close(got.topk_weights, want.topk_weights)


@pytest.mark.parametrize("name,params", [("lynx", {}), ("oea", {}), ("anchor", {}), ("anchor", {"fill_to_k": False})])
def test_cache_aware_policies_compile_fullgraph_with_a_resident_mask(name, params):
    logits, ids, weights = compile_inputs()
    policy = get_policy(name, 16, 4, prefer_resident=True, **params)
    resident = torch.zeros(16, dtype=torch.bool)
    resident[[1, 5, 6, 11]] = True
    torch._dynamo.reset()
    graphs = []
    compiled = torch.compile(policy.select, fullgraph=True, backend=recording_backend(graphs))
    got = compiled(logits, ids, weights, torch.tensor(5), layer_id=0, resident=resident)
    want = policy.select(logits, ids, weights, torch.tensor(5), layer_id=0, implementation="torch", resident=resident)
    for a, b in zip(got, want):
        assert torch.equal(a, b), name
    assert graphs
    for graph_module in graphs:
        assert_static(graph_module, name)
