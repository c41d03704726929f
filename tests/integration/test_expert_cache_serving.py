"""`--lynx-expert-cache` served for real: the embedded model (8 experts, top-2) with a quarter of its
experts resident per MoE layer, the rest in host memory, over HTTP (one cached server per module)."""

import urllib.request

import pytest
from live_server import RunningServer, get_json, post

from lynx_sglang.embedded.task import heldout_problems, score

pytestmark = pytest.mark.slow

PROBLEMS = [p.prompt for p in heldout_problems(200, seed=41)]


def started(args, log_path) -> RunningServer:
    return RunningServer.healthy_one(["--lynx-policy", "baseline", *args], log_path)  # said, not left to a default


def greedy(server, prompts, concurrency=16):
    """One batched /generate call per `concurrency` prompts: decode batches of several rows, which need
    more experts than the cache's two slots, besides prefill."""
    texts = []
    for start in range(0, len(prompts), concurrency):
        body = {"text": prompts[start : start + concurrency], "sampling_params": {"temperature": 0, "max_new_tokens": 8}}
        status, replies = post(server.url + "/generate", body, timeout=600)
        assert status == 200, replies
        texts += [reply["text"] for reply in replies]
    return texts


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    log = tmp_path_factory.mktemp("cache") / "server.log"
    srv = started(["--lynx-expert-cache", "25%", "--lynx-admin-token", "t0ken", "--enable-metrics"], log)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def uncached_outputs(tmp_path_factory):
    """The same problems served without the cache (its own server, stopped before the cached one starts)."""
    srv = started([], tmp_path_factory.mktemp("plain") / "server.log")
    try:
        return greedy(srv, PROBLEMS)
    finally:
        srv.stop()


# First in the module: it starts its own servers before the module's cached server exists (one at a time).
@pytest.mark.parametrize("args", [
    ["--lynx-expert-cache", "50%", "--lynx-cache-policy", "activation"],
    ["--lynx-expert-cache", "25%", "--lynx-cache-prefetch"],
    # The CUDA path (Triton copies and MoE), interpreted: no warm-up request, which would cost as much as the test's.
    ["--lynx-expert-cache", "1", "--lynx-kernel", "triton", "--skip-server-warmup"],
], ids=["half-activation", "quarter-prefetch", "one-slot-triton"])  # fmt: skip
def test_other_cache_sizes_policies_and_kernels_answer_exactly_as_without_the_cache(uncached_outputs, args, tmp_path):
    count = len(PROBLEMS) if "triton" not in args else 6  # Triton's interpreter is slow: a few problems
    srv = started(args, tmp_path / "server.log")
    try:
        assert greedy(srv, PROBLEMS[:count]) == uncached_outputs[:count]
        cache = get_json(srv.url + "/lynx/stats")["expert_cache"]
        assert cache["cache_misses"] > 0 and cache["layers"][0]["slots"] == {"50%": 4, "25%": 2, "1": 1}[args[1]]
        if "--lynx-cache-prefetch" in args:  # layers 1-3 are prefetched for; routing repeats enough to guess some
            assert 0 < cache["prefetch_accuracy"] <= 1 and cache["layers"][0]["prefetch_accuracy"] is None
            assert all(layer["prefetched"] > 0 for layer in cache["layers"][1:])
        else:
            assert cache["prefetch_accuracy"] is None
        assert cache["expert_compute"] == ("lynx-triton" if "triton" in args else "lynx-cpu")
    finally:
        srv.stop()


def test_random_weights_are_made_on_the_host_too(tmp_path):
    """--load-format dummy (random weights, no checkpoint read): the experts are made in host memory
    and filled there, so a model larger than the device can start; the server answers."""
    srv = started(["--lynx-expert-cache", "2", "--load-format", "dummy"], tmp_path / "server.log")
    try:
        assert len(greedy(srv, PROBLEMS[:2], concurrency=2)) == 2
        assert "host memory (4 layers made there at load)" in srv.log_path.read_text()
    finally:
        srv.stop()


def test_baseline_with_a_quarter_of_the_experts_resident_answers_exactly_as_without_the_cache(uncached_outputs, cached):
    assert greedy(cached, PROBLEMS) == uncached_outputs
    log = cached.log_path.read_text()
    assert "expert cache: 2 of 8 experts resident per MoE layer on 4 layers (policy lru)" in log
    assert "host memory (4 layers made there at load)" in log  # the loader made the experts on the host


