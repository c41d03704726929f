"""`lynx-sglang serve` stops every SGLang child process on SIGTERM and on Ctrl-C (SIGINT)."""

import signal
import time

import psutil
import pytest
from live_server import RunningServer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_every_sglang_process(sig, tmp_path):
    srv = RunningServer([], tmp_path / "server.log")
    try:
        srv.wait_healthy()
        children = psutil.Process(srv.process.pid).children(recursive=True)
        titles = " ".join(c.name() + " " + " ".join(c.cmdline()) for c in children)
        assert "sglang" in titles and len(children) >= 3, titles  # launcher, scheduler, detokenizer
    finally:
        returncode = srv.stop(sig)
    assert returncode == 0, srv.log_tail()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.2)
    assert not alive, [c.pid for c in alive]
