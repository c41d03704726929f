"""Settings that follow the decode batch size: each layer call takes the routing of the band its real
row count falls in (looked up on the device, padding rows not counted), steps are counted per band, and
a whole config applied by POST /lynx/policy {"config": ...} replaces the setting."""

import pytest
import torch

from lynx_sglang.config import ConfigError, LynxConfig
from lynx_sglang.scheduler.runtime import LynxRuntime
from lynx_sglang.scheduler.schedule import band_index
from lynx_sglang.scheduler.stats import MoeLayerInfo
from lynx_sglang.scheduler.step import Step

topk = pytest.importorskip("sglang.srt.layers.moe.topk")

E, K = 8, 2
# 1-3 rows: keep every chosen expert; 4 rows up: the 2 experts the most rows chose.
SCHEDULE = [{"from_rows": 1, "params": {"num_experts_kept": 8}}, {"from_rows": 4, "params": {"num_experts_kept": 2}}]


def make_runtime(config: LynxConfig) -> LynxRuntime:
    runtime = LynxRuntime(config)
    runtime.bind_layers([MoeLayerInfo(layer_id, E, K, expert_bytes=1000) for layer_id in range(2)], "cpu", "tiny")
    return runtime


def routing(rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, E, generator=generator) * 2
    weights, ids = torch.softmax(logits, -1).topk(K, dim=-1)
    return logits, topk.StandardTopKOutput(weights / weights.sum(-1, keepdim=True), ids.to(torch.int32), logits)


def step(runtime, rows, num_real=None):
    """One decode step of `rows` rows (the first num_real real); the routing of layer 0."""
    decode = Step("decode", True, rows)
    logits, output = routing(rows)
    runtime.begin_step(decode)
    routed = [runtime.route(output, logits, topk.TopKConfig(top_k=K), layer, num_real, None, decode) for layer in (0, 1)]
    runtime.end_step(decode, rows)
    return output, routed[0]


def distinct(ids, real) -> int:
    return len(set(ids[:real].flatten().tolist()))


def test_the_band_is_the_last_whose_first_row_count_is_reached():
    starts = torch.tensor([1, 4, 12])
    assert [int(band_index(starts, None, rows)) for rows in (1, 3, 4, 11, 12, 64)] == [0, 0, 1, 1, 2, 2]
    assert int(band_index(starts, torch.tensor(5), 32)) == 1  # padding rows are not counted
    assert int(band_index(starts, torch.tensor(0), 32)) == 0


def test_each_call_takes_its_bands_routing_and_steps_are_counted_per_band():
    runtime = make_runtime(LynxConfig(policy="topn", schedule=SCHEDULE))
    model, small = step(runtime, 3)
    assert torch.equal(small.topk_ids, model.topk_ids)  # the first band keeps all 8
    model, large = step(runtime, 16)
    assert distinct(large.topk_ids, 16) <= 2 < distinct(model.topk_ids, 16)
    model, padded = step(runtime, 16, num_real=torch.tensor(3))  # a graph of 16 rows serving 3 real ones
    assert torch.equal(padded.topk_ids[:3], model.topk_ids[:3])
    stats = runtime.handle({"op": "get_stats"})
    assert [band["steps"] for band in stats["steps_by_band"]] == [2, 1]
    assert stats["steps_by_band"][1]["params"] == {"num_experts_kept": 2}
    runtime.handle({"op": "reset_stats"})
    assert [band["steps"] for band in runtime.handle({"op": "get_stats"})["steps_by_band"]] == [0, 0]


def test_a_whole_config_replaces_the_setting_and_a_change_ends_the_schedule():
    runtime = make_runtime(LynxConfig(policy="lynx", params={"alpha": 2.0}, budget="experts=6"))
    state = runtime.handle({"op": "set_policy", "config": {"policy": "topn", "schedule": SCHEDULE}})
    assert state["policy"] == "topn" and state["params"] == {} and state["budget"] is None
    assert [band["from_rows"] for band in state["schedule"]] == [1, 4]
    assert runtime.handle({"op": "get_policy"})["schedule"] == state["schedule"]
    signature = runtime.settings.signature()
    budgets = [band.budget_for(E) for band in runtime.settings.schedule.children]
    # the same bands again: refilled in place (the tensors a captured graph reads stay the same)
    runtime.handle({"op": "set_policy", "config": {"policy": "topn", "schedule": SCHEDULE}})
    assert [band.budget_for(E) for band in runtime.settings.schedule.children] == budgets
    assert runtime.settings.signature() == signature
    state = runtime.handle({"op": "set_policy", "params": {"num_experts_kept": 3}})
    assert state["schedule"] is None and runtime.settings.schedule is None
    assert runtime.handle({"op": "get_stats"})["steps_by_band"] is None


@pytest.mark.parametrize("config, message", [
    ({"policy": "topn", "schedule": [{"from_rows": 1, "params": {"num_experts_kept": 1}}]}, "out of range"),
    ({"policy": "baseline", "schedule": SCHEDULE}, "no effect with policy 'baseline'"),
    ({"policy": "topn", "kernel": "sglang"}, "kernel cannot change while serving"),
    ({"policy": "topn", "surprise": 1}, "unknown setting(s) surprise"),
    ({"policy": "topn", "schedule": [{"from_rows": 2}]}, "must start at 1"),
    (["topn"], "must be an object of settings"),
])
def test_a_bad_whole_config_is_refused_and_changes_nothing(config, message):
    runtime = make_runtime(LynxConfig(policy="lynx", params={"alpha": 2.0}))
    with pytest.raises(ConfigError) as caught:
        runtime.handle({"op": "set_policy", "config": config})
    assert message in str(caught.value)
    assert runtime.settings.config.policy == "lynx" and runtime.settings.schedule is None