def test_stats_count_hits_and_misses_per_layer(cached):
    post(cached.url + "/lynx/stats/reset", {}, headers={"Authorization": "Bearer t0ken"})
    greedy(cached, PROBLEMS[:4], concurrency=1)  # decode steps of one row: two experts, two slots
    cache = get_json(cached.url + "/lynx/stats")["expert_cache"]
    assert cache["spec"] == "25%" and cache["policy"] == "lru" and cache["prefetch_accuracy"] is None
    assert [layer["layer"] for layer in cache["layers"]] == [0, 1, 2, 3]
    for layer in cache["layers"]:
        assert layer["slots"] == 2 and layer["num_experts"] == 8
        assert layer["cache_hits"] > 0 and layer["cache_misses"] > 0  # a real routing is neither all hit nor all miss
        assert 0 < layer["decode_misses"] <= 2 * layer["decode_tokens"]  # one row: at most k copies a step
        expert_bytes = 3 * 128 * 256 * 4
        assert layer["cache_bytes_copied_per_decode_token"] == pytest.approx(
            layer["decode_misses"] * expert_bytes / layer["decode_tokens"])
    assert cache["cache_hits"] == sum(layer["cache_hits"] for layer in cache["layers"])
    assert cache["cache_bytes_copied_per_decode_token"] == pytest.approx(
        sum(layer["cache_bytes_copied_per_decode_token"] for layer in cache["layers"]))


def test_metrics_carry_the_cache_figures(cached):
    greedy(cached, PROBLEMS[:2], concurrency=2)
    with urllib.request.urlopen(cached.url + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    for name in ("lynx_cache_hits_total", "lynx_cache_misses_total", "lynx_cache_bytes_copied_per_decode_token",
                 'lynx_cache_layer_misses_total{layer="3"}'):
        assert name in text, name
    assert "lynx_cache_prefetch_accuracy" not in text  # no prefetch yet: no figure rather than a false one


def test_the_cache_setting_is_fixed_while_serving(cached):
    status, reply = post(cached.url + "/lynx/policy", {"config": {"expert_cache": "50%"}},
                         headers={"Authorization": "Bearer t0ken"})  # fmt: skip
    assert status == 400 and "expert_cache cannot change while serving" in reply["error"], reply
    policy = get_json(cached.url + "/lynx/policy")
    assert policy["expert_cache"] == "25%" and policy["cache_policy"] == "lru" and policy["cache_prefetch"] is False
    assert policy["expert_compute"] == {str(layer): "lynx-cpu through the expert cache" for layer in range(4)}


def misses_and_accuracy(server, policy_request, problems, concurrency):
    """(expert-cache misses per decode token over the MoE layers, accuracy) after switching the policy."""
    auth = {"Authorization": "Bearer t0ken"}
    status, reply = post(server.url + "/lynx/policy", policy_request, headers=auth)
    assert status == 200, reply
    post(server.url + "/lynx/stats/reset", {}, headers=auth)
    answers = greedy(server, [p.prompt for p in problems], concurrency=concurrency)
    layers = get_json(server.url + "/lynx/stats")["expert_cache"]["layers"]
    return sum(layer["decode_misses"] for layer in layers) / layers[0]["decode_tokens"], score(problems, answers).accuracy


# Last in the module: it switches the cached server's policy (and back).
def test_a_cache_aware_policy_copies_fewer_experts_even_for_a_lone_row(cached):
    """prefer_resident is the one setting under which a lone row's routing may change: with lynx, a token
    trades its second expert for a resident one it rates in the same bin."""
    problems = heldout_problems(40, seed=43)
    try:
        plain = misses_and_accuracy(cached, {"policy": "baseline"}, problems, 1)
        aware = misses_and_accuracy(cached, {"policy": "lynx", "params": {"prefer_resident": True}}, problems, 1)
        state = get_json(cached.url + "/lynx/policy")
    finally:
        post(cached.url + "/lynx/policy", {"policy": "baseline"}, headers={"Authorization": "Bearer t0ken"})
    assert state["params"] == {"prefer_resident": True}
    assert aware[0] < 0.75 * plain[0], (aware, plain)
    assert aware[1] >= plain[1] - 0.1, (aware, plain)
