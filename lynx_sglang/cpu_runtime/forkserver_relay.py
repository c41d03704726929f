"""Imported only inside the forkserver of `forkserver.py`, where importing it is the whole job.

SGLang's children report a crash by sending SIGQUIT to their parent process, which SGLang expects to
be the launcher (its handler stops every process). Forked from the forkserver, their parent is the
forkserver: it passes SIGQUIT on to the launcher that started it. The children it forks get SIGQUIT's
default action back, as a spawned process has it.
"""

from __future__ import annotations

import os
import signal

_LAUNCHER_PID = os.getppid()


def _pass_on_to_the_launcher(signum, _frame) -> None:
    if os.getppid() == _LAUNCHER_PID:  # never to whoever adopted us once the launcher is gone
        os.kill(_LAUNCHER_PID, signum)


def _default_in_each_child() -> None:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


signal.signal(signal.SIGQUIT, _pass_on_to_the_launcher)
os.register_at_fork(after_in_child=_default_in_each_child)
