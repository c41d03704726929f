"""How long `lynx-sglang serve` takes to stop after a signal, idle and with a streamed request in flight,
and whether that request got all of its answer.

    .venv/bin/python scripts/serve-stop-times.py [SERVE_ARGS...]

Starts the server once per case (embedded model unless SERVE_ARGS say otherwise): idle SIGINT, idle
SIGTERM, then with a 48-token stream in flight: SIGINT, SIGTERM, and SIGTERM twice (the second one
means "hurry"). The signal goes out when the stream's first chunk arrives.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from lynx_sglang.local_server import free_port
from lynx_sglang.local_server import wait_healthy

CASES = [("idle", [signal.SIGINT]), ("idle", [signal.SIGTERM]), ("in flight", [signal.SIGINT]),
         ("in flight", [signal.SIGTERM]), ("in flight", [signal.SIGTERM, signal.SIGTERM])]  # fmt: skip
# The embedded model's context is 64 tokens: a 7-token prompt and 48 generated fit.
REQUEST = {"model": "default", "prompt": "123+45=", "max_tokens": 48, "temperature": 0, "ignore_eos": True,
           "stream": True}  # fmt: skip


def stream(url, on_first_chunk):
    """Chunks received and the finish reason (None when the stream was cut)."""
    body = json.dumps(REQUEST).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    chunks, finish = 0, None
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            for line in response:
                line = line.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunks += 1
                finish = json.loads(line[len("data: "):])["choices"][0].get("finish_reason") or finish
                if chunks == 1:
                    on_first_chunk()
    except OSError:
        pass
    return chunks, finish


def run_case(kind, signals, serve_args):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    process = subprocess.Popen([sys.executable, "-m", "lynx_sglang.cli", "serve", "--port", str(port), *serve_args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    sent = []

    def send():
        sent.append(time.monotonic())
        for sig in signals:
            process.send_signal(sig)
            time.sleep(0.05)

    try:
        if not wait_healthy(url, process, timeout=300):
            raise SystemExit(f"the server did not become healthy (exit code {process.poll()})")
        answer = ""
        if kind == "idle":
            send()
        else:
            chunks, finish = stream(url, send)
            answer = f", stream: {chunks} chunks, finish {finish}"
        process.wait(timeout=120)
        names = " + ".join(signal.Signals(s).name for s in signals)
        print(f"{kind:>9}, {names:<17}: stopped {time.monotonic() - sent[0]:5.2f} s after the signal, "
              f"exit code {process.returncode}{answer}", flush=True)
    finally:
        if process.poll() is None:
            process.kill()


def main():
    for kind, signals in CASES:
        run_case(kind, signals, sys.argv[1:])


if __name__ == "__main__":
    main()
