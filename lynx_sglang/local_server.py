"""A server process on this machine, seen from outside: a free port to start it on, its `GET /health`,
the tail of its log, and stopping it. `lynx-sglang serve` watches SGLang with it, and the experiments
and the tests watch `lynx-sglang serve`; it imports nothing heavy, so those clients stay light."""

from __future__ import annotations

import argparse
import http.client
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

# SGLang answers /health with 503 at once while it starts; once up, it runs a one-token generation first.
HEALTH_PROBE_TIMEOUT_S = 5.0
HEALTH_POLL_INTERVAL_S = 0.5


def server_url(text: str) -> str:
    """An argparse type for a server's base URL: http(s)://HOST[:PORT], without the trailing slash."""
    parsed = urllib.parse.urlsplit(text.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a server URL like http://127.0.0.1:30000")
    return text.strip().rstrip("/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_was_taken(log_path: Path) -> bool:
    """Whether a server that exited while starting lost its port to another process after free_port()
    found it free. The bind error comes in two spellings ("Address already in use"; uvicorn's "...
    address already in use", after which a page of other tracebacks follows), so the whole log is read."""
    try:
        return "address already in use" in log_path.read_text(errors="replace").lower()
    except OSError:
        return False


def is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=HEALTH_PROBE_TIMEOUT_S) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # refused, 503, timed out, cut off
        return False


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> bool:
    """True once the server at `url` is healthy; False as soon as `process` exits, or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if is_healthy(url):
            return True
        time.sleep(HEALTH_POLL_INTERVAL_S)
    return False


def log_tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> int:
    """Send `sig` (unless it has exited), wait up to `timeout` s, then kill; returns the exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
