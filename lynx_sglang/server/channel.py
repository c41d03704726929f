"""The launcher's line to the scheduler: lynx control requests over SGLang's own RPC channel.

SGLang's scheduler reads `RpcReqInput` messages from `port_args.rpc_ipc_name` in its event loop,
between batches, and on tensor-parallel setups hands each one to every rank at the same point of the
loop; rank 0 answers with an `RpcReqOutput`. `sglang.Engine` binds that socket for its
`collective_rpc`; an HTTP server leaves it free, so the launcher binds it here. The scheduler-side
handler is `lynx_sglang.scheduler.hooks.around_handle_rpc_request`. A request is a JSON object with an
`op`; each carries a nonce so that a late answer to a timed-out request is never taken for the answer
to the next one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time

from lynx_sglang.config import CONTROL_RPC_METHOD

# Field of a set_policy request (POST /lynx/policy's body) -> (accepted JSON types, how to say it).
POLICY_FIELDS = {
    "policy": ((str,), "a string"),
    "params": ((dict,), "an object"),
    "budget": ((str, type(None)), "a string such as 'experts=4', or null"),
    "config": ((dict,), "an object of settings, as a config file holds them"),
}


def data_parallel_replicas(server_args) -> int:
    return getattr(server_args, "dp_size", 1) or 1


def control_unavailable(server_args) -> str | None:
    """Why no control request can reach this server's schedulers (None: they can)."""
    if data_parallel_replicas(server_args) <= 1 or not getattr(server_args, "enable_dp_attention", False):
        return None
    # Data-parallel attention ranks share one tensor-parallel group: SGLang hands a control message to
    # its first rank only, so no answer per attention rank would come back.
    return ("not available with --enable-dp-attention: the data-parallel attention ranks share one scheduler "
            "group that SGLang hands control messages to as one, so no switch or statistics reach each of them")


class SchedulerError(Exception):
    """The scheduler refused the request (its message says why)."""


class SchedulerUnavailable(Exception):
    """The scheduler did not answer in time, or the channel is not set up."""


class SchedulerChannel:
    def __init__(self, rpc_ipc_name: str | None = None, timeout_s: float = 60.0, *, socket=None):
        """Binds `rpc_ipc_name` (in an HTTP launcher, where nothing else does), or talks over `socket`,
        the DEALER socket an `sglang.Engine` bound there for its `collective_rpc`."""
        if socket is None:
            import zmq

            self._context = zmq.Context(1)
            socket = self._context.socket(zmq.DEALER)
            socket.bind(rpc_ipc_name)
        self._socket = socket
        self._lock = threading.Lock()
        self._nonces = itertools.count(1)
        self.timeout_s = timeout_s

    def request(self, op: str, **fields) -> dict:
        """Send one request and wait for its answer (blocking; see `request_async`)."""
        from sglang.srt.managers.io_struct import RpcReqInput, sock_recv, sock_send

        with self._lock:
            nonce = next(self._nonces)
            payload = json.dumps({"op": op, "nonce": nonce, **fields})
            sock_send(self._socket, RpcReqInput(method=CONTROL_RPC_METHOD, parameters={"request": payload}))
            deadline = time.monotonic() + self.timeout_s
            while True:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0 or not self._socket.poll(remaining_ms):
                    raise SchedulerUnavailable(f"the scheduler did not answer within {self.timeout_s:.0f} s")
                output = sock_recv(self._socket)
                reply = _parse_reply(output)
                if reply is None:  # SGLang's own handler answered: our hook is not in the scheduler
                    raise SchedulerUnavailable(
                        f"the scheduler has no lynx-sglang control handler ({getattr(output, 'message', output)})"
                    )
                if reply.get("nonce") not in (nonce, None):
                    continue  # the late answer of an earlier, timed-out request
                if not reply.get("ok"):
                    raise SchedulerError(reply.get("error", "request refused"))
                return reply["result"]

    async def request_async(self, op: str, **fields) -> dict:
        return await asyncio.to_thread(self.request, op, **fields)


def _parse_reply(output) -> dict | None:
    try:
        reply = json.loads(getattr(output, "message", ""))
    except (TypeError, ValueError):
        return None
    return reply if isinstance(reply, dict) else None


def policy_request_problem(body) -> str | None:
    """What is wrong with a set_policy request's shape (None: nothing; values are the scheduler's to
    judge)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object such as {\"policy\": \"lynx\", \"params\": {\"alpha\": 1.0}}"
    unknown = sorted(set(body) - set(POLICY_FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(POLICY_FIELDS)}"
    if not body:
        return "nothing to change: give at least one of policy, params, budget, or a whole config"
    if "config" in body and len(body) > 1:
        return "a whole config stands alone: give config without policy, params or budget"
    for name, (types, expected) in POLICY_FIELDS.items():
        if name in body and not isinstance(body[name], types):
            return f"{name} must be {expected}, got {body[name]!r}"
    return None
