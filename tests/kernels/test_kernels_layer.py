"""The serving runtime's per-layer bookkeeping (checks, final routing, mask, statistics) in one Triton
launch (kernels/bookkeeping/triton_launch.py; under the interpreter without a GPU) and in one call into
the C++ library on a CPU (kernels/bookkeeping/cpu.py), against the torch reference and the runtime."""

import pytest
import torch

from lynx_sglang.kernels.bookkeeping import finalize_torch, record_torch
from lynx_sglang.kernels.bookkeeping.layout import FIELDS
from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.kernels.bookkeeping import bookkeeping_named
from lynx_sglang.scheduler.stats import MoeLayerInfo, RoutingStats
from lynx_sglang.tools.launch_count import count_launches

pytestmark = pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# "triton" and "torch" everywhere; "cpu" (the C++ op) where the tensors are on a CPU and it builds.
IMPLEMENTATIONS = ["triton"] + (["cpu"] if DEVICE.type == "cpu" and fused_available("cpu") else [])


def layer_calls(num_rows, num_experts, top_k, seed, ids_dtype=torch.int32, logits_dtype=torch.float32):
    """Real and padding rows, NaN / +inf / all -inf rows, a -1 id, repeated ids, kept and rerouted rows.
    The real rows are the first num_real: a 0-dim device tensor (as SGLang passes it), an int, or None
    (all real), by seed."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_experts, generator=generator) * 2
    original = torch.softmax(logits, -1).topk(top_k, dim=-1).indices
    final = original.clone()
    rerouted = torch.rand(num_rows, generator=generator) < 0.5
    final[rerouted, -1] = torch.randint(0, num_experts, (int(rerouted.sum()),), generator=generator)
    if num_rows >= 6:
        logits[1, 0] = float("nan")
        logits[2, 3] = float("inf")
        logits[3] = float("-inf")
        original[-1, 0] = -1  # garbage in a padding row: clamped, never counted
        final[5] = final[5, :1]  # one expert in every slot
    num_real = [torch.tensor(max(1, num_rows - 2), device=DEVICE), max(1, num_rows - 2), None][seed % 3]
    if num_real is None:
        original[-1, 0] = original[-1, 1 % top_k]  # every row is real here: no garbage
    moved = lambda t: t.to(DEVICE)  # noqa: E731
    return (num_real, moved(logits.to(logits_dtype)), moved(original.to(ids_dtype)), moved(final.to(ids_dtype)))


def recorded(implementation, calls, fell_back_at=()):
    layers = [MoeLayerInfo(0, calls[0][1].shape[1], calls[0][2].shape[1], expert_bytes=1)]
    stats = RoutingStats(layers, DEVICE, bookkeeping_named(implementation))
    for index, (num_real, logits, original, final) in enumerate(calls):
        # a flag tensor, or None where the call did not fall back
        fell_back = torch.tensor(index in fell_back_at, device=DEVICE)
        if index % 2 == 0 and index not in fell_back_at:
            fell_back = None  # the same as a false flag
        stats.record(0, num_real, logits, original, final, fell_back)
        if index == 1:
            stats.end_step()
    stats.end_step()
    return stats


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("num_rows,num_experts,top_k", [(1, 8, 2), (7, 8, 2), (40, 60, 4), (130, 128, 8)])
@pytest.mark.parametrize("dtypes", [(torch.int32, torch.float32), (torch.int64, torch.bfloat16)])
def test_one_launch_adds_the_same_figures_as_the_torch_ops(implementation, num_rows, num_experts, top_k, dtypes):
    calls = [layer_calls(num_rows, num_experts, top_k, seed, *dtypes) for seed in range(3)]
    reference = recorded("torch", calls, fell_back_at=(1,))
    fused = recorded(implementation, calls, fell_back_at=(1,))
    mass = FIELDS.index("mass_dropped")
    counts = [i for i in range(len(FIELDS)) if i != mass]
    assert torch.equal(fused.table[:, counts], reference.table[:, counts]), (fused.table, reference.table)
    torch.testing.assert_close(fused.table[:, mass], reference.table[:, mass], rtol=1e-5, atol=1e-6)
    assert fused.table[0, FIELDS.index("fallbacks")] == 1 and fused.table[0, FIELDS.index("steps")] == 2
    assert torch.equal(fused.fallback_steps, reference.fallback_steps) and fused.fallback_steps == 1
    if num_rows > 2:  # the cases above do lose experts: the mass is not trivially 0
        assert fused.table[0, mass] > 0


def implementation_of(name):
    """(record, finalize) of one implementation of the bookkeeping."""
    if name == "triton":
        from lynx_sglang.kernels.bookkeeping.triton_launch import finalize_triton, record_triton

        return record_triton, finalize_triton
    if name == "cpu":
        from lynx_sglang.kernels.bookkeeping.cpu import finalize_cpu, record_cpu

        return record_cpu, finalize_cpu
    return record_torch, finalize_torch


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("num_rows,num_experts,top_k", [(1, 8, 2), (9, 16, 4), (40, 60, 4)])
def test_each_implementation_finalizes_and_records_as_the_torch_reference(implementation, num_rows, num_experts, top_k):
    """The same final routing, fallback flag, mask and table row as reference.finalize_torch, for calls
    that keep their decision (real rows with NaN, +inf or only -inf logits among them: the policy routed
    them, no fallback) and one that falls back (a NaN proposed weight in a real row), then record alone."""
    record, finalize = implementation_of(implementation)
    rows = {name: torch.zeros(len(FIELDS), dtype=torch.float64, device=DEVICE) for name in ("fused", "torch")}
    steps = {name: torch.zeros((), dtype=torch.float64, device=DEVICE) for name in rows}
    for seed in range(3):
        num_real, logits, original, proposed = layer_calls(num_rows, num_experts, top_k, seed)
        weights = torch.rand(original.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
        proposed_weights = weights * 2
        if seed == 1:
            proposed_weights[0, 0] = float("nan")  # row 0 is always real: a proposal the layer cannot run
        got = finalize(logits, original, weights, proposed, proposed_weights, num_real, mask=True,
                       table_row=rows["fused"], step_fell_back=steps["fused"])  # fmt: skip
        want = finalize_torch(logits, original, weights, proposed, proposed_weights, num_real, mask=True,
                              table_row=rows["torch"], step_fell_back=steps["torch"])  # fmt: skip
        assert bool(want[2]) is (seed == 1)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and bool(got[2]) == bool(want[2])
        assert torch.equal(got[3], want[3])
        mask = record(rows["fused"], steps["fused"], num_real, logits, original, proposed, None, mask=True)
        assert torch.equal(mask, record_torch(rows["torch"], steps["torch"], num_real, logits, original, proposed,
                                              None, mask=True))  # fmt: skip
    torch.testing.assert_close(rows["fused"], rows["torch"], rtol=1e-5, atol=1e-6)
    assert torch.equal(steps["fused"], steps["torch"])
    assert rows["torch"][FIELDS.index("steps")] >= 3  # figures were added: the comparison is not vacuous
    assert rows["torch"][FIELDS.index("fallbacks")] == 1 and steps["torch"] == 1


def test_a_bad_statistics_row_is_refused_by_every_implementation():
    num_real, logits, original, proposed = layer_calls(4, 8, 2, seed=0)
    step = torch.zeros((), dtype=torch.float64, device=DEVICE)
    for implementation in IMPLEMENTATIONS:
        record, _ = implementation_of(implementation)
        for row, step_flag in ((torch.zeros(len(FIELDS) - 1, dtype=torch.float64, device=DEVICE), step),
                               (torch.zeros(len(FIELDS), device=DEVICE), step),
                               (torch.zeros(len(FIELDS), dtype=torch.float64, device=DEVICE), None)):
            with pytest.raises(ValueError, match=rf"table_row must be a contiguous float64 \[{len(FIELDS)}\] row"):
                record(row, step_flag, num_real, logits, original, proposed)


def test_the_bookkeeping_is_chosen_once_per_device():
    from lynx_sglang.kernels.backend import fused_backend
    from lynx_sglang.kernels.bookkeeping import bookkeeping_for as bookkeeping_on

    assert bookkeeping_on("cpu").name == ("cpu" if fused_available("cpu") else "torch") == fused_backend("cpu")
    assert bookkeeping_on(torch.device("cpu")) is bookkeeping_on("cpu")  # chosen once
    assert bookkeeping_on("meta").name == "torch"
    if torch.cuda.is_available():
        assert bookkeeping_on("cuda").name == "triton" == fused_backend("cuda")


def test_the_fused_record_is_one_triton_launch_and_no_torch_op():
    num_real, logits, original, final = layer_calls(16, 64, 8, seed=0)  # num_real: a 0-dim device tensor
    stats = RoutingStats([MoeLayerInfo(3, 64, 8, expert_bytes=1)], DEVICE, bookkeeping_named("triton"))
    for fell_back in (torch.tensor(False, device=DEVICE), None):
        counter = count_launches(stats.record, 3, num_real, logits, original, final, fell_back)
        assert (counter.triton, counter.torch_ops, counter.host_syncs) == (1, 0, 0), counter.op_names
    reference = RoutingStats([MoeLayerInfo(3, 64, 8, expert_bytes=1)], DEVICE, bookkeeping_named("torch"))
    counter = count_launches(reference.record, 3, num_real, logits, original, final, torch.tensor(False, device=DEVICE))
    assert counter.torch_ops > 20  # what the launch replaces, each a kernel under a CUDA graph


def test_the_policies_auto_implementation_is_the_runtime_s_backend():
    from lynx_sglang.kernels.backend import fused_backend
    from lynx_sglang.policies import get_policy

    assert fused_backend("cpu") == ("cpu" if fused_available("cpu") else "torch")  # Triton has no CPU backend
    policy, logits = get_policy("lynx", 8, 2), torch.zeros(4, 8)
    assert policy._implementation(logits, "auto") == fused_backend("cpu")
    with pytest.raises(ValueError, match="implementation must be"):
        policy._implementation(logits, "cuda")
    if torch.cuda.is_available():
        assert fused_backend("cuda") == "triton"


# ---- the serving runtime with its bookkeeping fused (as on CUDA) against its torch ops --------------
def runtime_routes(implementation: str, policy: str, calls, monkeypatch, **config):
    """(final ids, final weights) per call and the stats snapshot, from a LynxRuntime
    whose bookkeeping is the Triton launch, the C++ op or the torch ops."""
    from pathlib import Path

    topk = pytest.importorskip("sglang.srt.layers.moe.topk")  # the runtime takes SGLang's types
    from lynx_sglang.config import LynxConfig
    from lynx_sglang.scheduler.runtime import LynxRuntime
    from lynx_sglang.scheduler.step import Step

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "support"))
    runtime = LynxRuntime(LynxConfig(policy=policy, **config))
    num_experts, top_k = calls[0][0].shape[1], calls[0][1].shape[1]
    runtime.bind_layers([MoeLayerInfo(i, num_experts, top_k, expert_bytes=100) for i in range(2)], DEVICE, "test",
                        backend=implementation)
    decode = Step("decode", True)
    results = []
    for index, (logits, ids, weights, num_real) in enumerate(calls):
        runtime.begin_step(decode)
        output = topk.StandardTopKOutput(weights, ids, logits)
        routed = runtime.route(output, logits, topk.TopKConfig(top_k=top_k), index % 2, num_real, None, decode)
        results.append((routed.topk_ids, routed.topk_weights))
        runtime.end_step(decode, logits.shape[0])
    stats = runtime.handle({"op": "get_stats"})
    return results, stats, stats["policy_failures"]


def model_routing(num_rows, num_experts, top_k, seed, nan_row=None):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_experts, generator=generator) * 2
    if nan_row is not None:
        logits[nan_row, 1] = float("nan")
    weights, ids = torch.softmax(logits, -1).topk(top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    return logits.to(DEVICE), ids.to(torch.int32).to(DEVICE), weights.to(DEVICE), torch.tensor(num_rows - 3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("policy,config", [
    ("lynx", {}), ("budget", {"budget": "experts=3"}), ("fault_policies:OutOfRangePolicy", {}),
    ("oea", {"layers": "1"}), ("baseline", {"kernel": "triton"}),
])  # fmt: skip
def test_the_runtime_routes_alike_with_its_bookkeeping_fused(implementation, policy, config, monkeypatch):
    calls = [model_routing(24, 16, 4, seed) for seed in range(3)] + [model_routing(24, 16, 4, 7, nan_row=5)]
    reference, reference_stats, reference_failures = runtime_routes("torch", policy, calls, monkeypatch, **config)
    fused, fused_stats, fused_failures = runtime_routes(implementation, policy, calls, monkeypatch, **config)
    assert fused_failures == reference_failures == 0
    for (ids, weights), (want_ids, want_weights) in zip(fused, reference):
        assert ids.dtype == want_ids.dtype and torch.equal(ids, want_ids)
        assert weights.dtype == want_weights.dtype  # the NaN row's weights are NaN in both: the model's own
        # the policy decides on the runtime's backend too: its weights agree with the reference to rounding
        torch.testing.assert_close(weights, want_weights, rtol=1e-6, atol=1e-7, equal_nan=True)
    masses = ("router_mass_dropped", "router_mass_dropped_per_token")
    for layer, want in zip(fused_stats["layers"], reference_stats["layers"]):
        assert {k: v for k, v in layer.items() if k not in masses} == {k: v for k, v in want.items() if k not in masses}
        for mass in masses:
            assert layer[mass] == pytest.approx(want[mass], rel=1e-5, abs=1e-7)
    assert fused_stats["fallback_steps"] == reference_stats["fallback_steps"]
    # Only a proposal the layer cannot run falls back (every step of OutOfRangePolicy); the NaN row of
    # the last call is the policy's to route (or the model's, where it passes through), never a fallback.
    assert reference_stats["fallback_steps"] == (len(calls) if policy.endswith("OutOfRangePolicy") else 0)


@pytest.mark.parametrize("policy,config,decides", [
    ("lynx", {}, True),  # a decision to check
    ("baseline", {"kernel": "triton"}, False),  # the model's routing: its figures only
    ("oea", {"layers": "1"}, False),  # a layer outside the policy's: the model's routing, figures only
])  # fmt: skip
def test_a_runtime_layer_call_is_the_policy_plus_one_launch(policy, config, decides):
    """Counted by instrumentation: on the Triton backend the policy's decision is two Triton launches and
    the bookkeeping one, with no torch op (it reads num_real itself); on the torch backend both are
    dozens of ops, each a kernel under a decode step's CUDA graph."""
    topk = pytest.importorskip("sglang.srt.layers.moe.topk")  # the runtime takes SGLang's types
    from lynx_sglang.config import LynxConfig
    from lynx_sglang.scheduler.runtime import LynxRuntime
    from lynx_sglang.scheduler.step import Step

    logits, ids, weights, num_real = model_routing(32, 16, 4, seed=2)
    counts = {}
    for fused in (True, False):
        runtime = LynxRuntime(LynxConfig(policy=policy, **config))
        runtime.bind_layers([MoeLayerInfo(0, 16, 4, expert_bytes=100)], DEVICE, "test",
                            backend="triton" if fused else "torch")
        runtime.begin_step(Step("decode", True))
        counter = count_launches(runtime.route, topk.StandardTopKOutput(weights, ids, logits), logits,
                                 topk.TopKConfig(top_k=4), 0, num_real.to(DEVICE), None, Step("decode", True))  # fmt: skip
        counts[fused] = counter
    policy_launches = 2 if decides else 0
    assert (counts[True].triton, counts[True].torch_ops) == (policy_launches + 1, 0), counts[True].op_names
    if DEVICE.type == "cuda":
        assert counts[True].host_syncs == 0
    assert counts[False].triton == 0
    assert counts[False].torch_ops > (60 if decides else 20)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the interpreter's cast to inf, wanted here
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_weights_are_checked_in_the_dtype_they_are_returned_in(implementation):
    """fp16 routing weights: a proposed weight of 70000 (finite in fp32) is inf once cast, so the layer
    falls back, as the runtime's torch checks decide (cast first, then isfinite)."""
    from lynx_sglang.kernels.bookkeeping.cpu import finalize_cpu
    from lynx_sglang.kernels.bookkeeping.triton_launch import finalize_triton

    finalize_triton = finalize_triton if implementation == "triton" else finalize_cpu
    logits, ids, weights, _ = model_routing(8, 16, 4, seed=3)
    weights = weights.half()
    for huge, falls_back in ((70000.0, True), (60000.0, False)):
        proposed = weights.float().clone()
        proposed[2, 1] = huge
        final_ids, final_weights, fell_back, mask = finalize_triton(logits, ids, weights, ids.flip(1), proposed, None,
                                                                    mask=True)  # fmt: skip
        assert bool(fell_back) is falls_back and final_weights.dtype == torch.float16
        assert torch.equal(final_ids, ids if falls_back else ids.flip(1)) and mask.dtype == torch.bool
        assert torch.equal(final_weights, weights if falls_back else proposed.half())


