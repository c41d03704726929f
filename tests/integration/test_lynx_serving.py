"""`lynx-sglang serve --lynx-policy lynx` on the embedded model, over HTTP: pruning with stats,
accuracy against baseline, prefill untouched, policy switches under load, broken policies, the admin
token, metrics and the latency budget. One real server for the module."""

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from live_server import RunningServer, get_json, post

from lynx_sglang.embedded.task import heldout_problems, score
from lynx_sglang.evaluate import complete
from lynx_sglang.experiments.client import setting_of

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUPPORT = str(Path(__file__).parents[1] / "support")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(
        ["--lynx-policy", "lynx", "--lynx-admin-token", TOKEN, "--enable-metrics"],
        tmp_path_factory.mktemp("lynx") / "server.log",
        env={"PYTHONPATH": SUPPORT},  # makes `fault_policies:<Class>` importable in the scheduler
    )
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def switch(server, **body):
    status, state = post(server.url + "/lynx/policy", body, headers=AUTH)
    assert status == 200, state
    return state


def reset_stats(server):
    status, body = post(server.url + "/lynx/stats/reset", {}, headers=AUTH)
    assert status == 200, body


def answers(server, problems, concurrency=32):
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda p: complete(server.url, p.prompt), problems))


def test_policy_endpoint_shows_the_configured_policy(server):
    state = get_json(server.url + "/lynx/policy")
    assert state["policy"] == "lynx" and state["kernel"] == "auto" and state["budget"] is None
    assert set(state["expert_compute"].values()) <= {"lynx-cpu"}  # filled once a decode step ran
    assert state["cuda_graphs_replay_pruning"] is None  # a CPU decodes without captured graphs
    # params as given ({}), and as the policy decides on this model (8 experts, top-2: lynx_defaults)
    assert state["params"] == {} and state["params_in_effect"]["beta"] == 1
    assert state["params_in_effect"]["alpha"] == pytest.approx(0.7)


def test_lynx_prunes_at_concurrency_32_within_3_points_of_baseline(server):
    problems = heldout_problems(500, seed=21)
    figures = {}
    for policy in ("lynx", "baseline"):
        switch(server, policy=policy)
        reset_stats(server)
        completions = answers(server, problems, concurrency=32)
        stats = get_json(server.url + "/lynx/stats")
        figures[policy] = {"accuracy": score(problems, completions).accuracy, **{
            key: stats[key] for key in ("distinct_experts_before", "distinct_experts_after", "pruned_steps",
                                        "expert_bytes_per_decode_token_before", "expert_bytes_per_decode_token_after")
        }}  # fmt: skip
    print("lynx vs baseline, 500 held-out problems at concurrency 32:", json.dumps(figures, indent=1))
    lynx, baseline = figures["lynx"], figures["baseline"]
    assert lynx["pruned_steps"] > 0
    assert lynx["distinct_experts_after"] < lynx["distinct_experts_before"]
    assert baseline["distinct_experts_after"] == baseline["distinct_experts_before"]
    assert lynx["expert_bytes_per_decode_token_after"] < baseline["expert_bytes_per_decode_token_after"]
    assert abs(lynx["accuracy"] - baseline["accuracy"]) <= 0.03, figures
    switch(server, policy="lynx")


def test_one_expert_changes_decode_tokens_but_never_the_first(server):
    problems = heldout_problems(50, seed=22)
    switch(server, policy="baseline")
    normal = answers(server, problems, concurrency=16)
    switch(server, policy="budget", budget="experts=1")
    pruned = answers(server, problems, concurrency=16)
    switch(server, policy="lynx", budget=None)
    assert [c[:1] for c in pruned] == [c[:1] for c in normal]  # the first token comes from prefill
    assert pruned != normal


def test_a_lone_row_is_computed_exactly_as_baseline_computes_it(server):
    # One request at a time: lynx keeps a lone row's routing, so `auto` gives it SGLang's expert
    # compute, as baseline's: the same sums, bit for bit (lynx's CPU loop adds the pairs differently).
    body = {"text": "123+45=", "return_logprob": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}}

    def decode_logprobs():
        post(server.url + "/flush_cache", {})  # the same prefill each time, not a cached prefix
        status, reply = post(server.url + "/generate", body)
        assert status == 200, reply
        return reply["meta_info"]["output_token_logprobs"]

    reset_stats(server)
    pruning = decode_logprobs()
    stats = get_json(server.url + "/lynx/stats")
    assert (stats["policy"], stats["pruned_steps"], stats["distinct_experts_after"]) == ("lynx", 5, 2.0)
    switch(server, policy="baseline")
    plain = decode_logprobs()
    switch(server, policy="lynx")
    assert pruning == plain


