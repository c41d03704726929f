"""LynxRuntime.route on SGLang's own top-k output and config types: policy applied on decode steps,
fallbacks for failures (counted), rows with NaN logits routed by the policy, pass-through for routers it does not handle, stats,
switches, and decisions that are identical in separate processes (tensor-parallel ranks)."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lynx_sglang.config import ConfigError, LynxConfig
from lynx_sglang.scheduler.runtime import LynxRuntime
from lynx_sglang.scheduler.stats import MoeLayerInfo
from lynx_sglang.scheduler.step import Step

topk = pytest.importorskip("sglang.srt.layers.moe.topk")

E, K, T = 8, 2, 16
DECODE = Step("decode", True, T)


def make_runtime(policy="lynx", **kwargs) -> LynxRuntime:
    runtime = LynxRuntime(LynxConfig(policy=policy, **kwargs))
    layers = [MoeLayerInfo(layer_id, E, K, expert_bytes=1000) for layer_id in range(2)]
    runtime.bind_layers(layers, "cpu", "tiny-mixtral")
    return runtime


def snapshot(runtime) -> dict:
    return runtime.handle({"op": "get_stats"})


def routing(seed=0, rows=T):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, E, generator=generator) * 2
    weights, ids = torch.softmax(logits, -1).topk(K, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    return logits, topk.StandardTopKOutput(weights, ids.to(torch.int32), logits)


def route(runtime, logits, output, layer_id=0, num_real=None, config=None, step=DECODE):
    return runtime.route(output, logits, config or topk.TopKConfig(top_k=K), layer_id, num_real, None, step)


def test_decode_step_is_pruned_and_counted():
    runtime = make_runtime("lynx")
    logits, output = routing()
    runtime.begin_step(DECODE)
    for layer in (0, 1):
        routed = route(runtime, logits, output, layer)
    runtime.end_step(DECODE, T)
    assert routed.topk_ids.dtype == torch.int32 and routed.topk_ids.shape == (T, K)
    stats = snapshot(runtime)
    assert (stats["decode_steps"], stats["pruned_steps"], stats["fallback_steps"]) == (1, 1, 0)
    assert stats["distinct_experts_after"] <= stats["distinct_experts_before"]
    layer = stats["layers"][0]
    assert layer["decode_tokens"] == T and layer["steps"] == 1
    used = len(set(routed.topk_ids.flatten().tolist()))
    assert layer["distinct_experts_after"] == used
    assert stats["expert_bytes_per_decode_token_after"] == pytest.approx(2 * used * 1000 / T)


def test_baseline_is_the_identity_and_still_measured():
    runtime = make_runtime("baseline")
    logits, output = routing()
    routed = route(runtime, logits, output)
    assert routed.topk_ids is output.topk_ids and routed.topk_weights is output.topk_weights
    stats = snapshot(runtime)
    assert stats["layers"][0]["distinct_experts_before"] == stats["layers"][0]["distinct_experts_after"] > 0


def test_layers_outside_the_policy_keep_the_models_routing_as_is():
    runtime = make_runtime("budget", budget="experts=2", layers="1")
    logits, output = routing()
    untouched = route(runtime, logits, output, layer_id=0)
    assert untouched.topk_ids is output.topk_ids and untouched.topk_weights is output.topk_weights
    pruned = route(runtime, logits, output, layer_id=1)
    assert len(set(pruned.topk_ids.flatten().tolist())) <= 2 < len(set(output.topk_ids.flatten().tolist()))
    stats = snapshot(runtime)
    assert stats["fallback_steps"] == 0 and stats["policy_failures"] == 0


def test_padding_rows_are_not_counted_and_pass_through():
    runtime = make_runtime("budget", budget="experts=2")
    logits, output = routing()
    routed = route(runtime, logits, output, num_real=torch.tensor(4))
    assert torch.equal(routed.topk_ids[4:], output.topk_ids[4:])
    layer = snapshot(runtime)["layers"][0]
    assert layer["decode_tokens"] == 4 and layer["distinct_experts_after"] <= 2


def test_a_captured_decode_graph_reads_its_real_rows_and_gives_padding_no_expert():
    # On one GPU SGLang passes no real-row count; the runtime's own scalar, written before each replay,
    # is what the captured routing reads (the same tensor object, a new value).
    runtime = make_runtime("budget", budget="experts=2")
    logits, output = routing()
    runtime.capturing_decode_graphs = True  # what the capture hook sets while SGLang captures
    for real in (5, 9):
        runtime.load_graph_rows(real)
        routed = route(runtime, logits, output)
        assert (routed.topk_ids[real:] == -1).all() and (routed.topk_ids[:real] >= 0).all()
        assert len(routed.topk_ids[:real].unique()) <= 2
    assert [layer["decode_tokens"] for layer in snapshot(runtime)["layers"]][0] == 5 + 9
    runtime.local_moe_input = False  # attention-DP: the rows are every rank's slots, not one padded batch
    assert (route(runtime, logits, output).topk_ids >= 0).all()
    runtime.capturing_decode_graphs, runtime.local_moe_input = False, True
    assert (route(runtime, logits, output).topk_ids >= 0).all()  # eager: every row is real


@pytest.mark.parametrize("policy", ["RaisingPolicy", "WrongShapePolicy", "OutOfRangePolicy"])
def test_a_failing_policy_falls_back_for_that_step_and_is_counted(policy, caplog, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "support"))
    runtime = make_runtime(f"fault_policies:{policy}")
    logits, output = routing()
    for _ in range(3):
        runtime.begin_step(DECODE)
        routed = route(runtime, logits, output)
        runtime.end_step(DECODE, T)
        assert torch.equal(routed.topk_ids, output.topk_ids)
    stats = snapshot(runtime)
    assert stats["fallback_steps"] == 3 and stats["pruned_steps"] == 0
    assert stats["layers"][0]["fallbacks"] == 3
    # Logged at most once a minute: an exception or wrong shape when it happens, a bad value (seen
    # only on the device) by the once-a-minute count.
    message = "fell back" if policy == "OutOfRangePolicy" else "failed at layer"
    assert sum(message in r.getMessage() for r in caplog.records) == 1


def test_a_row_with_nan_router_logits_is_routed_by_the_policy_not_a_fallback():
    """One rule for non-finite logits (docs/policies.md): the row does not vote and is routed inside the
    active set; the layer keeps its decision, so every other row stays pruned."""
    logits, output = routing()
    logits[3, 2] = float("nan")
    runtime = make_runtime("budget", budget="experts=1")
    runtime.begin_step(DECODE)
    routed = route(runtime, logits, output)
    runtime.end_step(DECODE, T)
    kept = [row for row in range(T) if row != 3]  # the same batch without the NaN row decides alike
    voters_only = make_runtime("budget", budget="experts=1")
    voters_only.begin_step(DECODE)
    without = route(voters_only, logits[kept], topk.StandardTopKOutput(output.topk_weights[kept],
                                                                       output.topk_ids[kept], logits[kept]))
    voters_only.end_step(DECODE, len(kept))
    expert = without.topk_ids[0, 0]
    assert (without.topk_ids == expert).all() and (routed.topk_ids == expert).all()  # the NaN row too
    assert torch.isfinite(routed.topk_weights).all() and torch.equal(routed.topk_weights[kept], without.topk_weights)
    stats = snapshot(runtime)
    assert stats["fallback_steps"] == 0 and stats["pruned_steps"] == 1
    assert stats["layers"][0]["fallbacks"] == 0 and stats["layers"][0]["steps"] == 1


def _custom_router(hidden_states, gating_output, topk, renormalize):
    return torch.topk(gating_output, topk)  # a model's own routing function: not something policies model


def test_routers_it_does_not_model_pass_through(caplog):
    caplog.set_level(logging.INFO, logger="lynx_sglang")
    runtime = make_runtime("budget", budget="experts=1")
    logits, output = routing()
    custom = topk.TopKConfig(top_k=K, custom_routing_function=_custom_router)
    for layer in (0, 1):
        assert route(runtime, logits, output, layer, config=custom) is output
    notes = [r.getMessage() for r in caplog.records if "a custom routing function pass through" in r.getMessage()]
    assert len(notes) == 1, notes


def test_sigmoid_and_grouped_routers_are_routed(caplog):
    caplog.set_level(logging.INFO, logger="lynx_sglang")
    runtime = make_runtime("budget", budget="experts=1")
    logits, output = routing()
    grouped = topk.TopKConfig(top_k=K, use_grouped_topk=True, topk_group=1, num_expert_group=2,
                              correction_bias=torch.zeros(E))  # fmt: skip
    sigmoid = topk.TopKConfig(top_k=K, scoring_func="sigmoid")
    for layer, config in enumerate((grouped, sigmoid)):
        runtime.begin_step(DECODE)
        routed = route(runtime, logits, output, layer, config=config)
        runtime.end_step(DECODE, T)
        assert (routed.topk_ids == routed.topk_ids[0, 0]).all()  # one expert for the whole batch
    assert [layer["routing"] for layer in snapshot(runtime)["layers"]] == ["pruned", "pruned"]
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "biased-grouped-sigmoid router" in notes and "a sigmoid router" in notes


def test_a_step_on_which_every_layer_passes_through_is_not_a_pruned_step():
    runtime = make_runtime("lynx")
    logits, output = routing()
    custom = topk.TopKConfig(top_k=K, custom_routing_function=_custom_router)
    for _ in range(3):
        runtime.begin_step(DECODE)
        for layer in (0, 1):
            route(runtime, logits, output, layer, config=custom)
        runtime.end_step(DECODE, T)
    stats = snapshot(runtime)
    assert (stats["decode_steps"], stats["pruned_steps"], stats["passthrough_steps"]) == (0, 0, 3)
    assert stats["steps_by_policy"] == {}
    assert [layer["routing"] for layer in stats["layers"]] == ["passthrough", "passthrough"]
    assert {layer["passthrough_reason"] for layer in stats["layers"]} == {"a custom routing function"}


def test_each_layer_says_whether_the_policy_routes_it():
    runtime = make_runtime("budget", budget="experts=2", layers="1")
    logits, output = routing()
    runtime.begin_step(DECODE)
    for layer in (0, 1):
        route(runtime, logits, output, layer)
    runtime.end_step(DECODE, T)
    stats = snapshot(runtime)
    assert stats["decode_steps"] == 1 and stats["pruned_steps"] == 1
    first, second = stats["layers"]
    assert first == {**first, "routing": "passthrough", "passthrough_reason": "not in the policy's layers (--lynx-layers)"}
    assert second["routing"] == "pruned" and "passthrough_reason" not in second


def test_switch_is_validated_before_anything_changes():
    runtime = make_runtime("lynx", admin_token="t")
    with pytest.raises(ConfigError, match="unknown parameter"):
        runtime.handle({"op": "set_policy", "policy": "oea", "params": {"alpha": 1}})
    for budget, message in [("experts=9", "budget: experts=9 out of range: experts must be an integer in 1..8"),
                            ("experts=0", "budget: experts=0 out of range: experts must be an integer >= 1"),
                            ("experts=2.5", "budget: experts=2.5: experts must be a whole number of experts")]:
        with pytest.raises(ConfigError) as error:
            runtime.handle({"op": "set_policy", "budget": budget})
        assert str(error.value).startswith(message), str(error.value)
    assert runtime.config.policy == "lynx" and runtime.config.budget is None
    state = runtime.handle({"op": "set_policy", "policy": "budget", "budget": "fraction=0.25"})
    assert state["policy"] == "budget" and state["budget_experts"] == 2
    state = runtime.handle({"op": "set_policy", "policy": "baseline"})
    assert state["budget"] is None  # baseline takes no budget


def test_a_switch_within_the_policy_that_clashes_with_a_kept_parameter_says_how_to_drop_it():
    runtime = make_runtime("budget")
    runtime.handle({"op": "set_policy", "params": {"fraction": 0.5}})
    with pytest.raises(ConfigError) as error:
        runtime.handle({"op": "set_policy", "params": {"num_experts_kept": 4}})
    assert "give either 'num_experts_kept' or 'fraction', not both" in str(error.value)
    assert "stay on a switch within it: fraction=0.5; give one as null to drop it" in str(error.value)
    # null drops the parameter (back to its default): it is not shown as running with the value null
    assert runtime.handle({"op": "set_policy", "params": {"num_experts_kept": 4, "fraction": None}})["params"] == {
        "num_experts_kept": 4}
    with pytest.raises(ConfigError) as error:  # a budget change leaves the params alone: nothing to name
        runtime.handle({"op": "set_policy", "budget": "experts=0"})
    assert "stay on a switch" not in str(error.value)
    with pytest.raises(ConfigError) as error:  # a new policy starts afresh: nothing kept to name
        runtime.handle({"op": "set_policy", "policy": "oea", "params": {"alpha": 1}})
    assert "stay on a switch" not in str(error.value)


def test_a_switched_config_names_only_the_models_layers():
    """As at launch: the model's layers, MoE or not (a dense last layer may be named; 4 here, 2 MoE)."""
    runtime = LynxRuntime(LynxConfig(policy="lynx"))
    runtime.bind_layers([MoeLayerInfo(layer_id, E, K, expert_bytes=1000) for layer_id in (1, 2)], "cpu", "tiny",
                        num_layers=4)  # fmt: skip
    with pytest.raises(ConfigError, match=r"layers: 4 is not a layer of this model \(layers 0..3\)"):
        runtime.handle({"op": "set_policy", "config": {"policy": "lynx", "layers": "0-4"}})
    assert runtime.config.layers is None
    assert runtime.handle({"op": "set_policy", "config": {"policy": "lynx", "layers": "2-3"}})["layers"] == [2, 3]
    unknown = make_runtime("lynx")  # bound without the model's layer count: the launch checked config.json
    assert unknown.handle({"op": "set_policy", "config": {"policy": "lynx", "layers": [0, 7]}})["layers"] == [0, 7]


