"""The line from the tokenizer to the schedulers: lynx control requests, and their answers.

A request is an `RpcReqInput` with method `lynx_control` and a JSON object with an `op`, put on the
tokenizer's own socket to the scheduler. SGLang's scheduler dispatches it between batches, as an RPC,
and hands it to every tensor-parallel rank at the same point of its loop; pipeline stages take it from
the stage before, and SGLang's data-parallel controller (`--dp-size`) and router
(`--tokenizer-worker-num`) pass on every message they do not handle themselves. The request names a
socket of ours in `reply_to`, and the first rank of every stage of every replica answers there
(`lynx_sglang.scheduler.hooks.around_handle_rpc_request`); `merge.py` makes one answer of theirs. Each
carries a nonce, so that a late answer to a timed-out request is never taken for the answer to the next.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import os
import tempfile
import threading
import time

from lynx_sglang.config import CONTROL_RPC_METHOD
from lynx_sglang.server.merge import join_stage_states, join_stage_stats, merge_policy_states, merge_stats

# Field of a set_policy request (POST /lynx/policy's body) -> (accepted JSON types, how to say it).
POLICY_FIELDS = {
    "policy": ((str,), "a string"),
    "params": ((dict,), "an object"),
    "budget": ((str, type(None)), "a string such as 'experts=4', or null"),
    "config": ((dict,), "an object of settings, as a config file holds them"),
}


def data_parallel_replicas(server_args) -> int:
    return getattr(server_args, "dp_size", 1) or 1


def pipeline_stages(server_args) -> int:
    return getattr(server_args, "pp_size", 1) or 1


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
    """The line to every scheduler that answers: `replicas` x `stages` of them. send: puts a message on
    the tokenizer's socket to the scheduler (or SGLang's data-parallel controller or router); call it
    only on the thread that owns that socket (an HTTP server's event loop, an engine's caller)."""

    def __init__(self, send, replicas: int, stages: int, timeout_s: float = 60.0):
        import zmq

        self._send = send
        self.replicas, self.stages = replicas, stages
        self.timeout_s = timeout_s
        self._context = zmq.Context(1)
        self._socket = self._context.socket(zmq.PULL)
        self._path = tempfile.NamedTemporaryFile(prefix="lynx-replies-", delete=False).name
        self.address = f"ipc://{self._path}"
        self._socket.bind(self.address)
        atexit.register(self.close)
        self._nonces = itertools.count(1)
        self._lock = threading.Lock()  # one request at a time from threads (an engine)
        self._async_lock: asyncio.Lock | None = None  # and from the server's event loop

    def close(self) -> None:
        """Closes the socket and removes its file (at exit; again is harmless)."""
        self._socket.close(linger=0)
        self._context.term()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)

    def request(self, op: str, **fields) -> dict:
        with self._lock:
            nonce = self._post(op, fields)
            return merge_replies(op, self._collect(nonce))

    async def request_async(self, op: str, **fields) -> dict:
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            nonce = self._post(op, fields)  # here, on the event loop's thread, which owns the socket
            replies = await asyncio.to_thread(self._collect, nonce)
        return merge_replies(op, replies)

    def _post(self, op: str, fields: dict) -> int:
        from sglang.srt.managers.io_struct import RpcReqInput

        nonce = next(self._nonces)
        payload = json.dumps({"op": op, "nonce": nonce, "reply_to": self.address, **fields})
        self._send(RpcReqInput(method=CONTROL_RPC_METHOD, parameters={"request": payload}))
        return nonce

    def _collect(self, nonce: int) -> list[list[dict]]:
        """Every scheduler's answer to request `nonce`: by replica, then by stage."""
        replies: dict[tuple[int, int], dict] = {}
        expected = [(replica, stage) for replica in range(self.replicas) for stage in range(self.stages)]
        deadline = time.monotonic() + self.timeout_s
        while len(replies) < len(expected):
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._socket.poll(remaining_ms):
                missing = [part_name(*part, self.replicas, self.stages) for part in expected if part not in replies]
                raise SchedulerUnavailable(f"no answer within {self.timeout_s:.0f} s from {', '.join(missing)} "
                                           "(busy, or without the lynx-sglang plugin: GET /lynx/info lists the "
                                           "processes that loaded it)")
            reply = json.loads(self._socket.recv_string())
            if reply.get("nonce") == nonce:  # else the late answer of an earlier, timed-out request
                replies[(int(reply.get("replica", 0)), int(reply.get("stage", 0)))] = reply
        return [[replies[(replica, stage)] for stage in range(self.stages)] for replica in range(self.replicas)]


def part_name(replica: int, stage: int, replicas: int, stages: int) -> str:
    """How a scheduler that answers is called: "replica 1", "stage 1", "replica 1 stage 0"."""
    names = ([f"replica {replica}"] if replicas > 1 else []) + ([f"stage {stage}"] if stages > 1 else [])
    return " ".join(names) or "the scheduler"


def scheduler_channel(server_args, tokenizer_manager, timeout_s: float = 60.0) -> SchedulerChannel:
    """The line from a server's (or HTTP worker's, or engine's) tokenizer to its schedulers."""
    from sglang.srt.managers.io_struct import sock_send

    return SchedulerChannel(lambda message: sock_send(tokenizer_manager.send_to_scheduler, message),
                            data_parallel_replicas(server_args), pipeline_stages(server_args), timeout_s)


NO_MOE_LAYERS = "the model has no MoE layers lynx-sglang can prune"


def merge_replies(op: str, replies: list[list[dict]]) -> dict:
    """One answer from every scheduler's (`{"ok", "replica", "stage", "result" | "error"}`, by
    replica, then by stage)."""
    every = [reply for stages in replies for reply in stages]
    refused = [reply for reply in every if not reply.get("ok")]
    if refused:
        counts = len(replies), len(replies[0])
        error = refused[0].get("error", "request refused")
        took = [part_name(r.get("replica", 0), r.get("stage", 0), *counts) for r in every if r.get("ok")]
        if took:  # they all check alike, so this takes a scheduler that broke down
            name = part_name(refused[0].get("replica", 0), refused[0].get("stage", 0), *counts)
            error = f"{name}: {error} ({', '.join(took)} took the request)"
        raise SchedulerError(error)
    # A pipeline stage without MoE layers (a dense first layer alone, say) has nothing to show.
    layered = [[reply for reply in stages if not reply.get("no_moe_layers")] for stages in replies]
    if not all(layered):
        raise SchedulerError(NO_MOE_LAYERS)
    results = [[reply["result"] for reply in stages] for stages in layered]
    stage_ids = [reply.get("stage", number) for number, reply in enumerate(layered[0])]
    stats = op in ("get_stats", "reset_stats")
    if len(replies[0]) == 1:
        joined = [stages[0] for stages in results]
    elif stats:
        joined = [join_stage_stats(stages, stage_ids) for stages in results]
    else:
        joined = [join_stage_states(stages, len(replies[0])) for stages in results]
    if len(joined) == 1:
        return joined[0]
    return merge_stats(joined) if stats else merge_policy_states(joined)


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
