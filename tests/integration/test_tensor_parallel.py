"""`lynx-sglang serve --tp 2 --lynx-policy lynx` on the embedded model, on this CPU with the default
core binding: every rank takes the same decision at every pruned step (their decision digests in
`/lynx/stats` agree), and the greedy answers match one rank's on 100 problems; with the expert cache
and the cache-aware lynx, each rank caches its own shards and the ranks still decide alike. Three
servers, one after the other."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from live_server import RunningServer, get_json, post

from lynx_sglang.cpu_runtime.threads import threads_bind, usable_cores
from lynx_sglang.embedded.task import heldout_problems, normalise_completion, score
from lynx_sglang.evaluate import complete

pytestmark = pytest.mark.slow

TOKEN = "tp-admin-token"
PROBLEMS = heldout_problems(100, seed=41, distinct=True)
CONCURRENCY = 32  # decode batches of many rows, so the policy has a batch to prune
# Sharded sums (attention and expert outputs are reduced across ranks) may flip a near-tie.
MIN_AGREEING = 98


def serve_and_solve(args, log_path, env=None) -> dict:
    server = RunningServer(["--lynx-policy", "lynx", "--lynx-admin-token", TOKEN, *args], log_path, env=env)
    try:
        server.wait_healthy()
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            completions = list(pool.map(lambda p: complete(server.url, p.prompt), PROBLEMS))
        stats = get_json(server.url + "/lynx/stats")
        status, after_reset = post(server.url + "/lynx/stats/reset", {}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, after_reset
    finally:
        server.stop()
    return {"completions": completions, "stats": stats, "after_reset": after_reset, "log": log_path.read_text()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensor-parallel")
    # An empty binding counts as unset: the launcher's default applies whatever the caller's environment holds.
    tp2 = serve_and_solve(["--tp", "2"], folder / "tp2.log", env={"SGLANG_CPU_OMP_THREADS_BIND": ""})
    cached = serve_and_solve(["--tp", "2", "--lynx-expert-cache", "25%", "--lynx-param", "prefer_resident=true"],
                             folder / "tp2-cache.log", env={"SGLANG_CPU_OMP_THREADS_BIND": ""})  # fmt: skip
    return {"tp2": tp2, "tp2-cache": cached, "tp1": serve_and_solve([], folder / "tp1.log")}


def test_each_rank_runs_on_its_own_default_core_set(runs):
    expected = threads_bind(2, usable_cores()).split("|")
    bound = dict(re.findall(r"init_threads_binding: numa_index=(\d), world_size=2, local_omp_cpuid=(\S+)",
                            runs["tp2"]["log"]))  # fmt: skip
    assert bound == {"0": expected[0], "1": expected[1]}, bound


def test_every_rank_takes_the_same_decision_at_every_step(runs):
    stats = runs["tp2"]["stats"]
    assert stats["pruned_steps"] > 0 and stats["fallback_steps"] == 0
    assert stats["distinct_experts_after"] < stats["distinct_experts_before"]
    ranks = stats["decisions_by_rank"]
    print("decisions by rank:", json.dumps(ranks))
    assert [entry["rank"] for entry in ranks] == [0, 1]
    assert ranks[0]["digest"] != "00000000"
    for entry in ranks:  # every rank digested every MoE layer of every step it routed
        assert entry["steps"] == stats["decode_steps"] and entry["layer_calls"] == 4 * stats["decode_steps"]
        assert entry["digest"] == ranks[0]["digest"], ranks
    assert stats["ranks_agree"] is True


def test_a_reset_clears_every_ranks_digest(runs):
    after = runs["tp2"]["after_reset"]
    assert after["ranks_agree"] is True and after["decode_steps"] == 0
    assert [(e["rank"], e["steps"], e["digest"]) for e in after["decisions_by_rank"]] == [(0, 0, "00000000"),
                                                                                           (1, 0, "00000000")]


def test_one_rank_keeps_no_digest(runs):
    assert runs["tp1"]["stats"]["pruned_steps"] > 0
    assert "decisions_by_rank" not in runs["tp1"]["stats"] and "ranks_agree" not in runs["tp1"]["stats"]


def test_greedy_answers_agree_with_one_rank(runs):
    answers = {name: [normalise_completion(c) for c in run["completions"]] for name, run in runs.items()}
    agreeing = sum(a == b for a, b in zip(answers["tp2"], answers["tp1"]))
    accuracy = {name: score(PROBLEMS, run["completions"]).accuracy for name, run in runs.items()}
    print(f"tp 2 vs tp 1, lynx, {len(PROBLEMS)} problems at concurrency {CONCURRENCY}: {agreeing} answers agree; "
          f"accuracy {accuracy}")
    assert agreeing >= MIN_AGREEING, (agreeing, accuracy)


def test_with_the_expert_cache_each_rank_caches_its_shards_and_the_ranks_decide_alike(runs):
    """The resident masks a cache-aware policy reads are each rank's own, and equal: the same routing
    fetches the same experts on every rank (a rank holds its half of each expert's intermediate rows)."""
    run = runs["tp2-cache"]
    stats = run["stats"]
    assert stats["pruned_steps"] > 0 and stats["fallback_steps"] == 0 and stats["ranks_agree"] is True
    assert stats["expert_cache"]["cache_misses"] > 0
    # 4 layers x 8 experts x 393 KB (fp32), half of it per rank: 6.3 MB in host memory on each
    assert run["log"].count("6.3 MB of experts in host memory") == 2, run["log"][-3000:]
    solved = score(PROBLEMS, run["completions"]).accuracy
    assert solved >= score(PROBLEMS, runs["tp2"]["completions"]).accuracy - 0.05
