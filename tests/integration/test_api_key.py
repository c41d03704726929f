"""A server with SGLang's `--api-key` and `--admin-api-key`: SGLang's key guards every route but /health
and /metrics, its admin key alone opens the admin routes, which still need lynx's admin token (then
in `X-Lynx-Admin-Token`, since the keys take `Authorization`), and `eval` and `ab` reach it with
`--api-key` (and `--admin-api-key`). The same with one key: tests/unit/test_admin_routes_auth.py."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from live_server import RunningServer, post

pytestmark = pytest.mark.slow

API_KEY, ADMIN_KEY, TOKEN = "sglang-key", "sglang-admin-key", "lynx-token"
WITH_KEY = {"Authorization": f"Bearer {API_KEY}"}
WITH_ADMIN_KEY = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--lynx-policy", "lynx", "--lynx-admin-token", TOKEN, "--api-key", API_KEY,
                         "--admin-api-key", ADMIN_KEY, "--enable-metrics"],
                        tmp_path_factory.mktemp("api-key") / "server.log")  # fmt: skip
    srv.wait_healthy()
    yield srv
    srv.stop()


def get_status(url, headers):
    """(status, body text) of a GET."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_key_guards_everything_but_health_and_metrics(server):
    assert get_status(server.url + "/lynx/stats", {})[0] == 401
    assert get_status(server.url + "/lynx/stats", WITH_KEY)[0] == 200
    assert get_status(server.url + "/health", {})[0] == 200
    status, metrics = get_status(server.url + "/metrics", {})
    assert status == 200 and "lynx_" in metrics


@pytest.mark.parametrize("headers, status, needle", [
    ({**WITH_ADMIN_KEY, "X-Lynx-Admin-Token": TOKEN}, 200, None),
    ({**WITH_KEY, "X-Lynx-Admin-Token": TOKEN}, 401, None),  # SGLang: the admin key alone on admin routes
    (WITH_ADMIN_KEY, 403, "X-Lynx-Admin-Token"),
    ({**WITH_ADMIN_KEY, "X-Lynx-Admin-Token": "wrong"}, 403, "missing or wrong admin token"),
    ({"Authorization": f"Bearer {TOKEN}"}, 401, None),  # SGLang's key check comes first
])  # fmt: skip
def test_a_switch_needs_the_admin_key_and_the_admin_token(server, headers, status, needle):
    got, reply = post(server.url + "/lynx/policy", {"policy": "lynx", "params": {"alpha": 2.0}}, headers=headers)
    assert got == status, reply
    if needle:
        assert needle in reply["error"], reply


def lynx_sglang(*args):
    return subprocess.run([sys.executable, "-m", "lynx_sglang.cli", *args], capture_output=True, text=True, timeout=600)


def test_eval_takes_the_key_and_says_when_it_is_missing(server):
    scored = lynx_sglang("eval", "--url", server.url, "--count", "40", "--api-key", API_KEY, "--json")
    assert scored.returncode == 0 and json.loads(scored.stdout)["total"] == 40, scored.stderr
    refused = lynx_sglang("eval", "--url", server.url, "--count", "4")
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr and "--api-key" in refused.stderr, refused.stderr


def test_ab_switches_arms_through_the_keys(server, tmp_path):
    run = lynx_sglang("ab", "--url", server.url, "--admin-token", TOKEN, "--api-key", API_KEY, "--admin-api-key",
                      ADMIN_KEY, "--n", "16", "--concurrency", "4", "--blocks", "2", "--bootstrap", "200", "--out",
                      str(tmp_path))  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert API_KEY not in json.dumps(results) and ADMIN_KEY not in json.dumps(results), "keys are secrets"
    command = results["config"]["command"]
    assert "--api-key '***'" in command and "--admin-api-key '***'" in command, command
    without = lynx_sglang("ab", "--url", server.url, "--admin-token", TOKEN, "--n", "4", "--out", str(tmp_path / "b"))
    assert without.returncode == 2 and "wants SGLang's API key" in without.stderr, without.stderr
    no_admin_key = lynx_sglang("ab", "--url", server.url, "--admin-token", TOKEN, "--api-key", API_KEY, "--n", "4",
                               "--out", str(tmp_path / "c"))  # fmt: skip
    assert no_admin_key.returncode == 2 and "--admin-api-key" in no_admin_key.stderr, no_admin_key.stderr
