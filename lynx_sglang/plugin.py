"""The SGLang plugin (entry-point group `sglang.srt.plugins`), loaded by SGLang in every process.

SGLang calls `load_plugin()` early in its launcher, scheduler, detokenizer and DP-controller
processes; each registers the hooks of its role: the scheduler's routing, compute and step hooks
(`scheduler/hooks.py`), the launcher's HTTP routes and metrics (`server/launcher.py`). Each process
leaves a record in the runtime directory saying that it loaded the plugin and which hooks it
registered; the launcher serves those records at `GET /lynx/info`, which is how a user (and the
tests) can see the plugin is live inside the scheduler, where the model runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path

from lynx_sglang import __version__
from lynx_sglang.config import CONFIG_ENV, LynxConfig, build_config
from lynx_sglang.process_records import write_process_record

logger = logging.getLogger("lynx_sglang")

# SGLang process entry functions, by the role they play. load_plugins() is called from these.
_ROLE_BY_ENTRY_FUNCTION = {
    "run_scheduler_process": "scheduler",
    "run_detokenizer_process": "detokenizer",
    "run_data_parallel_controller_process": "dp_controller",
}

_registered_hooks: list[str] = []


def process_role() -> str:
    """Which SGLang process this is, read off the call stack that is loading the plugin."""
    frame = sys._getframe(1)
    while frame is not None:
        role = _ROLE_BY_ENTRY_FUNCTION.get(frame.f_code.co_name)
        if role:
            return role
        frame = frame.f_back
    return "launcher"


def _register(target: str, hook, hook_type_name: str) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(target, hook, getattr(HookType, hook_type_name))
    _registered_hooks.append(f"{hook_type_name.lower()} {target}")


def _started_as_http_server() -> bool:
    """`python -m sglang.launch_server` (what `lynx-sglang serve` runs), or SGLang's `sglang serve`
    console script, whose `__main__` has no module spec."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main_spec is not None:
        return main_spec.name.startswith("sglang")
    return os.path.basename(sys.argv[0]) == "sglang" and sys.argv[1:2] == ["serve"]


def _runtime_dir(config: LynxConfig, role: str) -> Path | None:
    directory = config.runtime_dir
    if directory is None and role == "launcher" and _started_as_http_server():
        # Started by plain `python -m sglang.launch_server`: create the directory here so the
        # children, which inherit the environment, write their records next to ours.
        directory = tempfile.mkdtemp(prefix="lynx-sglang-")
        os.environ[CONFIG_ENV] = dataclasses.replace(config, runtime_dir=directory).to_env()
    return Path(directory) if directory else None


def load_plugin() -> None:
    """Entry point called by SGLang's `load_plugins()` in each process."""
    role = process_role()
    config = plugin_config()

    for target, replacement in _runtime_replacements().items():
        _register(target, replacement, "REPLACE")

    directory = _runtime_dir(config, role)
    if role == "scheduler":
        from lynx_sglang.scheduler import hooks

        hooks.register(_register, config)
    if role == "launcher" and _started_as_http_server():
        from lynx_sglang.server import launcher, request_guard

        launcher.register(_register, config, directory)
        request_guard.register_hooks(_register)
        _register_cpu_launcher_hooks()
        # Read by SGLang when it starts HTTP workers (--tokenizer-worker-num > 1); a user's own stays.
        os.environ.setdefault(launcher.APP_PATH_ENV, launcher.WORKER_APP)
    elif role == "launcher":  # an offline engine (sglang.Engine): its requests are checked as the server's
        from lynx_sglang.server import request_guard

        request_guard.register_hooks(_register, http=False)
    if directory is not None:
        write_process_record(directory, role, list(_registered_hooks))
    logger.info("lynx-sglang %s plugin loaded in the %s process (pid %d)", __version__, role, os.getpid())


def load_in_http_worker(app) -> None:
    """The plugin in one of SGLang's HTTP worker processes (server/worker_app.py), where SGLang loads
    none: the launcher's routes, metrics and request checks, on this worker's `app`."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    from lynx_sglang.server import launcher, request_guard

    config = plugin_config()
    for target, replacement in _runtime_replacements().items():
        _register(target, replacement, "REPLACE")
    directory = Path(config.runtime_dir) if config.runtime_dir else None
    launcher.register_worker(_register, config, directory, app)
    request_guard.register_hooks(_register)
    HookRegistry.apply_hooks()
    if directory is not None:
        write_process_record(directory, "http_worker", list(_registered_hooks))
    logger.info("lynx-sglang %s plugin loaded in an HTTP worker process (pid %d)", __version__, os.getpid())


def _register_cpu_launcher_hooks() -> None:
    from lynx_sglang import cpu_runtime

    if cpu_runtime.glue_is_active():
        from lynx_sglang.cpu_runtime import forkserver

        _register(forkserver.TARGET, forkserver.start_children_from_a_preloaded_forkserver, "AFTER")


def _runtime_replacements() -> dict:
    """SGLang functions the CPU glue or the GPU runtime replaces with torch or Triton code."""
    from lynx_sglang import cpu_runtime, gpu_runtime

    if cpu_runtime.glue_is_active():
        from lynx_sglang.cpu_runtime import sglang_patches
    elif os.environ.get(gpu_runtime.RUNTIME_ENV) == "1":
        from lynx_sglang.gpu_runtime import sglang_patches
    else:
        return {}
    return sglang_patches.REPLACEMENTS


def plugin_config() -> LynxConfig:
    """The launcher's validated config when started by `lynx-sglang serve`; otherwise (plain
    `python -m sglang.launch_server` with the plugin installed) the LYNX_* variables and file."""
    if os.environ.get(CONFIG_ENV):
        return LynxConfig.from_env()
    return build_config({}, os.environ)
