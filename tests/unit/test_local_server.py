"""local_server: the free port a client starts a server on, and noticing a server that lost it."""

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
