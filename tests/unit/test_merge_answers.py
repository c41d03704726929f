"""The answers of several schedulers merged into one server's: data-parallel replicas' statistics are
those one table holding both replicas' layer calls would give, pipeline stages' those one table of
all layers would give, and a refusal is never merged away."""

from types import SimpleNamespace

import pytest
import torch

from lynx_sglang.scheduler.expert_cache import cache_totals, prefetch_accuracy
from lynx_sglang.scheduler.stats import MoeLayerInfo, RoutingStats
from lynx_sglang.server.channel import SchedulerError, merge_replies
from lynx_sglang.server.merge import join_stage_states, join_stage_stats, merge_policy_states, merge_stats

LAYERS = [MoeLayerInfo(0, 16, 4, 1000), MoeLayerInfo(3, 16, 4, 1000)]


def routing_stats(rows, lone_row_steps, fallback_steps=0):
    """A replica's statistics table as its layer calls left it: rows of (steps, tokens, distinct_before,
    distinct_after, rerouted, mass_dropped, fallbacks)."""
    stats = RoutingStats(LAYERS, torch.device("cpu"), SimpleNamespace(record=None))
    stats.table.copy_(torch.tensor(rows, dtype=torch.float64))
    stats.lone_row_steps = list(lone_row_steps)
    stats.fallback_steps.fill_(fallback_steps)
    return stats


def snapshot(stats, decode_steps, by_mode, cache=None, digest=None):
    figures = stats.snapshot()
    fallback_steps = figures.pop("fallback_steps")
    entry = {"policy": "lynx", "params": {}, "budget": None, "budget_experts": None, "kernel": "auto",
             "decode_steps": decode_steps, "pruned_steps": decode_steps - fallback_steps, "passthrough_steps": 1,
             "fallback_steps": fallback_steps, "policy_failures": 0, "steps_by_policy": {"lynx": decode_steps},
             "steps_by_mode": by_mode, "steps_by_band": None, "stats_enabled": True, "controller": None,
             "expert_cache": cache, **figures}  # fmt: skip
    if digest is not None:
        entry.update(decisions_by_rank=[{"rank": 0, "digest": digest, "steps": decode_steps}], ranks_agree=True)
    return entry


A_ROWS = [[10, 40, 31, 18, 12, 1.5, 0], [10, 40, 29, 20, 9, 1.0, 1]]
B_ROWS = [[3, 5, 9, 8, 1, 0.25, 0], [3, 5, 8, 8, 0, 0.0, 0]]


def test_merged_statistics_are_those_of_one_table_holding_both_replicas():
    a = snapshot(routing_stats(A_ROWS, [2, 2], fallback_steps=1), 12, {"decode": 12, "extend": 4})
    b = snapshot(routing_stats(B_ROWS, [0, 0]), 3, {"decode": 3, "mixed": 1})
    both = routing_stats([[x + y for x, y in zip(ra, rb)] for ra, rb in zip(A_ROWS, B_ROWS)], [2, 2]).snapshot()

    merged = merge_stats([a, b])

    assert len(merged["layers"]) == 2
    for got, want in zip(merged["layers"], both["layers"]):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value), key
    for key in ("distinct_experts_before", "distinct_experts_after", "expert_bytes_per_decode_token_after",
                "tokens_rerouted_fraction", "router_mass_dropped_per_token"):
        assert merged[key] == pytest.approx(both[key]), key
    assert (merged["decode_steps"], merged["passthrough_steps"], merged["fallback_steps"]) == (15, 2, 1)
    assert merged["steps_by_mode"] == {"decode": 15, "extend": 4, "mixed": 1}
    assert merged["steps_by_policy"] == {"lynx": 15}
    assert [(r["replica"], r["decode_steps"]) for r in merged["replicas"]] == [(0, 12), (1, 3)]
    assert merged["replicas"][1]["distinct_experts_after"] == pytest.approx(b["distinct_experts_after"])


def test_a_replica_without_steps_does_not_dilute_the_means():
    a = snapshot(routing_stats(A_ROWS, [0, 0]), 10, {"decode": 10})
    idle = snapshot(routing_stats([[0] * 7, [0] * 7], [0, 0]), 0, {})
    merged = merge_stats([a, idle])
    assert merged["distinct_experts_after"] == pytest.approx(a["distinct_experts_after"])
    assert merged["layers"][0]["tokens_rerouted_fraction"] == pytest.approx(12 / 40)


