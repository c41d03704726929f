"""The control line to data-parallel replicas (`--dp-size N`), and their answers merged into one.

SGLang's data-parallel controller keeps each replica's RPC socket to itself, but it hands every
message it does not route itself (a generation request, a block or profile request) to every
replica, and a scheduler dispatches an `RpcReqInput` from its request socket as from its RPC socket.
So a control request rides the tokenizer's own socket to the controller, names a socket of ours in
`reply_to`, and the first rank of each replica answers there (`scheduler/hooks.py`). Replicas serve
different requests, so each takes a switch at its own next step; their statistics add up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import threading
import time

from lynx_sglang.config import CONTROL_RPC_METHOD
from lynx_sglang.scheduler.expert_cache import cache_totals, prefetch_accuracy
from lynx_sglang.scheduler.stats import model_wide_figures
from lynx_sglang.server.channel import SchedulerError, SchedulerUnavailable, data_parallel_replicas


class ReplicaChannel:
    """send: puts a message on the tokenizer's socket to SGLang's data-parallel controller; call it
    only on the thread that owns that socket (an HTTP server's event loop, an engine's caller)."""

    def __init__(self, send, replicas: int, timeout_s: float = 60.0):
        import zmq

        self._send = send
        self.replicas = replicas
        self.timeout_s = timeout_s
        self._context = zmq.Context(1)
        self._socket = self._context.socket(zmq.PULL)
        self.address = f"ipc://{tempfile.NamedTemporaryFile(prefix='lynx-replies-', delete=False).name}"
        self._socket.bind(self.address)
        self._nonces = itertools.count(1)
        self._lock = threading.Lock()  # one request at a time from threads (an engine)
        self._async_lock: asyncio.Lock | None = None  # and from the server's event loop

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

    def _collect(self, nonce: int) -> list[dict]:
        """Every replica's answer to request `nonce`, by replica."""
        replies: dict[int, dict] = {}
        deadline = time.monotonic() + self.timeout_s
        while len(replies) < self.replicas:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._socket.poll(remaining_ms):
                answered = ", ".join(str(replica) for replica in sorted(replies)) or "none"
                raise SchedulerUnavailable(f"not every data-parallel replica answered within {self.timeout_s:.0f} s "
                                           f"(answered: {answered} of {self.replicas})")
            reply = json.loads(self._socket.recv_string())
            if reply.get("nonce") == nonce:  # else the late answer of an earlier, timed-out request
                replies[int(reply.get("replica", 0))] = reply
        return [replies[replica] for replica in sorted(replies)]


def replica_channel(server_args, tokenizer_manager, timeout_s: float = 60.0) -> ReplicaChannel | None:
    """The line to the replicas of a server or engine with `--dp-size` > 1; None with one replica."""
    replicas = data_parallel_replicas(server_args)
    if replicas <= 1:
        return None
    from sglang.srt.managers.io_struct import sock_send

    return ReplicaChannel(lambda message: sock_send(tokenizer_manager.send_to_scheduler, message), replicas,
                          timeout_s)


def merge_replies(op: str, replies: list[dict]) -> dict:
    """One answer from every replica's (`{"ok", "replica", "result" | "error"}`, by replica)."""
    refused = [reply for reply in replies if not reply.get("ok")]
    if refused:
        error = refused[0].get("error", "request refused")
        took = [str(reply["replica"]) for reply in replies if reply.get("ok")]
        if took:  # the replicas check alike, so this takes a replica that broke down
            error = f"replica {refused[0]['replica']}: {error} (replica(s) {', '.join(took)} took the request)"
        raise SchedulerError(error)
    results = [reply["result"] for reply in replies]
    if op in ("get_stats", "reset_stats"):
        return merge_stats(results)
    return merge_policy_states(results)


# What a replica's policy state must share with the others' for them to agree.
SHARED_SETTINGS = ("policy", "params", "budget", "layers", "prune_mixed", "schedule", "kernel")


def merge_policy_states(states: list[dict]) -> dict:
    """The first replica's state, with how many replicas there are and whether they run the same."""
    first = states[0]
    agree = all({k: s.get(k) for k in SHARED_SETTINGS} == {k: first.get(k) for k in SHARED_SETTINGS} for s in states)
    return {**first, "replicas": len(states), "replicas_agree": agree}


