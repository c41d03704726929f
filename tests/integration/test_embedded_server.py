"""The embedded model served by `lynx-sglang serve` (real SGLang, real checkpoint), over HTTP."""

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from live_server import RunningServer, get_json, post

from lynx_sglang.embedded.task import heldout_problems, normalise_completion
from lynx_sglang.evaluate import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer([], tmp_path_factory.mktemp("embedded") / "server.log")
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def test_health(server):
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        assert r.status == 200


def test_plugin_loaded_in_scheduler_process(server):
    info = get_json(server.url + "/lynx/info")
    roles = {p["role"] for p in info["processes"]}
    assert {"launcher", "scheduler", "detokenizer"} <= roles, info
    pids = {p["pid"] for p in info["processes"]}
    assert len(pids) == len(info["processes"]), "each process reports once"


def test_completions_solve_heldout_problems(server):
    result = evaluate(server.url, heldout_problems(100, seed=7), endpoint="completions", concurrency=16)
    assert result.score.accuracy >= 0.80, result.summary()


def test_chat_completions_solve_heldout_problems(server):
    result = evaluate(server.url, heldout_problems(100, seed=8), endpoint="chat", concurrency=16)
    assert result.score.accuracy >= 0.80, result.summary()


def test_streaming_completion_matches_non_streaming(server):
    body = {"model": "default", "prompt": "r4821=", "max_tokens": 8, "temperature": 0}
    status, plain = post(server.url + "/v1/completions", body)
    assert status == 200
    request = urllib.request.Request(
        server.url + "/v1/completions",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    pieces, saw_done = [], False
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                saw_done = True
                break
            pieces.append(json.loads(data)["choices"][0]["text"])
    assert saw_done
    assert len(pieces) >= 2, "a stream arrives in several chunks"
    assert "".join(pieces) == plain["choices"][0]["text"]
    assert normalise_completion("".join(pieces)) == "1284"


def test_32_concurrent_requests_all_complete(server):
    problems = heldout_problems(32, seed=9)

    def ask(p):
        return post(
            server.url + "/v1/completions",
            {"model": "default", "prompt": p.prompt, "max_tokens": 8, "temperature": 0},
        )

    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(ask, problems))
    assert all(status == 200 for status, _ in replies), replies
    assert all(r["choices"][0]["finish_reason"] in ("stop", "length") for _, r in replies)
    # Batched decoding gives the same greedy answers as one request at a time.
    for p, (_, reply) in list(zip(problems, replies))[:4]:
        _, alone = ask(p)
        assert alone["choices"][0]["text"] == reply["choices"][0]["text"]


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "default", "prompt": "", "max_tokens": 4},
        {"model": "default", "prompt": "1+1=", "max_tokens": -1},
        b"{this is not json",
        {"model": "default", "messages": "not a list", "max_tokens": 4},
    ],
    ids=["empty-prompt", "negative-max-tokens", "invalid-json", "bad-messages"],
)
def test_malformed_requests_get_4xx_and_server_stays_healthy(server, payload):
    endpoint = "/v1/chat/completions" if isinstance(payload, dict) and "messages" in payload else "/v1/completions"
    status, body = post(server.url + endpoint, payload)
    assert 400 <= status < 500, (status, body)
    assert server.healthy()
    status, _ = post(server.url + "/v1/completions", {"model": "default", "prompt": "1+1=", "max_tokens": 4})
    assert status == 200
