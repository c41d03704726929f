"""SGLang's scheduler and detokenizer processes, forked from one process that imported SGLang once.

SGLang starts its children with multiprocessing's "spawn": each is a fresh interpreter that imports
SGLang, transformers and torch again (about 14 CPU-seconds for the scheduler and 13 for the
detokenizer on a 2-core host, on top of the launcher's own 10). On a CPU install that is most of a
server's start. Here the launcher switches SGLang's start method to "forkserver" with SGLang's
process modules preloaded: the forkserver imports them once, and each child is a fork of it. The
children still receive their arguments pickled, as under spawn, and inherit nothing of the launcher
but its environment as it was when the first child started (SGLang sets its variables before that).

Never used with CUDA (forking after CUDA initialised is unsafe, and this glue is CPU-only anyway).
"""

from __future__ import annotations

import multiprocessing

# An AFTER hook: SGLang's `_set_envs_and_config` sets the start method to "spawn", then starts the children.
TARGET = "sglang.srt.entrypoints.engine._set_envs_and_config"

# Not the launcher's main module: each child runs it as `__mp_main__`, as under spawn, and a copy
# already imported would make runpy warn of "unpredictable behaviour"; its imports are these modules'.
PROCESS_MODULES = [
    "sglang.srt.managers.scheduler",
    "sglang.srt.managers.detokenizer_manager",
    "lynx_sglang.cpu_runtime.forkserver_relay",  # imported there only: SIGQUIT reaches the launcher
]


def start_children_from_a_preloaded_forkserver(_result, *_args, **_kwargs) -> None:
    multiprocessing.set_start_method("forkserver", force=True)
    multiprocessing.set_forkserver_preload(PROCESS_MODULES)