@pytest.mark.skipif("cpu" not in IMPLEMENTATIONS, reason="the C++ op needs CPU tensors and a C++ compiler")
def test_a_runtime_layer_call_on_a_cpu_is_one_call_and_no_torch_op_but_allocations():
    """On a CPU the bookkeeping after the C++ decision is one call into the same library: no torch op
    that computes (the torch bookkeeping is dozens), for a decision and for the model's own routing."""
    topk = pytest.importorskip("sglang.srt.layers.moe.topk")
    from lynx_sglang.config import LynxConfig
    from lynx_sglang.scheduler.runtime import LynxRuntime
    from lynx_sglang.scheduler.step import Step

    logits, ids, weights, num_real = model_routing(32, 16, 4, seed=2)
    for policy, config in (("lynx", {}), ("baseline", {"kernel": "triton"})):
        runtime = LynxRuntime(LynxConfig(policy=policy, **config))
        runtime.bind_layers([MoeLayerInfo(0, 16, 4, expert_bytes=100)], DEVICE, "test")
        assert runtime.bookkeeping.name == "cpu"  # the default on a CPU
        runtime.begin_step(Step("decode", True))
        counter = count_launches(runtime.route, topk.StandardTopKOutput(weights, ids, logits), logits,
                                 topk.TopKConfig(top_k=4), 0, num_real, None, Step("decode", True))  # fmt: skip
        assert (counter.triton, counter.torch_ops) == (0, 0), (policy, counter.op_names)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_fallback_checks_at_their_edges(implementation):
    """A proposed id of E or -1 in a real row, or a NaN weight there, makes the layer fall back; an id of
    E - 1 does not, nothing in a padding row counts, and neither do non-finite logits."""
    from lynx_sglang.kernels.bookkeeping.cpu import finalize_cpu
    from lynx_sglang.kernels.bookkeeping.triton_launch import finalize_triton

    finalize = finalize_triton if implementation == "triton" else finalize_cpu
    logits, ids, weights, _ = model_routing(6, 16, 4, seed=4)
    num_real = torch.tensor(4, device=DEVICE)
    cases = [((1, 2), 16, None, True), ((1, 2), -1, None, True), ((1, 2), 15, None, False),
             ((5, 0), 16, None, False), ((2, 3), None, float("nan"), True), ((5, 3), None, float("nan"), False)]
    for (row, slot), new_id, new_weight, falls_back in cases:
        proposed_ids, proposed_weights = ids.flip(1).clone(), weights.clone()
        if new_id is not None:
            proposed_ids[row, slot] = new_id
        if new_weight is not None:
            proposed_weights[row, slot] = new_weight
        final_ids, _, fell_back, _ = finalize(logits, ids, weights, proposed_ids, proposed_weights, num_real, mask=True)
        assert bool(fell_back) is falls_back, (row, slot, new_id, new_weight)
        assert torch.equal(final_ids, ids if falls_back else proposed_ids)
    # Non-finite logits in real rows are no fallback (the policies route those rows): the proposal stands.
    poisoned = logits.clone()
    poisoned[0, 3], poisoned[1, 0], poisoned[2] = float("nan"), float("inf"), float("-inf")
    for check in (finalize, finalize_torch):
        final_ids, _, fell_back, _ = check(poisoned, ids, weights, ids.flip(1), weights, num_real, mask=True)
        assert not bool(fell_back) and torch.equal(final_ids, ids.flip(1))