def test_a_switched_config_names_at_least_one_moe_layer():
    """DeepSeek-V3's first layers are dense: a list of them alone would prune nothing, silently."""
    runtime = LynxRuntime(LynxConfig(policy="lynx"))
    runtime.bind_layers([MoeLayerInfo(layer_id, E, K, expert_bytes=1000) for layer_id in (1, 2)], "cpu", "tiny",
                        num_layers=4, moe_layers=(1, 2))  # fmt: skip
    for layers in ("0", "3", [0, 3]):
        with pytest.raises(ConfigError, match=r"holds no MoE layer of this model \(its MoE layers: 1-2\)"):
            runtime.handle({"op": "set_policy", "config": {"policy": "lynx", "layers": layers}})
    with pytest.raises(ConfigError, match=r"holds no MoE layer of this model"):  # as the policy's parameter
        runtime.handle({"op": "set_policy", "policy": "lynx", "params": {"layers": [3]}})
    assert runtime.config.layers is None and "layers" not in runtime.config.params
    assert runtime.handle({"op": "set_policy", "config": {"policy": "lynx", "layers": "0-1"}})["layers"] == [0, 1]


DETERMINISM_SCRIPT = """
import sys, torch
from lynx_sglang.policies import ExpertBudget, get_policy
generator = torch.Generator().manual_seed(5)
logits = torch.randn(64, 16, generator=generator) * 2
weights, ids = torch.softmax(logits, -1).topk(4, dim=-1)
budget = ExpertBudget.unlimited(16).set_mass(0.9)
for name in ("lynx", "oea", "coverage", "budget"):
    d = get_policy(name, 16, 4, True).select(logits, ids, weights, num_real=60, layer_id=3, budget=budget)
    for t in d:
        sys.stdout.write(t.numpy().tobytes().hex() + ":")
"""


