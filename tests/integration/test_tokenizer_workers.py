"""`lynx-sglang serve --tokenizer-worker-num 2`: SGLang then serves HTTP from two worker processes that
import the app afresh and load no plugin, so the /lynx routes answered 404 and the request checks and
lynx metrics were missing. Each worker now has them, with its own line to the scheduler."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from live_server import RunningServer, get_json, post, solve_heldout

pytestmark = pytest.mark.slow

TOKEN = "workers-admin-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--tokenizer-worker-num", "2", "--lynx-policy", "lynx", "--lynx-admin-token", TOKEN,
                         "--enable-metrics"], tmp_path_factory.mktemp("workers") / "server.log")  # fmt: skip
    srv.wait_healthy()
    deadline = time.monotonic() + 60  # healthy once one worker answers; the other may still be loading
    while worker_records(srv) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    yield srv
    srv.stop()


def roles(server):
    return [record["role"] for record in get_json(server.url + "/lynx/info")["processes"]]


def worker_records(server):
    return roles(server).count("http_worker")


def test_both_workers_carry_the_plugin(server):
    assert worker_records(server) == 2 and "scheduler" in roles(server), roles(server)


def test_every_answer_comes_from_the_one_scheduler_and_a_switch_reaches_it(server):
    assert solve_heldout(server, 24, seed=49) >= 18
    # One connection each, spread over both workers: every answer comes from the one scheduler, so
    # read one after another they never go back (a worker's own warm-up request may still add steps).
    steps = [get_json(server.url + "/lynx/stats")["decode_steps"] for _ in range(16)]
    assert steps[0] > 0 and steps == sorted(steps), steps
    status, state = post(server.url + "/lynx/policy", {"policy": "budget", "budget": "experts=1"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and state["budget_experts"] == 1, state
    with ThreadPoolExecutor(max_workers=8) as pool:
        policies = set(pool.map(lambda _: get_json(server.url + "/lynx/policy")["policy"], range(16)))
    assert policies == {"budget"}
    post(server.url + "/lynx/policy", {"policy": "lynx"}, headers={"Authorization": f"Bearer {TOKEN}"})


def test_the_request_checks_and_metrics_run_in_the_workers(server):
    import urllib.request

    status, reply = post(server.url + "/generate", {"input_ids": [10**8], "sampling_params": {"max_new_tokens": 2}})
    assert status == 400 and "outside the model's vocabulary" in reply["error"]["message"], reply
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    assert "lynx_decode_steps_total" in text and "lynx_policy_info" in text
    assert server.healthy()
