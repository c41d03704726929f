"""How `ab`/`sweep` word an error from the server they started: one that exits while starting or never
answers is reported with its log; one that is dying (it drains requests and stops SGLang's processes
for several seconds first) is reported as dead, whatever error reached the run first: an HTTP 5xx
while it drains as much as a lost connection."""

import socket
import subprocess
import sys

import pytest

from lynx_sglang.experiments import launch
from lynx_sglang.experiments.client import ServerError
from lynx_sglang.experiments.experiment import server_message
from lynx_sglang.local_server import free_port


def server_exiting_after(seconds: float, tmp_path) -> launch.ManagedServer:
    """A ManagedServer whose process is a real one that exits after `seconds` (no SGLang needed)."""
    server = launch.ManagedServer.__new__(launch.ManagedServer)
    server.log_path = tmp_path / "server.log"
    server.log_path.write_text("SIGTERM received. Draining requests and shutting down...\n")
    server.process = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    return server


def test_an_http_error_from_a_server_that_exits_soon_after_says_it_died(tmp_path):
    server = server_exiting_after(1.5, tmp_path)  # still alive when the error arrives
    message = server_message(ServerError("block 3: the server answered HTTP 503: draining"), server)
    assert message.startswith("the server died (exit code 0; log: ") and str(server.log_path) in message
    assert "Draining requests" in message and "HTTP 503" in message


def test_a_server_that_stays_up_keeps_the_error_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "DYING_SERVER_WAIT_S", 0.5)
    server = server_exiting_after(30, tmp_path)
    try:
        error = ServerError("block 3: the server answered HTTP 500: a bug")
        assert server_message(error, server) == str(error)
    finally:
        server.process.kill()
        server.process.wait()
    assert server_message(error, None) == str(error)


def test_a_server_that_exits_while_starting_is_reported_with_its_log(tmp_path):
    server = launch.ManagedServer(tmp_path / "server.log", policy=None, model_path=str(tmp_path / "nope"))
    try:
        with pytest.raises(ServerError) as error:
            server.wait_healthy(timeout=120)
    finally:
        server.stop()
    message = str(error.value)
    assert message.startswith("the server exited with code 2 while starting") and str(server.log_path) in message
    assert "does not exist" in message  # the tail of the log says why


def test_a_server_that_never_answers_is_reported_after_the_timeout(tmp_path):
    server = server_exiting_after(30, tmp_path)
    server.url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        with pytest.raises(ServerError, match=r"the server was not healthy after 1 s \(log: "):
            server.wait_healthy(timeout=1)
        assert server.alive()
    finally:
        server.process.kill()
        server.process.wait()


@pytest.mark.parametrize("tool", ["ab", "sweep"])
def test_a_server_out_of_reach_leaves_an_earlier_runs_measurements_as_they_were(tmp_path, tool):
    """A rerun into the same --out that cannot reach its server is a bad input: it ends in one line and
    exit 2 before it writes anything, so the earlier run's measurements survive it."""
    out = tmp_path / "results"
    out.mkdir()
    earlier = '{"kind": "config", "items": 8}\n{"kind": "block", "concurrency": 4}\n'
    (out / "measurements.jsonl").write_text(earlier)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "lynx_sglang.cli", tool, "--url", url, "--admin-token", "t",
                           "--n", "8", "--out", str(out)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith(f"lynx-sglang {tool}: error: cannot reach {url}"), done.stderr
    assert (out / "measurements.jsonl").read_text() == earlier and sorted(p.name for p in out.iterdir()) == [
        "measurements.jsonl"]


def test_a_port_another_process_took_is_chosen_again_then_given_up(tmp_path, monkeypatch):
    """ManagedServer chose the port, so a port another process bound first is chosen again (up to
    PORT_ATTEMPTS starts); here every port it is given is held, and serve refuses each at once."""
    monkeypatch.setattr(launch, "PORT_ATTEMPTS", 2)  # each start of serve costs seconds of imports
    held = [socket.socket() for _ in range(2)]
    for sock in held:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
    ports = iter(sock.getsockname()[1] for sock in held)
    monkeypatch.setattr(launch, "free_port", lambda: next(ports))
    try:
        server = launch.ManagedServer(tmp_path / "server.log", policy="baseline")
        with pytest.raises(ServerError, match="exited with code 2 while starting") as error:
            server.wait_healthy(timeout=120)
        assert server.port == held[-1].getsockname()[1] and "(Address already in use" in str(error.value)
        # A port the user named is the user's: not replaced
        named = launch.ManagedServer(tmp_path / "named.log", policy="baseline", port=held[0].getsockname()[1])
        with pytest.raises(ServerError):
            named.wait_healthy(timeout=120)
        assert named.port == held[0].getsockname()[1]
    finally:
        for sock in held:
            sock.close()
