"""A server process on this machine, seen from outside: a free port to start it on, who holds a port,
its `GET /health`, the tail of its log, and stopping it. `lynx-sglang serve` watches SGLang with it, and
the experiments and the tests watch `lynx-sglang serve`; it imports nothing heavy, so those clients stay light."""

from __future__ import annotations

import argparse
import http.client
import random
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
# SGLang's processes that serve no HTTP (process titles as the system may cut them, to 15 characters);
# its HTTP workers (`sglang::tokenizer_worker:N`, --tokenizer-worker-num) listen on the port themselves.
SGLANG_NON_HTTP_PROCESSES = ("sglang::schedul", "sglang::detoken", "sglang::data_pa")


def server_url(text: str) -> str:
    """An argparse type for a server's base URL: http(s)://HOST[:PORT], without the trailing slash."""
    parsed = urllib.parse.urlsplit(text.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a server URL like http://127.0.0.1:30000")
    return text.strip().rstrip("/")


def free_port() -> int:
    """A port free now, below the range the OS hands out to sockets bound to port 0 and to outgoing
    connections: SGLang's scheduler binds several such ports as it starts (torch.distributed's gloo
    listeners on a CPU), and one took a port chosen from that range between the check and the server's
    own bind (uvicorn then stopped with "address already in use" and the server hung)."""
    low = ephemeral_port_range()[0]
    candidates = range(max(1024, low - 20_000), low)
    for port in random.sample(candidates, min(len(candidates), 64)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # nothing free below the range: any free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return low, high


_PORT_TAKEN = "address already in use"


def port_was_taken(log_path: Path) -> bool:
    """Whether a server starting lost its port to another process after free_port() found it free
    (it may have exited, or hang). The bind error comes in two spellings ("Address already in use"; uvicorn's "...
    address already in use", after which a page of other tracebacks follows), so the whole log is read."""
    return _PortLossWatch(log_path)()


class _PortLossWatch:
    """port_was_taken for a log read while it grows: each call reads only what was written since the last."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.offset = 0
        self.carry = ""  # the last characters read, in case the message straddles two reads

    def __call__(self) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.offset)
                new = log.read()
        except OSError:
            return False
        self.offset += len(new)
        text = self.carry + new.decode(errors="replace").lower()
        self.carry = text[-len(_PORT_TAKEN):]
        return _PORT_TAKEN in text


def port_listener(port: int) -> int | None:
    """The pid of a process listening on TCP `port` here (None: none, or one this user cannot see)."""
    import psutil

    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return connection.pid
    return None


def check_port_free(host: str, port: int) -> None:
    """A LaunchError (one line, naming the process that listens there if any) unless `port` on `host`
    can be bound now."""
    # Imported here: launch_checks reads checkpoints and builds policies (torch), and this module's
    # clients (the experiments, the tests) must stay light.
    from lynx_sglang.launch_checks import LaunchError

    if not 0 < port < 65536:
        raise LaunchError(f"--port {port} is out of range (1..65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like uvicorn: connections of a recent server in TIME_WAIT do not block the port; a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            holder = port_listener(port)
            held = f"; {process_named(holder)} listens on it" if holder is not None else ""
            raise LaunchError(f"port {port} on {host} is not available ({exc.strerror}{held}); "
                              "choose another --port") from None


def port_thief(port: int, sglang_pid: int) -> int | None:
    """A process listening on SGLang's port that is not SGLang's HTTP server: another program, or one of
    SGLang's own that serves no HTTP (its scheduler's gloo listeners take ports the system hands out).
    SGLang's HTTP server is its first process, or with --tokenizer-worker-num its HTTP worker processes."""
    import psutil

    holder = port_listener(port)
    if holder is None or holder == sglang_pid:
        return None
    try:
        family = {child.pid for child in psutil.Process(sglang_pid).children(recursive=True)}
    except psutil.Error:
        return None
    return holder if holder not in family or process_name(holder).startswith(SGLANG_NON_HTTP_PROCESSES) else None


def process_name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "another process"


def process_named(pid: int) -> str:
    """`name (pid N)`, as the port messages name a process."""
    return f"{process_name(pid)} (pid {pid})"


def is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=HEALTH_PROBE_TIMEOUT_S) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # refused, 503, timed out, cut off
        return False


def wait_healthy(url: str, process: subprocess.Popen, timeout: float, log_path: Path | None = None) -> bool:
    """True once the server at `url` is healthy; False as soon as `process` exits or its log at
    `log_path` says it lost its port (SGLang then hangs, it does not exit), or after `timeout` s."""
    deadline = time.monotonic() + timeout
    lost_port = _PortLossWatch(log_path) if log_path is not None else (lambda: False)
    while time.monotonic() < deadline:
        if process.poll() is not None or lost_port():
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