def test_switching_twice_under_load_loses_nothing(server):
    problems = heldout_problems(256, seed=23)
    switch(server, policy="lynx")
    reset_stats(server)
    done = []

    def solve(problem):
        body = {"model": "default", "prompt": problem.prompt, "max_tokens": 8, "temperature": 0}
        status, reply = post(server.url + "/v1/completions", body, timeout=300)
        done.append(status)
        return status

    def switch_when(count, policy):
        while len(done) < count:
            time.sleep(0.05)
        switch(server, policy=policy)

    switchers = [threading.Thread(target=switch_when, args=(85, "oea")),
                 threading.Thread(target=switch_when, args=(170, "lynx"))]
    for thread in switchers:
        thread.start()
    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(solve, problems))
    for thread in switchers:
        thread.join(timeout=60)
    assert statuses == [200] * len(problems)
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        assert r.status == 200
    by_policy = get_json(server.url + "/lynx/stats")["steps_by_policy"]
    assert by_policy.get("lynx", 0) > 0 and by_policy.get("oea", 0) > 0, by_policy


@pytest.mark.parametrize("policy", ["RaisingPolicy", "WrongShapePolicy", "OutOfRangePolicy"])
def test_a_broken_policy_falls_back_and_the_server_keeps_serving(server, policy):
    switch(server, policy=f"fault_policies:{policy}")
    reset_stats(server)
    problems = heldout_problems(16, seed=24)
    completions = answers(server, problems, concurrency=8)
    stats = get_json(server.url + "/lynx/stats")
    switch(server, policy="lynx")
    assert score(problems, completions).accuracy >= 0.5  # the model's own routing answered
    assert stats["fallback_steps"] == stats["decode_steps"] > 0 and stats["pruned_steps"] == 0


@pytest.mark.parametrize("headers,body,status,needle", [
    ({}, {"policy": "oea"}, 403, "admin token"),
    ({"Authorization": "Bearer wrong"}, {"policy": "oea"}, 403, "admin token"),
    (AUTH, {"policy": "no-such-policy"}, 400, "unknown policy"),
    (AUTH, {"policy": "lynx", "params": {"alpha": -2}}, 400, "alpha"),
    (AUTH, {"policy": "lynx", "params": {"gamma": 1}}, 400, "unknown parameter"),
    (AUTH, {"budget": "experts=0"}, 400, "out of range"),
    (AUTH, {"budget": "speed=3"}, 400, "not a budget"),
    (AUTH, {"policy": 3}, 400, "policy must be a string"),
    (AUTH, {"polcy": "oea"}, 400, "unknown field"),
    (AUTH, [1, 2], 400, "JSON object"),
    (AUTH, b"{not json", 400, "not valid JSON"),
    (AUTH, b'{"policy": "oea", "policy": "anchor"}', 400, "'policy' is given twice"),
    (AUTH, b'{"policy": "lynx", "params": {"alpha": NaN}}', 400, "NaN is not a JSON number"),
    (AUTH, {"config": {"policy": "anchor"}, "policy": "oea"}, 400, "a whole config stands alone"),
    (AUTH, {"config": {"policy": "anchor", "schedule": [{"from_rows": 3}]}}, 400, "must start at 1"),
    (AUTH, {"config": {"policy": "anchor", "stats": False}}, 400, "stats cannot change while serving"),
    (AUTH, {"config": {"policy": "lynx", "layers": "2-9"}}, 400, "layers: 9 is not a layer of this model (layers 0..3)"),
])  # fmt: skip
def test_bad_switches_are_refused_and_change_nothing(server, headers, body, status, needle):
    before = get_json(server.url + "/lynx/policy")
    got, reply = post(server.url + "/lynx/policy", body, headers=headers)
    assert got == status and needle in reply["error"], reply
    assert get_json(server.url + "/lynx/policy") == before