def cache_layer(layer, hits, misses, prefetched, used, tokens, bytes_per_token):
    return {"layer": layer, "slots": 4, "num_experts": 16, "cache_hits": hits, "cache_misses": misses,
            "prefetched": prefetched, "prefetch_used": used, "decode_misses": misses, "decode_prefetched": prefetched,
            "decode_tokens": tokens, "cache_bytes_copied_per_decode_token": bytes_per_token,
            "prefetch_accuracy": prefetch_accuracy(True, used, prefetched)}  # fmt: skip


def test_expert_cache_figures_add_up_across_replicas():
    def cache(layers):
        return {"spec": "slots=4", "policy": "lru", "expert_compute": "lynx-cpu", **cache_totals(layers, True)}

    a = cache([cache_layer(0, 30, 10, 8, 6, 40, 500.0)])
    b = cache([cache_layer(0, 5, 5, 2, 0, 10, 1000.0)])
    stats = routing_stats(A_ROWS, [0, 0])
    merged = merge_stats([snapshot(stats, 10, {}, cache=a), snapshot(stats, 10, {}, cache=b)])["expert_cache"]
    assert (merged["cache_hits"], merged["cache_misses"], merged["spec"]) == (35, 15, "slots=4")
    assert merged["cache_bytes_copied_per_decode_token"] == pytest.approx((500.0 * 40 + 1000.0 * 10) / 50)
    assert merged["prefetch_accuracy"] == pytest.approx(6 / 10)
    assert merged["layers"][0]["prefetch_accuracy"] == pytest.approx(6 / 10)


def test_tensor_parallel_digests_are_listed_by_replica():
    stats = routing_stats(A_ROWS, [0, 0])
    merged = merge_stats([snapshot(stats, 10, {}, digest="aa"), snapshot(stats, 7, {}, digest="bb")])
    assert [(d["replica"], d["digest"]) for d in merged["decisions_by_rank"]] == [(0, "aa"), (1, "bb")]
    assert merged["ranks_agree"] is True


def test_policy_states_say_whether_the_replicas_agree():
    state = {"policy": "budget", "params": {}, "budget": "experts=4", "kernel": "auto", "budget_experts": 4}
    same = merge_policy_states([state, dict(state)])
    assert (same["replicas"], same["replicas_agree"], same["budget"]) == (2, True, "experts=4")
    differ = merge_policy_states([state, {**state, "budget": "experts=2"}])
    assert differ["replicas_agree"] is False


def test_a_refusal_is_the_answer_and_a_split_one_names_the_schedulers():
    refused = {"ok": False, "error": "unknown policy 'nope'"}
    with pytest.raises(SchedulerError, match=r"^unknown policy 'nope'$"):
        merge_replies("set_policy", [[{**refused, "replica": 0}], [{**refused, "replica": 1}]])
    took = {"ok": True, "replica": 0, "stage": 0, "result": {"policy": "lynx"}}
    with pytest.raises(SchedulerError, match=r"^replica 1: unknown policy 'nope' \(replica 0 took the request\)$"):
        merge_replies("set_policy", [[took], [{**refused, "replica": 1, "stage": 0}]])
    with pytest.raises(SchedulerError, match=r"^stage 1: unknown policy 'nope' \(stage 0 took the request\)$"):
        merge_replies("set_policy", [[took, {**refused, "replica": 0, "stage": 1}]])


FIRST_STAGE = [MoeLayerInfo(0, 16, 4, 1000), MoeLayerInfo(1, 16, 4, 1000)]
SECOND_STAGE = [MoeLayerInfo(2, 16, 4, 1000), MoeLayerInfo(3, 16, 4, 1000)]


def stage_stats(layers, rows, fallback_steps=0):
    stats = RoutingStats(layers, torch.device("cpu"), SimpleNamespace(record=None))
    stats.table.copy_(torch.tensor(rows, dtype=torch.float64))
    stats.fallback_steps.fill_(fallback_steps)
    return stats


def test_pipeline_stages_join_their_layers_as_one_table_of_all_layers_would():
    first = stage_stats(FIRST_STAGE, A_ROWS, fallback_steps=1)
    second = stage_stats(SECOND_STAGE, B_ROWS, fallback_steps=2)
    whole = stage_stats(FIRST_STAGE + SECOND_STAGE, A_ROWS + B_ROWS).snapshot()

    joined = join_stage_stats([snapshot(first, 12, {"decode": 12}), snapshot(second, 12, {"decode": 12})])

    assert [layer["layer"] for layer in joined["layers"]] == [0, 1, 2, 3]
    for key in ("distinct_experts_before", "distinct_experts_after", "expert_bytes_per_decode_token_before",
                "tokens_rerouted_fraction", "router_mass_dropped_per_token"):
        assert joined[key] == pytest.approx(whole[key]), key
    assert (joined["decode_steps"], joined["fallback_steps"], joined["pruned_steps"]) == (12, 2, 10)
    assert joined["steps_by_mode"] == {"decode": 12}  # the same steps, not twice as many
    assert [(s["stage"], s["layers"], s["fallback_steps"]) for s in joined["pipeline_stages"]] == [
        (0, [0, 1], 1), (1, [2, 3], 2)]


