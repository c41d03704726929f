"""Which processes the plugin treats as SGLang's HTTP server (routes, metrics, request checks)."""

import sys
import types

import pytest

from lynx_sglang import plugin


@pytest.mark.parametrize("spec, argv, expected", [
    ("sglang.launch_server", ["/x/python", "--model-path", "m"], True),  # what `lynx-sglang serve` runs
    (None, ["/x/bin/sglang", "serve", "--model-path", "m"], True),  # SGLang's console script: no module spec
    (None, ["/x/bin/sglang", "generate"], False),
    (None, ["my_app.py"], False),  # a user's program with sglang.Engine
    ("my_package.main", ["/x/python"], False),
])
def test_the_http_server_is_told_from_an_offline_engine(spec, argv, expected, monkeypatch):
    main = types.ModuleType("__main__")
    main.__spec__ = None if spec is None else types.SimpleNamespace(name=spec)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", argv)
    assert plugin._started_as_http_server() is expected


def test_an_offline_engine_gets_the_request_checks_without_the_fastapi_hook():
    from lynx_sglang.server import request_guard

    registered = []
    request_guard.register_hooks(lambda target, hook, kind: registered.append(target), http=False)
    assert request_guard.VALIDATE_TARGET in registered and request_guard.BODY_VALIDATION_TARGET not in registered
    registered.clear()
    request_guard.register_hooks(lambda target, hook, kind: registered.append(target))
    assert request_guard.BODY_VALIDATION_TARGET in registered
