"""What one `lynx-sglang serve` costs to start: seconds until /health answers 200, and the CPU seconds
its whole process tree spent by then (on a CPU host, where imports are most of a start).

    python -m lynx_sglang.tools.server_start [SERVE ARGS...]

Starts the server on a free port, measures, sends one completion, and stops it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

from lynx_sglang.local_server import free_port, is_healthy


def tree_cpu_seconds(pid: int) -> tuple[int, float]:
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:  # exited meanwhile
            pass
    return len(processes), total


def main(argv: list[str]) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="server-start-", suffix=".log", delete=False)
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "lynx_sglang.cli", "serve", "--port", str(port), *argv],
                              stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        while not is_healthy(url):
            if server.poll() is not None:
                print(f"the server exited with {server.returncode}; its log: {log.name}", file=sys.stderr)
                return 1
            time.sleep(0.25)
        seconds = time.monotonic() - started
        processes, cpu = tree_cpu_seconds(server.pid)
        body = json.dumps({"model": "default", "prompt": "123+45=", "max_tokens": 8, "temperature": 0}).encode()
        request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            text = json.loads(reply.read())["choices"][0]["text"]
        print(f"healthy after {seconds:.1f} s; {processes} processes had used {cpu:.1f} CPU-seconds; "
              f"'123+45=' -> {text!r}")
        return 0
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(120)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