def test_a_stage_the_policy_leaves_alone_does_not_hide_the_other_stage_s_steps():
    """--lynx-layers naming only the second stage's layers: stage 0 counts every step passed through."""
    idle = snapshot(stage_stats(FIRST_STAGE, [[0] * 7, [0] * 7]), 0, {})
    idle["passthrough_steps"] = 13
    routed = snapshot(stage_stats(SECOND_STAGE, B_ROWS), 12, {"decode": 12})
    joined = join_stage_stats([idle, routed])
    assert (joined["decode_steps"], joined["pruned_steps"], joined["passthrough_steps"]) == (12, 12, 1)
    assert joined["steps_by_mode"] == {"decode": 12}


def test_a_stage_without_moe_layers_is_left_out_not_a_refusal():
    """A dense first layer alone on stage 0: its 'no MoE layers' refused every control request (409/400)
    after the other stages had applied a switch."""
    empty = {"ok": True, "replica": 0, "stage": 0, "result": None, "no_moe_layers": True}
    routed = snapshot(stage_stats(SECOND_STAGE, B_ROWS), 12, {"decode": 12})
    stats = merge_replies("get_stats", [[empty, {"ok": True, "replica": 0, "stage": 1, "result": routed}]])
    assert [(s["stage"], s["layers"]) for s in stats["pipeline_stages"]] == [(1, [2, 3])]
    assert stats["decode_steps"] == 12 and [layer["layer"] for layer in stats["layers"]] == [2, 3]
    state = {"policy": "lynx", "expert_compute": {"2": "lynx-cpu"}, "cuda_graphs_replay_pruning": None}
    joined = merge_replies("set_policy", [[empty, {"ok": True, "replica": 0, "stage": 1, "result": state}]])
    assert (joined["policy"], joined["pipeline_stages"], joined["expert_compute"]) == ("lynx", 2, {"2": "lynx-cpu"})
    with pytest.raises(SchedulerError, match="^the model has no MoE layers lynx-sglang can prune$"):
        merge_replies("get_policy", [[empty]])  # a dense model: nothing anywhere


def test_replicas_of_pipelines_list_their_stages():
    stages = [join_stage_stats([snapshot(stage_stats(FIRST_STAGE, A_ROWS), n, {}),
                                snapshot(stage_stats(SECOND_STAGE, B_ROWS), n, {})]) for n in (12, 3)]  # fmt: skip
    merged = merge_stats(stages)
    assert merged["decode_steps"] == 15 and "pipeline_stages" not in merged
    assert [[s["decode_steps"] for s in r["pipeline_stages"]] for r in merged["replicas"]] == [[12, 12], [3, 3]]
    assert [layer["layer"] for layer in merged["layers"]] == [0, 1, 2, 3]


def test_stage_states_name_every_stage_s_layers():
    state = {"policy": "lynx", "cuda_graphs_replay_pruning": True}
    joined = join_stage_states([{**state, "expert_compute": {"0": "lynx-cpu", "1": "lynx-cpu"}},
                                {**state, "expert_compute": {"2": "lynx-cpu", "3": "sglang"}}])  # fmt: skip
    assert joined["expert_compute"] == {"0": "lynx-cpu", "1": "lynx-cpu", "2": "lynx-cpu", "3": "sglang"}
    assert (joined["pipeline_stages"], joined["cuda_graphs_replay_pruning"]) == (2, True)


def test_stages_without_captured_graphs_say_none():
    joined = join_stage_states([{"policy": "lynx", "cuda_graphs_replay_pruning": None}] * 2)
    assert joined["cuda_graphs_replay_pruning"] is None
    mixed = join_stage_states([{"cuda_graphs_replay_pruning": True}, {"cuda_graphs_replay_pruning": False}])
    assert mixed["cuda_graphs_replay_pruning"] is False


def test_figures_before_any_step_have_the_types_they_have_after_one():
    """A fresh or reset table answered integer 0 for the byte totals, a float everywhere else."""
    from lynx_sglang.scheduler.stats import model_wide_figures

    figures = model_wide_figures([])
    assert all(isinstance(value, float) for key, value in figures.items() if key != "layers")
