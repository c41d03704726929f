"""local_server: the free port a client starts a server on, and noticing a server that lost it."""

import os
import socket
import subprocess
import sys
import time

from lynx_sglang.local_server import ephemeral_port_range, free_port, wait_healthy


def test_a_free_port_is_below_the_range_the_os_hands_out_and_bindable():
    # Ports bound to 0 by SGLang's processes as they start (gloo's listeners) come from that range: one
    # took a port free_port() had picked there, between the check and the server's bind.
    low, high = ephemeral_port_range()
    assert 1024 <= low <= high
    ports = {free_port() for _ in range(8)}
    assert all(port < low for port in ports), ports
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_server_whose_log_says_it_lost_its_port_is_given_up_at_once(tmp_path):
    # SGLang's launcher does not exit when uvicorn cannot bind: it hangs after "Waiting for application
    # shutdown", so the wait must read the log rather than wait for the process.
    log = tmp_path / "server.log"
    log.write_text("ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 4): "
                   "address already in use\nINFO:     Waiting for application shutdown.\n")
    hanging = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = time.monotonic()
        assert not wait_healthy(f"http://127.0.0.1:{free_port()}", hanging, timeout=30, log_path=log)
        assert time.monotonic() - started < 10 and hanging.poll() is None
    finally:
        hanging.kill()
        hanging.wait()


def test_the_lost_port_message_is_found_when_it_reaches_the_log_in_two_writes(tmp_path):
    # The wait reads only what the log gained since its last poll; a message split across two polls
    # must still count.
    log = tmp_path / "server.log"
    log.write_text("INFO:     Started server process\n" + "x" * 5000 + "\nERROR: [Errno 98] address alre")
    writer = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(2); "
                               f"open({str(log)!r}, 'a').write('ady in use\\n'); time.sleep(60)"])  # fmt: skip
    try:
        started = time.monotonic()
        assert not wait_healthy(f"http://127.0.0.1:{free_port()}", writer, timeout=30, log_path=log)
        assert 1.5 < time.monotonic() - started < 10 and writer.poll() is None
    finally:
        writer.kill()
        writer.wait()


HEALTHY_FOR_A_WHILE = """
import http.server, sys, threading
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health)
threading.Timer(3, server.shutdown).start()
server.serve_forever()
"""


def test_serve_stops_when_another_process_holds_its_port_while_sglang_starts(tmp_path, capsys):
    from lynx_sglang.serve import LaunchPlan, watch_sglang

    thief = socket.socket()
    thief.bind(("127.0.0.1", 0))
    thief.listen()
    port = thief.getsockname()[1]
    starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # SGLang, never healthy
    try:
        started = time.monotonic()
        assert watch_sglang(LaunchPlan(tmp_path, "127.0.0.1", port, []), starting, startup_timeout=60) == 1
        assert time.monotonic() - started < 15
        message = capsys.readouterr().err
        assert f"port {port} was taken by" in message and f"(pid {os.getpid()})" in message, message
    finally:
        thief.close()
        starting.kill()
        starting.wait()


def test_serve_reports_sglang_serving_when_its_own_process_holds_the_port(tmp_path, capsys):
    from lynx_sglang.serve import LaunchPlan, watch_sglang

    port = free_port()
    script = tmp_path / "health.py"
    script.write_text(HEALTHY_FOR_A_WHILE)
    sglang = subprocess.Popen([sys.executable, str(script), str(port)])
    assert watch_sglang(LaunchPlan(tmp_path, "127.0.0.1", port, []), sglang, startup_timeout=60) == 0
    assert f"serving {tmp_path} at http://127.0.0.1:{port}" in capsys.readouterr().out
