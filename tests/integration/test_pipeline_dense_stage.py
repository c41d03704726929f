"""`--pp-size 4` on a 4-layer GLM-4.5 whose first layer is dense: stage 0 holds no MoE layer. Its
"no MoE layers" answer refused every control request (409 / 400) after the other stages had applied
a switch; now the stages with MoE layers answer, and a refused switch reaches none."""

import pytest
from live_server import RunningServer, admin_post, get_json, post

from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

pytestmark = pytest.mark.slow

TOKEN = "dense-stage-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense-stage")
    model = build_tiny_checkpoint("glm4_moe", folder / "glm", num_experts=16, top_k=4, seed=0)
    srv = RunningServer(["--model-path", str(model), "--pp-size", "4", "--lynx-policy", "lynx",
                         "--lynx-admin-token", TOKEN, "--skip-server-warmup"], folder / "server.log")
    srv.wait_healthy()
    yield srv
    srv.stop()


def generate(server, count: int = 4) -> None:
    for prompt in ("12+34=", "7*8=", "99-5=", "3+3=")[:count]:
        status, reply = post(server.url + "/v1/completions", {"prompt": prompt, "max_tokens": 6, "temperature": 0})
        assert status == 200, reply


def test_the_stages_with_moe_layers_answer_for_the_pipeline(server):
    state = get_json(server.url + "/lynx/policy")
    assert (state["policy"], state["pipeline_stages"]) == ("lynx", 4)
    generate(server)
    stats = get_json(server.url + "/lynx/stats")
    assert [(s["stage"], s["layers"]) for s in stats["pipeline_stages"]] == [(1, [1]), (2, [2]), (3, [3])]
    assert stats["decode_steps"] > 0 and stats["decode_steps"] == stats["pruned_steps"] + stats["fallback_steps"]


def test_a_switch_reaches_every_stage_and_a_refused_one_none(server):
    state = admin_post(server, "/lynx/policy", {"policy": "budget", "budget": "experts=4"}, TOKEN)
    assert (state["policy"], state["budget"]) == ("budget", "experts=4")
    status, reply = post(server.url + "/lynx/policy", {"budget": "experts=99"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and "experts=99 out of range" in reply["error"], reply
    admin_post(server, "/lynx/stats/reset", {}, TOKEN)
    generate(server)
    stats = get_json(server.url + "/lynx/stats")
    assert (stats["policy"], stats["budget"]) == ("budget", "experts=4")
    assert all(layer["distinct_experts_after"] <= 4 for layer in stats["layers"]), stats["layers"]
