"""`--lynx-prune-mixed` with SGLang's `--enable-mixed-chunk`: the decode rows of a mixed prefill+decode
batch are routed by the policy. SGLang's eager runner runs a mixed batch as an extend one (a copy
whose mode says EXTEND); that inner forward used to hide the mixed step, so its decode rows kept the
model's routing while /lynx/stats counted the step as pruned."""

import pytest
from live_server import RunningServer, get_json, solve_heldout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--lynx-policy", "budget", "--lynx-budget", "experts=1", "--lynx-prune-mixed",
                         "--enable-mixed-chunk"], tmp_path_factory.mktemp("mixed") / "server.log")  # fmt: skip
    srv.wait_healthy()
    yield srv
    srv.stop()


def test_the_decode_rows_of_mixed_batches_are_pruned_and_counted_per_layer(server):
    # 16 at once, 48 in all: requests end at different steps, so new prefills join running decodes.
    solve_heldout(server, 48, seed=61, concurrency=16)
    stats = get_json(server.url + "/lynx/stats")
    assert stats["steps_by_mode"].get("mixed", 0) > 0, stats["steps_by_mode"]
    assert stats["fallback_steps"] == 0 and stats["decode_steps"] > 0, stats
    # Every step counted as pruned reached every MoE layer's routing, mixed ones included.
    assert [layer["steps"] for layer in stats["layers"]] == [stats["decode_steps"]] * len(stats["layers"]), stats
    assert stats["distinct_experts_after"] == 1.0 < stats["distinct_experts_before"], stats
