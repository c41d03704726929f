"""How a control request reaches the runtime and its answer gets back, in the scheduler process.

The request arrives as one of SGLang's RPCs (`Scheduler.handle_rpc_request`, server/channel.py sends
it); every tensor-parallel rank handles it, then they meet at a barrier, as SGLang's own RPC handler
does, so that rank 0 answers only once every rank has applied it. The answer goes where the request
says (`reply_to`, a socket of ours): SGLang's RPC socket reaches the launcher from the first stage of
a single replica only, so the first rank of each pipeline stage of each data-parallel replica sends
its own. A request without `reply_to` (the offline engine's `collective_rpc`) is answered as SGLang
answers its RPCs.
"""

from __future__ import annotations

import json

from lynx_sglang.config import ConfigError
from lynx_sglang.scheduler.decisions import decisions_by_rank

_reply_sockets: dict = {}


def answer_control_request(runtime, scheduler, recv_req):
    from sglang.srt.managers.io_struct import RpcReqOutput

    request = parsed_request(recv_req)
    try:
        if request is None:
            raise ValueError("the control request is not a JSON object")
        if runtime is None or not runtime.bound:
            # Nothing here to change or count; another pipeline stage may hold MoE layers (the launcher
            # joins the stages that do, and says so where none does).
            reply = {"ok": True, "nonce": request.get("nonce"), "result": None, "no_moe_layers": True}
            return _send(scheduler, request, reply)
        result = runtime.handle(request)
        if runtime.decisions is not None and request.get("op") in ("get_stats", "reset_stats"):
            # Every rank handles this request here, so every rank joins the exchange.
            result.update(decisions_by_rank(runtime.decisions, _cpu_group(scheduler)))
        reply = {"ok": True, "nonce": request.get("nonce"), "result": result}
    except (ConfigError, ValueError, TypeError) as error:
        reply = {"ok": False, "nonce": (request or {}).get("nonce"), "error": str(error)}
    return _send(scheduler, request, reply)


def _send(scheduler, request: dict | None, reply: dict):
    _barrier(scheduler)
    reply_to = (request or {}).get("reply_to")
    if not isinstance(reply_to, str):
        return RpcReqOutput(success=reply["ok"], message=json.dumps(reply))
    parallel = _parallel()
    if parallel.tp_rank == 0:
        send_reply(reply_to, {**reply, "replica": parallel.dp_rank or 0, "stage": parallel.pp_rank})
    return None


def parsed_request(recv_req) -> dict | None:
    """The request's JSON object, or None where it does not parse as one."""
    try:
        request = json.loads((recv_req.parameters or {}).get("request", "{}"))
    except (ValueError, AttributeError, TypeError):
        return None
    return request if isinstance(request, dict) else None


def send_reply(address: str, reply: dict) -> None:
    import zmq

    socket = _reply_sockets.get(address)
    if socket is None:
        socket = _reply_sockets[address] = zmq.Context.instance().socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 1000)
        socket.connect(address)
    socket.send_string(json.dumps(reply))


def _parallel():
    from sglang.srt.runtime_context import get_parallel

    return get_parallel()


def _cpu_group(scheduler):
    return getattr(getattr(scheduler, "tp_group", None), "cpu_group", None)


def _barrier(scheduler) -> None:
    group = _cpu_group(scheduler)
    if group is None:
        return
    from torch.distributed import barrier

    barrier(group=group)
