"""The server an experiment starts for itself: `lynx-sglang serve` on a free port with an admin token."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from lynx_sglang.local_server import free_port, log_tail, port_was_taken, stop_process, wait_healthy
from lynx_sglang.process_group import parent_death_signal
from lynx_sglang.sglang_settings import FlagSettings

from .client import ServerError

DYING_SERVER_WAIT_S = 60
STARTUP_TIMEOUT_S = 600
PORT_ATTEMPTS = 3  # starts of a server whose port, chosen here, another process took first


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the interruption Ctrl-C is; its message names the signal."""


def interruption(error: KeyboardInterrupt) -> str:
    """What interrupted a run, as the results name it: the signal, or Ctrl-C (Python's own KeyboardInterrupt)."""
    return str(error) if isinstance(error, Terminated) else "Ctrl-C"


@contextmanager
def terminate_as_interrupt():
    """SIGTERM (`kill`, `timeout`, a stopped job) ends the command as Ctrl-C does, so what was measured
    is written and the server it started is stopped: Python's default would exit at once and leave the
    server running, holding its memory (on a GPU, the device's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Terminated(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def served_address(serve_args) -> tuple[str | None, int | None]:
    """The --host and --port among a started server's extra flags (the last of each, as serve reads
    them; None where absent). The server listens there, so the client must poll there."""
    flags = FlagSettings(list(serve_args))
    if flags.given("port") and flags.value("port") is None:
        raise ValueError("--port among the server flags has no value")
    port = flags.value("port")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--port {port!r} among the server flags is not a port number (1-65535)")
    return flags.value("host"), None if port is None else int(port)


def client_host(host: str | None) -> str:
    """Where to reach a server listening on `host`: a wildcard address is reached on the loopback."""
    if host in (None, "", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class ManagedServer:
    """`lynx-sglang serve` in its own process; the log goes to `log_path`. `policy` None leaves the policy
    flags to `serve_args`."""

    def __init__(self, log_path: Path, *, policy: str | None, model_path: str | None = None,
                 serve_args: list[str] = (), port: int | None = None):
        self.token = secrets.token_hex(16)
        self.log_path = log_path
        # A --port among serve_args is the user's and wins over ours on serve's command line: use it
        host, given_port = served_address(serve_args)
        if given_port is not None and port is not None and given_port != port:
            raise ValueError(f"two ports for the server: {port} and --port {given_port} among its flags")
        port = port or given_port
        self._host = client_host(host)
        self._port_in_flags = given_port is not None
        self._port_chosen_here = port is None  # then a port taken by another process is chosen again
        self._arguments = ["--lynx-admin-token", self.token]
        if policy:
            self._arguments += ["--lynx-policy", policy]
        if model_path:
            self._arguments += ["--model-path", model_path]
        self._arguments += list(serve_args)
        self._launch(port or free_port())

    def _launch(self, port: int) -> None:
        self.port = port
        self.url = f"http://{self._host}:{port}"
        ours = [] if self._port_in_flags else ["--port", str(port)]
        command = [sys.executable, "-m", "lynx_sglang.cli", "serve", *ours, *self._arguments]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self._log = open(self.log_path, "wb")
        # A session of its own: Ctrl-C in the terminal reaches only the experiment, which stops the server
        # after saving what was measured.
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, preexec_fn=parent_death_signal(signal.SIGTERM))

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def exited_within(self, seconds: float | None = None) -> bool:
        """Whether the server process ends within `seconds` (default DYING_SERVER_WAIT_S). A dying server
        takes a while to exit: it stops SGLang's processes first (draining requests, a 5 s pause before
        its crash diagnostics), which took over 15 s on a loaded 2-core machine. Only error paths wait."""
        seconds = DYING_SERVER_WAIT_S if seconds is None else seconds
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        for attempt in range(PORT_ATTEMPTS):
            if wait_healthy(self.url, self.process, timeout, self.log_path):
                return
            # Another process (another server starting on this machine) may bind the free port between
            # free_port() and the server's own bind; a port this command chose, it chooses again.
            last = attempt == PORT_ATTEMPTS - 1
            if last or not port_was_taken(self.log_path) or not self._port_chosen_here:
                break
            self.stop()  # it may hang after the failed bind
            self._launch(free_port())
        if not self.alive():
            raise ServerError(f"the server exited with code {self.process.returncode} while starting "
                              f"(log: {self.log_path}):\n{self.log_tail()}")
        raise ServerError(f"the server was not healthy after {timeout:.0f} s (log: {self.log_path})")

    def stop(self, timeout: float = 60) -> None:
        stop_process(self.process, timeout=timeout)
        self._log.close()
