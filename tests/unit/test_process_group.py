"""process_group: SGLang's launcher runs in its own session, so nothing sent to ours reaches it; it
must still end when the lynx-sglang launcher dies, even by SIGKILL (a kill -9, an OOM kill)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

LAUNCHER = textwrap.dedent("""
    import sys, time
    from lynx_sglang.process_group import start_process_group
    child = start_process_group([sys.executable, "-c", "import time; time.sleep(120)"], {})
    print(child.pid, flush=True)
    time.sleep(120)
""")


def test_the_started_group_ends_when_the_launcher_is_killed():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ))
    child = None
    try:
        child = psutil.Process(int(launcher.stdout.readline()))
        assert child.is_running() and os.getsid(child.pid) != os.getsid(launcher.pid)  # a session of its own
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.1)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "the child outlived its launcher"
    finally:
        launcher.kill()
        if child is not None and child.is_running():
            child.kill()
