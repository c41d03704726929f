"""The CPU glue's forkserver (lynx_sglang/cpu_runtime/forkserver.py): SIGQUIT sent to the forkserver,
as SGLang's children send it to their parent when they fail, reaches the process that started it;
the children forked from it keep SIGQUIT's default action. Run with a real forkserver, in a fresh
interpreter so that this worker's own multiprocessing settings stay as they are."""

import json
import subprocess
import sys
import textwrap

from lynx_sglang.cpu_runtime import forkserver

SCRIPT = textwrap.dedent("""
    import json, multiprocessing, os, signal, time
    import psutil

    received = []
    signal.signal(signal.SIGQUIT, lambda signum, _frame: received.append(signum))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lynx_sglang.cpu_runtime.forkserver_relay"])
    child = context.Process(target=time.sleep, args=(60,))
    child.start()
    server = psutil.Process(child.pid).parent()
    os.kill(server.pid, signal.SIGQUIT)  # what a failing SGLang child does to its parent
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    relayed = list(received)
    os.kill(child.pid, signal.SIGQUIT)
    child.join(10)
    time.sleep(0.2)
    print(json.dumps({"server_parent": server.ppid(), "me": os.getpid(), "relayed": relayed,
                      "child_exit": child.exitcode, "after_child": received[len(relayed):],
                      "server_alive": server.is_running()}))
""")


def test_sigquit_to_the_forkserver_reaches_its_starter_and_children_keep_the_default():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["server_parent"] == result["me"]
    assert result["relayed"] == [3]  # SIGQUIT, once
    assert result["child_exit"] == -3 and result["after_child"] == []  # killed by it, not passed on
    assert result["server_alive"]


def test_the_forkserver_preloads_sglangs_process_modules_and_the_relay():
    modules = forkserver.PROCESS_MODULES
    assert "sglang.srt.managers.scheduler" in modules and "sglang.srt.managers.detokenizer_manager" in modules
    assert "lynx_sglang.cpu_runtime.forkserver_relay" in modules
    assert forkserver.TARGET.rsplit(".", 1)[0] == "sglang.srt.entrypoints.engine"
