"""`lynx-sglang serve --dp-size 2 --lynx-policy lynx` on this CPU: each replica gets a core set of its
own (SGLang would assert one NUMA node per replica), both serve with the policy, a switch reaches
both, and /lynx/stats and /metrics add up both replicas' figures."""

import re
import urllib.request

import pytest
from live_server import RunningServer, admin_post, get_json, post, solve_heldout

from lynx_sglang.cpu_runtime.threads import threads_bind, usable_cores

pytestmark = pytest.mark.slow

TOKEN = "dp-admin-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--dp-size", "2", "--lynx-policy", "lynx", "--lynx-admin-token", TOKEN, "--enable-metrics"],
                        tmp_path_factory.mktemp("data-parallel") / "server.log", env={"SGLANG_CPU_OMP_THREADS_BIND": ""})
    srv.wait_healthy()
    yield srv
    srv.stop()


def test_both_replicas_serve_on_their_own_core_sets(server):
    solved = solve_heldout(server, 32, seed=43, concurrency=16)
    assert solved >= 24, f"{solved}/32"  # the embedded model solves about 95 %
    log = server.log_path.read_text()
    bound = dict(re.findall(r"init_threads_binding: numa_index=(\d), world_size=2, local_omp_cpuid=(\S+)", log))
    expected = threads_bind(2, usable_cores()).split("|")
    assert bound == {"0": expected[0], "1": expected[1]}, bound
    assert "--dp-size 2: a switch reaches every replica" in log


def admin(server, path, body):
    return admin_post(server, path, body, TOKEN)


def solve(server, seed):
    solve_heldout(server, 32, seed, concurrency=16)


def test_stats_add_up_both_replicas(server):
    admin(server, "/lynx/stats/reset", {})
    solve(server, seed=44)
    stats = get_json(server.url + "/lynx/stats")
    replicas = stats["replicas"]
    assert [r["replica"] for r in replicas] == [0, 1]
    assert all(r["decode_steps"] > 0 for r in replicas), replicas  # requests go to both, round robin
    assert stats["decode_steps"] == sum(r["decode_steps"] for r in replicas)
    assert sum(layer["steps"] for layer in stats["layers"]) == 4 * stats["pruned_steps"]
    low, high = sorted(r["distinct_experts_after"] for r in replicas)
    assert low - 1e-9 <= stats["distinct_experts_after"] <= high + 1e-9
    assert stats["distinct_experts_after"] < stats["distinct_experts_before"]  # lynx prunes on both


def test_a_switch_reaches_every_replica_and_a_refused_one_none(server):
    state = admin(server, "/lynx/policy", {"policy": "budget", "budget": "experts=1"})
    assert (state["policy"], state["replicas"], state["replicas_agree"]) == ("budget", 2, True)
    admin(server, "/lynx/stats/reset", {})
    solve(server, seed=45)
    stats = get_json(server.url + "/lynx/stats")
    assert [(r["decode_steps"] > 0, r["distinct_experts_after"]) for r in stats["replicas"]] == [(True, 1.0)] * 2
    status, reply = post(server.url + "/lynx/policy", {"policy": "no-such-policy"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and reply["error"].startswith("unknown policy 'no-such-policy'"), reply
    state = get_json(server.url + "/lynx/policy")
    assert (state["policy"], state["budget"], state["replicas_agree"]) == ("budget", "experts=1", True)
    admin(server, "/lynx/policy", {"policy": "lynx"})


def test_metrics_carry_both_replicas(server):
    from prometheus_client.parser import text_string_to_metric_families

    solve(server, seed=46)
    stats = get_json(server.url + "/lynx/stats")
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as reply:
        families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    scraped = families["lynx_decode_steps"].samples[0].value
    assert scraped >= sum(r["decode_steps"] for r in stats["replicas"]) > 0
