"""`lynx-sglang serve` stops every SGLang child process on SIGTERM and on Ctrl-C (SIGINT); SIGTERM lets
the requests in flight finish first."""

import json
import signal
import time
import urllib.request

import psutil
import pytest
from live_server import RunningServer

pytestmark = pytest.mark.slow

# The embedded model's context is 64 tokens: a 7-token prompt and 48 generated fit.
LONG_REQUEST = {"model": "default", "prompt": "123+45=", "max_tokens": 48, "temperature": 0, "ignore_eos": True,
                "stream": True}  # fmt: skip


def streamed_completion(url, on_first_chunk):
    """Stream LONG_REQUEST; call `on_first_chunk()` once the first chunk is in; return every chunk."""
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps(LONG_REQUEST).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    chunks = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks.append(json.loads(line[len("data: "):]))
            if len(chunks) == 1:
                on_first_chunk()
    return chunks


def assert_forked_from_the_launchers_forkserver(processes):
    """On a CPU install the scheduler and detokenizer are forks of one forkserver the launcher started
    (lynx_sglang/cpu_runtime/forkserver.py), not spawned interpreters."""
    (launcher,) = [p for p in processes if "sglang.launch_server" in p.cmdline()]
    workers = [p for p in processes if p.name().startswith("sglang::")]
    assert {p.name() for p in workers} == {"sglang::scheduler", "sglang::detokenizer"}, workers
    parents = {p.ppid() for p in workers}
    assert len(parents) == 1, parents
    server = psutil.Process(parents.pop())
    assert "multiprocessing.forkserver" in " ".join(server.cmdline()) and server.ppid() == launcher.pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_every_sglang_process(sig, tmp_path):
    srv = RunningServer([], tmp_path / "server.log")
    chunks = None
    try:
        srv.wait_healthy()
        children = psutil.Process(srv.process.pid).children(recursive=True)
        titles = " ".join(c.name() + " " + " ".join(c.cmdline()) for c in children)
        assert "sglang" in titles and len(children) >= 3, titles  # launcher, scheduler, detokenizer
        assert_forked_from_the_launchers_forkserver(children)
        if sig == signal.SIGTERM:  # a request in flight when SIGTERM comes still gets all of its answer
            chunks = streamed_completion(srv.url, lambda: srv.process.send_signal(signal.SIGTERM))
            srv.process.wait(timeout=60)  # stops by itself: a second signal would mean "hurry"
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
    # SGLang stopped itself: it did not see its scheduler killed under it and take the crash path.
    assert "SIGQUIT received" not in srv.log_path.read_text(errors="replace"), srv.log_tail()
    if chunks is not None:
        text = "".join(chunk["choices"][0]["text"] for chunk in chunks)
        finish = [chunk["choices"][0].get("finish_reason") for chunk in chunks if chunk["choices"][0].get("finish_reason")]
        assert finish == ["length"], (finish, text)
        assert len(chunks) >= 40, (len(chunks), text)  # one chunk per token, about (detokenizer may merge)
