"""Starting and stopping a real `lynx-sglang serve` for integration tests (one server per module)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lynx_sglang_command() -> list[str]:
    return [sys.executable, "-m", "lynx_sglang.cli"]


def test_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    return env


class RunningServer:
    """`lynx-sglang serve --port <free> ARGS`, or any other server command given as `command`
    (with `{port}` in it); `env` adds to the test environment."""

    def __init__(self, args: list[str], log_path: Path, *, command: list[str] | None = None, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        if command is None:
            command = [*lynx_sglang_command(), "serve", "--port", "{port}", *args]
        self.process = subprocess.Popen(
            [part.replace("{port}", str(self.port)) for part in command],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**test_env(), **(env or {})},
        )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():  # 503 at once while starting; once up, SGLang's /health takes a second
                return
            time.sleep(0.25)
        raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def post(url: str, payload, timeout: float = 60, headers: dict | None = None):
    """POST JSON (or raw bytes); returns (status, parsed body or text)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body.decode(errors="replace")


def get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())
