"""How a streamed completion is timed when the server sends several tokens in one chunk."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lynx_sglang.experiments.client import stream_completion

# 5 tokens in 3 chunks, 0.2 s apart, then the usage chunk: as a busy server coalesces them
CHUNKS = [{"choices": [{"text": "12"}]}, {"choices": [{"text": "34"}]},
          {"choices": [{"text": "5", "finish_reason": "length"}]}]  # fmt: skip
USAGE = {"choices": [], "usage": {"completion_tokens": 5}}


class CoalescingServer(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for index, chunk in enumerate(CHUNKS):
            if index:
                time.sleep(0.2)
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(f"data: {json.dumps(USAGE)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args):
        pass


def test_tpot_is_per_token_when_chunks_carry_several():
    server = ThreadingHTTPServer(("127.0.0.1", 0), CoalescingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = stream_completion(f"http://127.0.0.1:{server.server_port}", "1+1=", max_tokens=5)
    finally:
        server.shutdown()
    assert (done.text, done.tokens) == ("12345", 5)
    # 0.4 s from the first chunk to the last over 4 token gaps; per chunk it read 0.2 s
    assert done.tpot_ms == pytest.approx(100, rel=0.25)