def test_two_processes_take_bit_identical_decisions():
    """Tensor-parallel ranks see the same (replicated) router logits and each computes the decision
    itself, so it must be a pure function of them: the same bits in separate processes, whatever
    their thread counts."""
    outputs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        proc = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1] and len(outputs[0]) > 1000


# ---- decode calls of one row (scheduler/lone_row.py) ------------------------------------------------
LONE = Step("decode", True, 1)


@pytest.mark.parametrize("policy,config", [("lynx", {}), ("budget", {"budget": "experts=2"}), ("oea", {}),
                                           ("coverage", {"budget": "fraction=0.5"}), ("baseline", {})])
def test_a_lone_row_launches_nothing_keeps_its_routing_and_still_counts(policy, config):
    from lynx_sglang.tools.launch_count import count_launches

    runtime = LynxRuntime(LynxConfig(policy=policy, **config))
    runtime.bind_layers([MoeLayerInfo(layer_id, E, K, expert_bytes=1000) for layer_id in range(2)], "cpu",
                        "tiny-mixtral", tp_size=2, backend="torch")  # torch: a decision would be dozens of ops
    for seed in range(3):
        logits, output = routing(seed, rows=1)
        runtime.begin_step(LONE)
        for layer in (0, 1):
            counter = count_launches(route, runtime, logits, output, layer, torch.tensor(1), step=LONE)
            assert (counter.triton, counter.torch_ops, counter.host_syncs) == (0, 0, 0), counter.op_names
            assert route(runtime, logits, output, layer, torch.tensor(1), step=LONE) is output
        runtime.end_step(LONE, 1)
    stats = snapshot(runtime)
    assert (stats["decode_steps"], stats["pruned_steps"], stats["fallback_steps"]) == (3, 3, 0)
    assert all((layer["steps"], layer["decode_tokens"]) == (3, 3) for layer in stats["layers"])
    assert stats["distinct_experts_before"] == stats["distinct_experts_after"] == K
    assert stats["tokens_rerouted_fraction"] == stats["router_mass_dropped_per_token"] == 0
    assert stats["expert_bytes_per_decode_token_after"] == pytest.approx(2 * K * 1000)
    assert runtime.decisions.read(0) == {"rank": 0, "digest": "00000000", "steps": 3, "layer_calls": 6}
    runtime.handle({"op": "reset_stats"})
    assert snapshot(runtime)["layers"][0]["steps"] == 0 and runtime.decisions.read(0)["steps"] == 0