def test_a_whole_config_with_a_schedule_serves_each_band(server):
    schedule = [{"from_rows": 1, "params": {"ratio": 0.5}}, {"from_rows": 6, "params": {"ratio": 0.3}}]
    state = switch(server, config={"policy": "anchor", "params": {"fill_to_k": False}, "schedule": schedule})
    assert state["params"] == {"fill_to_k": False} and [band["from_rows"] for band in state["schedule"]] == [1, 6]
    shown = get_json(server.url + "/lynx/policy")
    assert shown["schedule"][1]["params"] == {"fill_to_k": False, "ratio": 0.3}
    # each band's parameters as it decides; the top-level setting decides no step under a schedule
    assert shown["params_in_effect"] is None
    assert [band["ratio"] for band in shown["params_in_effect_by_band"]] == [[0.5], [0.3]]  # per layer
    assert all(band["fill_to_k"] is False for band in shown["params_in_effect_by_band"])
    # what ab/sweep/calibrate restore a --url server with: the state as GET gives it, posted back
    assert switch(server, config=setting_of(shown))["schedule"] == shown["schedule"]
    reset_stats(server)
    problems = heldout_problems(40, seed=25)
    completions = answers(server, problems[:4], concurrency=1) + answers(server, problems[4:], concurrency=32)
    stats = get_json(server.url + "/lynx/stats")
    switch(server, policy="lynx")
    steps = [band["steps"] for band in stats["steps_by_band"]]
    assert steps[0] > 0 and steps[1] > 0 and sum(steps) == stats["decode_steps"], stats["steps_by_band"]
    assert stats["pruned_steps"] > 0 and score(problems, completions).accuracy >= 0.8


def test_stats_reset_needs_the_token(server):
    status, reply = post(server.url + "/lynx/stats/reset", {})
    assert status == 403 and "admin token" in reply["error"]


def test_metrics_carry_lynx_figures_that_parse(server):
    from prometheus_client.parser import text_string_to_metric_families

    answers(server, heldout_problems(16, seed=25), concurrency=8)
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("lynx_decode_steps", "lynx_pruned_steps", "lynx_fallback_steps", "lynx_distinct_experts_before",
                 "lynx_distinct_experts_after", "lynx_expert_bytes_per_decode_token_after", "lynx_policy_info",
                 "lynx_layer_distinct_experts_after", "lynx_budget_experts"):
        assert name in families, sorted(n for n in families if n.startswith("lynx"))
    assert families["lynx_decode_steps"].type == "counter" and families["lynx_decode_steps"].samples[0].value > 0
    layers = {s.labels["layer"] for s in families["lynx_layer_distinct_experts_after"].samples}
    assert layers == {"0", "1", "2", "3"}
    assert any(name.startswith("sglang") for name in families)  # SGLang's own metrics are still there


def test_latency_budget_runs_and_reports_its_cap(server):
    state = switch(server, policy="lynx", budget="tpot_ms=1")  # unreachable on purpose: the cap must fall
    assert state["controller"]["target_tpot_ms"] == 1.0 and state["budget_experts"] is None
    # The controller measures from one decode step's start to the next's, and a prefill in between
    # breaks the interval: one batch of 32 rows decoding 24 tokens gives it 22 intervals, however
    # fast the requests come (short answers at concurrency 32 can interleave a prefill at every step).
    body = {"text": [p.prompt for p in heldout_problems(32, seed=26)],
            "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}}
    status, replies = post(server.url + "/generate", body, timeout=300)
    assert status == 200 and len(replies) == 32, replies
    state = get_json(server.url + "/lynx/policy")
    switch(server, policy="lynx", budget=None)
    controller = state["controller"]
    assert controller["measured_tpot_ms"] > 1.0
    assert controller["experts"] < 8 and state["budget_experts"] == controller["experts"]


def test_a_budget_below_top_k_on_sglangs_cpu_expert_loop_serves(tmp_path):
    """experts=1 on a top-2 model leaves each token its first choice twice (the second at weight 0);
    SGLang's CPU loop counts an expert once per row, so the scheduler gives it distinct experts."""
    from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

    model_dir = build_tiny_checkpoint("mixtral", tmp_path / "mixtral", seed=2)
    srv = RunningServer(["--model-path", str(model_dir), "--lynx-policy", "budget", "--lynx-budget", "experts=1",
                         "--lynx-kernel", "sglang"], tmp_path / "server.log")
    try:
        srv.wait_healthy()
        body = {"input_ids": [[5, 6, 7], [8, 9], [10, 11, 12, 13]],
                "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}}
        status, results = post(srv.url + "/generate", body, timeout=300)
        stats = get_json(srv.url + "/lynx/stats")
    finally:
        srv.stop()
    assert status == 200, results
    assert [len(r["output_ids"]) for r in results] == [8, 8, 8]
    assert stats["pruned_steps"] > 0 and stats["fallback_steps"] == 0
    assert stats["distinct_experts_after"] == 1 < stats["distinct_experts_before"]
