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


class SchedulerError(Exception):
    """The scheduler refused the request (its message says why)."""


class SchedulerUnavailable(Exception):
    """The scheduler did not answer in time, or the channel is not set up."""


class SchedulerChannel:
    def __init__(self, rpc_ipc_name: str, timeout_s: float = 60.0):
        import zmq

        self._zmq = zmq
        self._context = zmq.Context(1)
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.bind(rpc_ipc_name)
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