@pytest.mark.parametrize("policy,config", [
    ("budget", {"budget": "experts=1"}),  # a cap below k
    ("lynx", {"budget": "mass=0.5"}),  # may cut the row's weakest expert
    ("static-topk", {}),  # fewer slots
    ("random", {"params": {"num_experts_kept": 3}}),  # its own set
    ("lynx", {"params": {"tie_break": "index"}}),  # ties in a bin by expert index
])  # fmt: skip
def test_a_lone_row_is_decided_where_it_may_move(policy, config):
    runtime = make_runtime(policy, **config)
    assert not runtime.settings.lone_row_kept
    logits, output = routing(rows=1)
    runtime.begin_step(LONE)
    routed = route(runtime, logits, output, step=LONE)
    runtime.end_step(LONE, 1)
    assert routed is not output  # decided (and checked) on the device
    layer = snapshot(runtime)["layers"][0]
    assert (layer["steps"], layer["decode_tokens"]) == (1, 1)  # from the device, not added twice


def test_a_switch_that_changes_the_lone_row_rule_keeps_one_row_off_the_captured_graphs():
    runtime = make_runtime("budget", budget="experts=4", admin_token="t")
    assert runtime.settings.lone_row_kept and runtime.graphs_hold_current_settings(1)
    runtime.handle({"op": "set_policy", "budget": "experts=1"})  # same policy: the graphs stay
    assert not runtime.settings.lone_row_kept
    assert runtime.graphs_hold_current_settings(8) and not runtime.graphs_hold_current_settings(1)
    runtime.handle({"op": "set_policy", "budget": "fraction=0.5"})
    assert runtime.graphs_hold_current_settings(1)
