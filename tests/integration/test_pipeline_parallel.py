"""`lynx-sglang serve --pp-size 2 --lynx-policy lynx` on this CPU: each stage prunes its own layers, a
switch reaches both stages, and /lynx/stats joins the stages' layers (it held the first stage's only)."""

import pytest
from live_server import RunningServer, admin_post, get_json, post, solve_heldout

pytestmark = pytest.mark.slow

TOKEN = "pp-admin-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--pp-size", "2", "--lynx-policy", "lynx", "--lynx-admin-token", TOKEN],
                        tmp_path_factory.mktemp("pipeline") / "server.log", env={"SGLANG_CPU_OMP_THREADS_BIND": ""})
    srv.wait_healthy()
    yield srv
    srv.stop()


def admin(server, path, body):
    return admin_post(server, path, body, TOKEN)


def test_stats_hold_every_stage_s_layers(server):
    admin(server, "/lynx/stats/reset", {})
    assert solve_heldout(server, 24, seed=47) >= 18  # the embedded model solves about 95 %
    stats = get_json(server.url + "/lynx/stats")
    assert [layer["layer"] for layer in stats["layers"]] == [0, 1, 2, 3]
    stages = stats["pipeline_stages"]
    assert [(s["stage"], s["layers"]) for s in stages] == [(0, [0, 1]), (1, [2, 3])]
    assert all(s["decode_steps"] > 0 for s in stages) and stats["decode_steps"] == stages[0]["decode_steps"]
    assert all(layer["steps"] > 0 and layer["routing"] == "pruned" for layer in stats["layers"])
    assert stats["distinct_experts_after"] < stats["distinct_experts_before"]
    assert get_json(server.url + "/lynx/policy")["expert_compute"].keys() == {"0", "1", "2", "3"}


def test_a_switch_reaches_both_stages_and_a_refused_one_neither(server):
    state = admin(server, "/lynx/policy", {"policy": "budget", "budget": "experts=1"})
    assert (state["policy"], state["pipeline_stages"]) == ("budget", 2)
    status, reply = post(server.url + "/lynx/policy", {"budget": "experts=99"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and "experts=99 out of range" in reply["error"], reply
    admin(server, "/lynx/stats/reset", {})
    solve_heldout(server, 12, seed=48)
    stats = get_json(server.url + "/lynx/stats")
    assert (stats["policy"], stats["budget"]) == ("budget", "experts=1")
    assert [(layer["layer"], layer["distinct_experts_after"]) for layer in stats["layers"]] == [
        (0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)]
    admin(server, "/lynx/policy", {"policy": "lynx"})
