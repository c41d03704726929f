"""The `/lynx/*` HTTP routes, added to SGLang's FastAPI app in the launcher process.

    GET  /lynx/info          which SGLang processes loaded the plugin
    GET  /lynx/policy        active policy, parameters, budget, kernel (and the controller's state)
    POST /lynx/policy        switch policy, parameters or budget              (admin token)
    GET  /lynx/stats         routing statistics since start or the last reset
    POST /lynx/stats/reset   clear the statistics                             (admin token)

Reads and writes go to the scheduler over `SchedulerChannel`; the scheduler applies a switch between
two steps. Admin routes need the admin token, as `Authorization: Bearer <token>` or, where SGLang's
`--api-key` takes that header, as `X-Lynx-Admin-Token: <token>`; with no token configured they are
disabled (403, saying how to enable them). SGLang's own key check runs first: the admin routes are
marked as its admin endpoints (`--admin-api-key` where set, else `--api-key`), the others as its
normal ones.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from fastapi import Request

from lynx_sglang import __version__
from lynx_sglang.config import ADMIN_TOKEN_HEADER, LynxConfig
from lynx_sglang.process_records import read_process_records
from lynx_sglang.setting_values import strict_json
from lynx_sglang.server.channel import SchedulerChannel, SchedulerError, SchedulerUnavailable, policy_request_problem


def admin_refusal(config: LynxConfig, headers) -> str | None:
    """Why a request may not use an admin route (None: it may). headers: the request's, by name."""
    if not config.admin_token:
        return ("admin endpoints are disabled: start the server with --lynx-admin-token TOKEN "
                "(or LYNX_ADMIN_TOKEN) to enable them")
    scheme, _, bearer = (headers.get("authorization") or "").partition(" ")
    sent = [headers.get(ADMIN_TOKEN_HEADER), bearer.strip() if scheme.lower() == "bearer" else None]
    if not any(token is not None and hmac.compare_digest(token.encode(), config.admin_token.encode()) for token in sent):
        return (f"missing or wrong admin token (send Authorization: Bearer <token>, or {ADMIN_TOKEN_HEADER}: "
                "<token> when SGLang's --api-key takes the Authorization header)")
    return None


def sglang_admin_endpoint(endpoint):
    """Marks a route as SGLang marks its admin endpoints, for its API-key middleware."""
    from sglang.srt.utils.auth import AuthLevel, auth_level

    return auth_level(AuthLevel.ADMIN_OPTIONAL)(endpoint)


def add_routes(app, config: LynxConfig, channel: SchedulerChannel | None, runtime_dir: Path | None,
               unavailable: str | None = None) -> None:
    """unavailable: why this server has no channel to its scheduler (the routes that need it say so)."""
    from fastapi.responses import JSONResponse

    if any(getattr(route, "path", None) == "/lynx/info" for route in app.routes):
        return

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def ask_scheduler(op: str, refusal_status: int, **fields):
        if channel is None:
            return error(501 if unavailable else 503, unavailable or "the scheduler channel is not available in this process")
        try:
            return JSONResponse(await channel.request_async(op, **fields))
        except SchedulerError as exc:
            return error(refusal_status, str(exc))
        except SchedulerUnavailable as exc:
            return error(504, str(exc))

    async def lynx_info():
        return JSONResponse({
            "version": __version__,
            "runtime_dir": str(runtime_dir) if runtime_dir else None,
            "processes": read_process_records(runtime_dir) if runtime_dir else [],
        })  # fmt: skip

    async def get_policy():
        return await ask_scheduler("get_policy", 409)

    async def post_policy(request: Request):
        refusal = admin_refusal(config, request.headers)
        if refusal:
            return error(403, refusal)
        try:
            body = strict_json(await request.body())
        except json.JSONDecodeError as exc:
            return error(400, f"the body is not valid JSON ({exc.msg} at position {exc.pos})")
        except ValueError as exc:  # a key given twice, NaN or Infinity
            return error(400, f"the body is not valid: {exc}")
        problem = policy_request_problem(body)
        if problem:
            return error(400, problem)
        return await ask_scheduler("set_policy", 400, **body)

    async def get_stats():
        return await ask_scheduler("get_stats", 409)

    async def reset_stats(request: Request):
        refusal = admin_refusal(config, request.headers)
        if refusal:
            return error(403, refusal)
        return await ask_scheduler("reset_stats", 409)

    app.add_api_route("/lynx/info", lynx_info, methods=["GET"])
    app.add_api_route("/lynx/policy", get_policy, methods=["GET"])
    app.add_api_route("/lynx/policy", sglang_admin_endpoint(post_policy), methods=["POST"])
    app.add_api_route("/lynx/stats", get_stats, methods=["GET"])
    app.add_api_route("/lynx/stats/reset", sglang_admin_endpoint(reset_stats), methods=["POST"])
