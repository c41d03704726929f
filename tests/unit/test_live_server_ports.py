"""The integration tests' server helper starts again on a new port when another test's server took
its free port first (two pytest-xdist workers), whichever way the bind failure is worded: uvicorn's is
followed by a page of other tracebacks, so a look at the log's tail alone missed it once in CI."""

import sys
import time

import pytest
from live_server import RunningServer

# First start: uvicorn's bind error, then more log than the tail shows, exit 3 (as SGLang's server
# did). Second start: a server that answers /health.
FLAKY_SERVER = """
import http.server, pathlib, sys
marker = pathlib.Path(sys.argv[2])
if not marker.exists():
    marker.write_text("failed once")
    print("ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 1): address already in use")
    print("\\n".join(f"  File 'something.py', line {n}" for n in range(200)), flush=True)
    if sys.argv[3] == "hang":  # as SGLang's launcher does after uvicorn's bind error
        import time; time.sleep(300)
    sys.exit(3)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


@pytest.mark.parametrize("after_the_error", ["exit", "hang"])
def test_a_port_taken_at_bind_time_is_retried_on_a_new_port(tmp_path, after_the_error):
    script = tmp_path / "flaky_server.py"
    script.write_text(FLAKY_SERVER)
    server = RunningServer([], tmp_path / "server.log",
                           command=[sys.executable, str(script), "{port}", str(tmp_path / "marker"), after_the_error])
    try:
        started = time.monotonic()
        server.wait_healthy()
        assert (tmp_path / "marker").exists() and server.healthy()
        assert time.monotonic() - started < 60  # not the start-up timeout (240 s)
    finally:
        server.stop()
