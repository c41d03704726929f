"""SGLang's processes as one process group: started together, stopped the way SGLang stops itself.

The stop signal goes to SGLang's launcher alone, as if it had been sent to `sglang.launch_server`:
SIGINT stops at once, SIGTERM drains requests in flight first; either way SGLang ends its own
scheduler and detokenizer. Whatever of the group still runs after a grace period (or once the
launcher is gone) gets SIGTERM, then SIGKILL. Signalling the whole group at once instead made the
launcher see its scheduler die, report a crash and sleep 5 s for crash diagnostics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

# How long SGLang gets to stop by itself after the signal we pass on. SIGTERM means "drain": SGLang
# finishes the requests in flight first (its watchdog looks every 5 s). The whole ladder stays under
# the deployment's 30 s stop_grace_period.
STOP_GRACE_S = {signal.SIGINT: 10.0, signal.SIGTERM: 20.0}
# After the grace period: the whole group gets each signal in turn, and this long to go.
GROUP_SIGNALS = ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))


def start_process_group(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `command` as the leader of a new process group, so whatever it spawns can be found and
    stopped, even orphaned; it gets SIGTERM if this process dies first (its own session is out of
    reach of a signal to ours, and SIGKILL leaves us no time to stop it)."""
    become_subreaper()
    return subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=parent_death_signal(signal.SIGTERM))


def parent_death_signal(sig: int):
    """A preexec_fn that makes the child receive `sig` when this process exits, however it exits
    (Linux's PR_SET_PDEATHSIG), or None where that does not exist. Linux sends it when the thread that
    started the child ends: start children from the main thread."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    PR_SET_PDEATHSIG = 1

    def set_in_child():  # between fork and exec: no imports, no allocation-heavy work
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return set_in_child


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so SGLang processes whose parent exited first can be reaped
    here instead of lingering as zombies under a pid 1 that does not reap (as in many containers)."""
    try:
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: zombies are the init process's to reap


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGINT, hurry=lambda: False) -> None:
    """Pass `sig` to the group's leader, wait out its grace period, then signal the whole group.
    `hurry()` turning true (a second Ctrl-C) skips what is left of the grace period."""
    pgid = process.pid  # the leader of its own group (start_process_group)
    if process.poll() is None:
        try:
            os.kill(pgid, sig)
        except ProcessLookupError:
            pass
        if _wait_group_gone(process, pgid, STOP_GRACE_S.get(sig, 10.0), until_leader_exits=True, hurry=hurry):
            return
    for group_signal, wait in GROUP_SIGNALS:
        try:
            os.killpg(pgid, group_signal)
        except ProcessLookupError:
            break
        if _wait_group_gone(process, pgid, wait):
            return
    process.poll()
    reap_children()


def _wait_group_gone(process, pgid: int, seconds: float, *, until_leader_exits=False, hurry=lambda: False) -> bool:
    """Wait until no process of the group runs (True), or `seconds` pass, or `hurry()` says so, or (if
    asked) the group's leader has exited while others still run: those were orphaned, waiting is
    pointless."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not hurry():
        leader_exited = process.poll() is not None  # also reaps our direct child
        reap_children()
        if not _live_group_members(pgid):
            reap_children()
            return True
        if until_leader_exits and leader_exited:
            return False
        time.sleep(0.05)
    return False


def _live_group_members(pgid: int) -> list[int]:
    """Processes of the group that are still running (zombies have exited; they only await a reap)."""
    import psutil

    live = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                live.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return live


def reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
