"""What one `lynx-sglang serve` costs to start: seconds until /health answers 200, and the CPU seconds
its whole process tree spent by then (on a CPU host, where imports are most of a start).

    python -m lynx_sglang.tools.server_start [SERVE ARGS...]

Starts the server on a free port, measures, sends one completion, and stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from lynx_sglang.evaluate import complete
from lynx_sglang.local_server import free_port, stop_process, wait_healthy

STARTUP_TIMEOUT_S = 600


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
        if not wait_healthy(url, server, STARTUP_TIMEOUT_S, Path(log.name)):
            print(f"the server did not become healthy; its log: {log.name}", file=sys.stderr)
            return 1
        seconds = time.monotonic() - started
        processes, cpu = tree_cpu_seconds(server.pid)
        text = complete(url, "123+45=")
        print(f"healthy after {seconds:.1f} s; {processes} processes had used {cpu:.1f} CPU-seconds; "
              f"'123+45=' -> {text!r}")
        return 0
    finally:
        stop_process(server)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