# Per-layer figures: None = a count, summed; else the count that weights a mean.
LAYER_FIGURES = {
    "steps": None, "decode_tokens": None, "tokens_rerouted": None, "router_mass_dropped": None, "fallbacks": None,
    "distinct_experts_before": "steps", "distinct_experts_after": "steps",
    "tokens_rerouted_fraction": "decode_tokens", "router_mass_dropped_per_token": "decode_tokens",
    "expert_bytes_per_decode_token_before": "decode_tokens", "expert_bytes_per_decode_token_after": "decode_tokens",
}  # fmt: skip
CACHE_LAYER_FIGURES = {
    "cache_hits": None, "cache_misses": None, "prefetched": None, "prefetch_used": None, "decode_misses": None,
    "decode_prefetched": None, "decode_tokens": None, "cache_bytes_copied_per_decode_token": "decode_tokens",
}  # fmt: skip
STEP_COUNTS = ("decode_steps", "pruned_steps", "passthrough_steps", "fallback_steps", "policy_failures")
# A replica's own figures, listed under "replicas".
REPLICA_SUMMARY = (*STEP_COUNTS, "budget_experts", "controller", "distinct_experts_before", "distinct_experts_after",
                   "tokens_rerouted_fraction", "router_mass_dropped_per_token")  # fmt: skip


def merge_stats(snapshots: list[dict]) -> dict:
    """The statistics of every replica (by replica) as one server's: step counts and per-layer counts
    summed, per-step and per-token figures weighted by the steps and tokens behind them; each
    replica's own figures under "replicas"."""
    first = snapshots[0]
    merged = {**first, **{key: sum(s[key] for s in snapshots) for key in STEP_COUNTS}}
    for key in ("steps_by_policy", "steps_by_mode"):
        merged[key] = _summed_dicts([s[key] for s in snapshots])
    if first.get("steps_by_band") is not None:
        merged["steps_by_band"] = [{**band, "steps": sum(s["steps_by_band"][i]["steps"] for s in snapshots)}
                                   for i, band in enumerate(first["steps_by_band"])]  # fmt: skip
    merged.update(model_wide_figures(_merged_layers([s["layers"] for s in snapshots], LAYER_FIGURES)))
    if first.get("expert_cache") is not None:
        merged["expert_cache"] = _merged_cache([s["expert_cache"] for s in snapshots])
    if "decisions_by_rank" in first:  # tensor-parallel ranks within each replica
        merged["decisions_by_rank"] = [{"replica": replica, **entry} for replica, s in enumerate(snapshots)
                                       for entry in s["decisions_by_rank"]]  # fmt: skip
        merged["ranks_agree"] = all(s["ranks_agree"] for s in snapshots)
    merged["replicas"] = [{"replica": replica, **{key: s[key] for key in REPLICA_SUMMARY}}
                          for replica, s in enumerate(snapshots)]  # fmt: skip
    return merged


def _merged_cache(caches: list[dict]) -> dict:
    first = caches[0]
    layers = _merged_layers([cache["layers"] for cache in caches], CACHE_LAYER_FIGURES)
    for layer in layers:
        layer["prefetch_accuracy"] = prefetch_accuracy(first["prefetch"], layer["prefetch_used"], layer["prefetched"])
    return {**first, **cache_totals(layers, first["prefetch"])}


def _merged_layers(by_replica: list[list[dict]], figures: dict[str, str | None]) -> list[dict]:
    """The same layers of every replica (the same model, in the same order) as one list."""
    merged = []
    for same_layer in zip(*by_replica):
        layer = dict(same_layer[0])
        for key, weight in figures.items():
            if weight is None:
                layer[key] = sum(entry[key] for entry in same_layer)
            else:
                total = sum(entry[weight] for entry in same_layer)
                layer[key] = sum(entry[key] * entry[weight] for entry in same_layer) / total if total else 0.0
        merged.append(layer)
    return merged


def _summed_dicts(dicts: list[dict]) -> dict:
    summed: dict = {}
    for counts in dicts:
        for key, value in counts.items():
            summed[key] = summed.get(key, 0) + value
    return summed
