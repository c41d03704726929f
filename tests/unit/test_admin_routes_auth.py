"""The /lynx/* routes behind SGLang's own API-key middleware (the real one, on a FastAPI app, no server):
lynx's admin routes are SGLang admin endpoints (`--admin-api-key` where set, else `--api-key`), the
others normal ones; the admin token comes as `Authorization: Bearer` or `X-Lynx-Admin-Token`. No
scheduler runs here, so a request that passes every check ends at the channel (503)."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sglang.srt.utils.auth import add_api_key_middleware

from lynx_sglang.config import LynxConfig
from lynx_sglang.server.routes import add_routes

PASSED_CHECKS = 503  # no scheduler channel in this process: the request got past every check


def client(api_key=None, admin_api_key=None, token="t"):
    app = FastAPI()
    add_routes(app, LynxConfig(admin_token=token), channel=None, runtime_dir=None)
    if api_key or admin_api_key:
        add_api_key_middleware(app, api_key=api_key, admin_api_key=admin_api_key)
    return TestClient(app)


@pytest.mark.parametrize("keys, headers, status", [
    ({}, {"Authorization": "Bearer t"}, PASSED_CHECKS),
    ({}, {"X-Lynx-Admin-Token": "t"}, PASSED_CHECKS),
    ({}, {"Authorization": "Bearer x", "X-Lynx-Admin-Token": "t"}, PASSED_CHECKS),
    ({}, {"Authorization": "Bearer x"}, 403),
    ({"api_key": "k"}, {"Authorization": "Bearer k", "X-Lynx-Admin-Token": "t"}, PASSED_CHECKS),
    ({"api_key": "k"}, {"Authorization": "Bearer k"}, 403),
    ({"api_key": "k"}, {"X-Lynx-Admin-Token": "t"}, 401),
    ({"api_key": "k", "admin_api_key": "a"}, {"Authorization": "Bearer a", "X-Lynx-Admin-Token": "t"}, PASSED_CHECKS),
    ({"api_key": "k", "admin_api_key": "a"}, {"Authorization": "Bearer k", "X-Lynx-Admin-Token": "t"}, 401),
])  # fmt: skip
def test_a_switch_passes_sglangs_key_check_then_lynxs_token(keys, headers, status):
    reply = client(**keys).post("/lynx/policy", json={"policy": "lynx"}, headers=headers)
    assert reply.status_code == status, reply.text
    if status == 403:
        assert "X-Lynx-Admin-Token" in reply.json()["error"]


def test_reads_need_sglangs_normal_key_only():
    keyed = client(api_key="k", admin_api_key="a")
    assert keyed.get("/lynx/stats").status_code == 401
    assert keyed.get("/lynx/stats", headers={"Authorization": "Bearer k"}).status_code == PASSED_CHECKS
    assert keyed.post("/lynx/stats/reset", headers={"Authorization": "Bearer k"}).status_code == 401
    assert client(admin_api_key="a").get("/lynx/policy").status_code == PASSED_CHECKS


def test_control_is_unavailable_with_data_parallel_attention_only():
    from types import SimpleNamespace

    from lynx_sglang.server.channel import control_unavailable

    assert control_unavailable(SimpleNamespace(dp_size=1)) is None
    assert control_unavailable(SimpleNamespace()) is None  # an SGLang without the field: one replica
    assert control_unavailable(SimpleNamespace(dp_size=3, enable_dp_attention=False)) is None  # replicas
    assert "--enable-dp-attention" in control_unavailable(SimpleNamespace(dp_size=3, enable_dp_attention=True))
    routes = TestClient(FastAPI())
    add_routes(routes.app, LynxConfig(admin_token="t"), None, None, unavailable="not with replicas")
    reply = routes.get("/lynx/stats")
    assert (reply.status_code, reply.json()["error"]) == (501, "not with replicas")
