"""Hooks of the HTTP launcher process: the `/lynx/*` routes, the scheduler channel, `lynx_*` metrics.

With SGLang's `--tokenizer-worker-num N` > 1 the launcher serves no HTTP: N worker processes do, each
importing the app named by SGLANG_HTTP_SERVER_APP_PATH. The plugin names `worker_app.py`'s there,
which adds the same routes and metrics in each worker (`register_worker`)."""

from __future__ import annotations

from pathlib import Path

from lynx_sglang.config import LynxConfig

PROMETHEUS_TARGET = "sglang.srt.utils.common.add_prometheus_middleware"
WORKER_APP = "lynx_sglang.server.worker_app:app"
APP_PATH_ENV = "SGLANG_HTTP_SERVER_APP_PATH"


def register(register_hook, config: LynxConfig, runtime_dir: Path | None) -> None:
    state = {}

    def before_http_server(server_args, tokenizer_manager, template_manager, port_args, *args, **kwargs):
        # The app exists at import time but serves only at the end of this function: the routes and
        # the channel to the scheduler go in first.
        from sglang.srt.entrypoints.http_server import app

        from lynx_sglang.server.channel import control_unavailable, scheduler_channel
        from lynx_sglang.server.routes import add_routes

        if (getattr(server_args, "tokenizer_worker_num", 1) or 1) > 1:
            return  # the workers serve HTTP, each with its own line to the schedulers
        if unavailable := control_unavailable(server_args):
            add_routes(app, config, None, runtime_dir, unavailable=unavailable)
            return
        state["channel"] = scheduler_channel(server_args, tokenizer_manager)
        add_routes(app, config, state["channel"], runtime_dir)

    register_hook("sglang.srt.entrypoints.http_server._setup_and_run_http_server", before_http_server, "BEFORE")
    register_metrics_route(register_hook, lambda: state.get("channel"))


def register_worker(register_hook, config: LynxConfig, runtime_dir: Path | None, app) -> None:
    """The routes and metrics in one of SGLang's HTTP worker processes, on `app` (not yet serving)."""
    from lynx_sglang.server.routes import add_routes

    channel = WorkerChannel()
    add_routes(app, config, channel, runtime_dir)
    register_metrics_route(register_hook, lambda: channel)


def register_metrics_route(register_hook, channel_now) -> None:
    """`lynx_*` metrics on SGLang's /metrics, once SGLang has mounted its Prometheus middleware (only
    with --enable-metrics). `channel_now()` gives the line to the schedulers then, None if there is none."""

    def after_prometheus_middleware(result, app, *args, **kwargs):
        from lynx_sglang.server.metrics import install_metrics_route

        if (channel := channel_now()) is not None:
            install_metrics_route(app, channel)
        return result

    register_hook(PROMETHEUS_TARGET, after_prometheus_middleware, "AFTER")


class WorkerChannel:
    """An HTTP worker's line to the schedulers, made at its first request: the worker's tokenizer exists
    only once SGLang's lifespan has run. Its requests ride the worker's socket to SGLang's router, which
    forwards them to the scheduler; the answers come back on a socket of ours (channel.py)."""

    def __init__(self):
        self._channel = None

    async def request_async(self, op: str, **fields) -> dict:
        if self._channel is None:
            from sglang.srt.entrypoints.http_server import get_global_state

            from lynx_sglang.server.channel import SchedulerUnavailable, control_unavailable, scheduler_channel

            tokenizer = get_global_state().tokenizer_manager
            if unavailable := control_unavailable(tokenizer.server_args):
                raise SchedulerUnavailable(unavailable)
            self._channel = scheduler_channel(tokenizer.server_args, tokenizer)
        return await self._channel.request_async(op, **fields)
