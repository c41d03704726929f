"""The control line where several schedulers answer, and their answers merged into one.

Data-parallel replicas (`--dp-size N`): SGLang's data-parallel controller keeps each replica's RPC
socket to itself, but it hands every message it does not route itself (a generation request, a block
or profile request) to every replica, and a scheduler dispatches an `RpcReqInput` from its request
socket as from its RPC socket. Pipeline stages (`--pp-size N`): each stage takes the request from the
stage before it, but only the first answers on the RPC socket. So a control request rides the
tokenizer's own socket, names a socket of ours in `reply_to`, and the first rank of every stage of
every replica answers there (`scheduler/hooks.py`). Replicas serve different requests, so each takes
a switch at its own next step and their statistics add up; stages hold different layers of the
same steps, so their layer lists join.
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


class FanOutChannel:
    """send: puts a message on the tokenizer's socket to the scheduler (or SGLang's data-parallel
    controller); call it only on the thread that owns that socket (an HTTP server's event loop, an
    engine's caller)."""

    def __init__(self, send, replicas: int, stages: int, timeout_s: float = 60.0):
        import zmq

        self._send = send
        self.replicas, self.stages = replicas, stages
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

    def _collect(self, nonce: int) -> list[list[dict]]:
        """Every scheduler's answer to request `nonce`: by replica, then by stage."""
        replies: dict[tuple[int, int], dict] = {}
        expected = [(replica, stage) for replica in range(self.replicas) for stage in range(self.stages)]
        deadline = time.monotonic() + self.timeout_s
        while len(replies) < len(expected):
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._socket.poll(remaining_ms):
                missing = ", ".join(part_name(*part, self.replicas, self.stages) for part in expected if part not in replies)
                raise SchedulerUnavailable(f"no answer within {self.timeout_s:.0f} s from {missing}")
            reply = json.loads(self._socket.recv_string())
            if reply.get("nonce") == nonce:  # else the late answer of an earlier, timed-out request
                replies[(int(reply.get("replica", 0)), int(reply.get("stage", 0)))] = reply
        return [[replies[(replica, stage)] for stage in range(self.stages)] for replica in range(self.replicas)]


def part_name(replica: int, stage: int, replicas: int, stages: int) -> str:
    """How a scheduler that answers is called: "replica 1", "stage 1", "replica 1 stage 0"."""
    names = ([f"replica {replica}"] if replicas > 1 else []) + ([f"stage {stage}"] if stages > 1 else [])
    return " ".join(names) or "the scheduler"


def pipeline_stages(server_args) -> int:
    return getattr(server_args, "pp_size", 1) or 1


def fan_out_channel(server_args, tokenizer_manager, timeout_s: float = 60.0) -> FanOutChannel | None:
    """The line to a server's or engine's schedulers where several answer (`--dp-size` or `--pp-size`
    above 1); None where SGLang's RPC socket reaches the one that answers for all."""
    replicas, stages = data_parallel_replicas(server_args), pipeline_stages(server_args)
    if replicas == stages == 1:
        return None
    from sglang.srt.managers.io_struct import sock_send

    return FanOutChannel(lambda message: sock_send(tokenizer_manager.send_to_scheduler, message), replicas, stages,
                         timeout_s)  # fmt: skip


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
    results = [[reply["result"] for reply in stages] for stages in replies]
    if op in ("get_stats", "reset_stats"):
        joined = [join_stage_stats(stages) if len(stages) > 1 else stages[0] for stages in results]
        return merge_stats(joined) if len(joined) > 1 else joined[0]
    joined = [join_stage_states(stages) if len(stages) > 1 else stages[0] for stages in results]
    return merge_policy_states(joined) if len(joined) > 1 else joined[0]


# What a replica's policy state must share with the others' for them to agree.
SHARED_SETTINGS = ("policy", "params", "budget", "layers", "prune_mixed", "schedule", "kernel")


def merge_policy_states(states: list[dict]) -> dict:
    """The first replica's state, with how many replicas there are and whether they run the same."""
    first = states[0]
    agree = all({k: s.get(k) for k in SHARED_SETTINGS} == {k: first.get(k) for k in SHARED_SETTINGS} for s in states)
    return {**first, "replicas": len(states), "replicas_agree": agree}


def join_stage_states(states: list[dict]) -> dict:
    """The first stage's state, with every stage's layers in `expert_compute`."""
    expert_compute: dict = {}
    for state in states:
        expert_compute.update(state.get("expert_compute") or {})
    replay = all(state.get("cuda_graphs_replay_pruning") for state in states)
    return {**states[0], "expert_compute": expert_compute, "cuda_graphs_replay_pruning": replay,
            "pipeline_stages": len(states)}  # fmt: skip


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
                   "tokens_rerouted_fraction", "router_mass_dropped_per_token", "pipeline_stages")  # fmt: skip


def merge_stats(snapshots: list[dict]) -> dict:
    """The statistics of every replica (by replica) as one server's: step counts and per-layer counts
    summed, per-step and per-token figures weighted by the steps and tokens behind them; each
    replica's own figures under "replicas"."""
    first = snapshots[0]
    merged = {**first, **{key: sum(s[key] for s in snapshots) for key in STEP_COUNTS}}
    merged.pop("pipeline_stages", None)  # each replica's, under "replicas"
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
    merged["replicas"] = [{"replica": replica, **{key: s[key] for key in REPLICA_SUMMARY if key in s}}
                          for replica, s in enumerate(snapshots)]  # fmt: skip
    return merged


def join_stage_stats(stages: list[dict]) -> dict:
    """The statistics of a pipeline's stages (by stage) as one scheduler's. The stages run the same
    steps on different layers: the layer lists join, the model-wide figures are taken over all of
    them, the step counts are the first stage's but for `fallback_steps` (the most of any stage,
    exact where one stage fell back) and `policy_failures` (summed); each stage's own counts and
    layers under "pipeline_stages"."""
    first = stages[0]
    joined = {**first, "fallback_steps": max(s["fallback_steps"] for s in stages),
              "policy_failures": sum(s["policy_failures"] for s in stages)}  # fmt: skip
    joined["pruned_steps"] = joined["decode_steps"] - joined["fallback_steps"]
    joined.update(model_wide_figures(_joined_layers([s["layers"] for s in stages])))
    caches = [s["expert_cache"] for s in stages if s.get("expert_cache") is not None]
    if caches:
        layers = _joined_layers([cache["layers"] for cache in caches])
        joined["expert_cache"] = {**caches[0], **cache_totals(layers, caches[0]["prefetch"])}
    if "decisions_by_rank" in first:  # tensor-parallel ranks within each stage
        joined["decisions_by_rank"] = [{"stage": stage, **entry} for stage, s in enumerate(stages)
                                       for entry in s["decisions_by_rank"]]  # fmt: skip
        joined["ranks_agree"] = all(s["ranks_agree"] for s in stages)
    joined["pipeline_stages"] = [{"stage": stage, "layers": [layer["layer"] for layer in s["layers"]],
                                  **{key: s[key] for key in STEP_COUNTS}} for stage, s in enumerate(stages)]  # fmt: skip
    return joined


def _joined_layers(by_stage: list[list[dict]]) -> list[dict]:
    return sorted((layer for layers in by_stage for layer in layers), key=lambda layer: layer["layer"])


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
