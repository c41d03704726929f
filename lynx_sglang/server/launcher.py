"""Hooks of the HTTP launcher process: the `/lynx/*` routes, the scheduler channel, `lynx_*` metrics."""

from __future__ import annotations

from pathlib import Path

from lynx_sglang.config import LynxConfig


def register(register_hook, config: LynxConfig, runtime_dir: Path | None) -> None:
    state = {}

    def before_http_server(server_args, tokenizer_manager, template_manager, port_args, *args, **kwargs):
        # The app exists at import time but serves only at the end of this function: the routes and
        # the channel to the scheduler go in first.
        from sglang.srt.entrypoints.http_server import app

        from lynx_sglang.server.channel import SchedulerChannel, control_unavailable
        from lynx_sglang.server.fan_out import fan_out_channel
        from lynx_sglang.server.routes import add_routes

        if unavailable := control_unavailable(server_args):
            add_routes(app, config, None, runtime_dir, unavailable=unavailable)
            return
        state["channel"] = fan_out_channel(server_args, tokenizer_manager) or SchedulerChannel(port_args.rpc_ipc_name)
        add_routes(app, config, state["channel"], runtime_dir)

    def after_prometheus_middleware(result, app, *args, **kwargs):
        from lynx_sglang.server.metrics import install_metrics_route

        if "channel" in state:
            install_metrics_route(app, state["channel"])
        return result

    register_hook("sglang.srt.entrypoints.http_server._setup_and_run_http_server", before_http_server, "BEFORE")
    register_hook("sglang.srt.utils.common.add_prometheus_middleware", after_prometheus_middleware, "AFTER")
