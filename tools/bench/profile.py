"""Where a decode step's time goes: `bench serve --profile C` records a few decode steps of each server
with SGLang's own profiler (POST /start_profile) while C requests decode, and splits the trace's time
by category (expert GEMMs, MoE alignment, the model's routing, lynx's routing and bookkeeping,
attention, dense GEMMs, the rest, and the device's idle time between kernels).

On a GPU the split is of the kernels' time (those replayed in CUDA graphs too); on a CPU of the
operators' (they nest: each counts its own time only). SGLang's span around every forward step tells
how many decode steps were recorded, at which batch sizes, and so the ms per step."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .streams import greedy_stream_request

PROFILE_STEPS = 16
TRACE_WAIT_S = 300  # the scheduler writes the trace after the last profiled step
# First match wins. GPU kernel names (SGLang's Triton kernels, this repository's, torch's and cuBLAS's)
# and CPU operator names (aten::*, the CPU path's own operators).
CATEGORIES = (
    ("expert_gemm", r"fused_moe|_gate_up_activation|_down_weighted|_combine_topk|moe_sum_reduce|grouped_mm|"
                    r"fused_experts"),
    ("moe_align", r"moe_align|^_align_kernel|count_and_sort_expert"),  # not cuBLAS's `_align8` nor torch.cat's
    ("lynx_routing", r"routing_rows_kernel|routing_decide_kernel|lynx"),
    ("lynx_bookkeeping", r"^_layer_kernel|bookkeeping"),
    ("model_routing", r"router|moe_fused_gate|topk|top_k|softmax|sigmoid|sort"),
    ("attention", r"_fwd_|attention|attn|flash|sdpa|kv_?cache|set_kv"),
    ("dense_gemm", r"gemm|nvjet|xmma|cutlass|cublas|splitk|aten::mm$|aten::addmm|aten::bmm|aten::linear"),
)
OTHER = "other"
IDLE = "idle"
# SGLang's span around each forward step (model_runner.py, build_step_span_name)
STEP_SPAN = re.compile(r"^step\[(\w+) bs=(\d+)")


def category_of(name: str) -> str:
    lowered = name.lower()
    return next((category for category, pattern in CATEGORIES if re.search(pattern, lowered)), OTHER)


def own_times(events: list[dict]) -> list[tuple[str, float]]:
    """(name, own µs) of complete events, each minus the events nested in it on its thread or stream
    (CPU operators nest; kernels on one stream do not)."""
    by_lane: dict[tuple, list[dict]] = {}
    for event in events:
        by_lane.setdefault((event.get("pid"), event.get("tid")), []).append(event)
    result = []
    for lane in by_lane.values():
        lane.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [name, end, own]
        for event in lane:
            while stack and stack[-1][1] <= event["ts"]:
                name, _, own = stack.pop()
                result.append((name, own))
            if stack:
                stack[-1][2] -= min(event["dur"], stack[-1][1] - event["ts"])
            stack.append([event["name"], event["ts"] + event["dur"], float(event["dur"])])
        result.extend((name, own) for name, _, own in stack)
    return result


def summarize_trace(trace: dict, on_gpu: bool = False, top: int = 12) -> dict:
    """The split of one trace's decode steps by category, as shares and as ms per step, and the names
    that took the most time. The steps are SGLang's `step[DECODE bs=N]` spans. On a GPU the window
    is the kernels' span (idle: no kernel running); on a CPU the steps' own spans, with the operators
    that ran inside them (idle: host time in no operator, Python's)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e and "ts" in e]
    steps = [(e, match) for e in events if e.get("cat") == "user_annotation" and (match := STEP_SPAN.match(e["name"]))]
    decode = [e for e, match in steps if match.group(1) == "DECODE"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    if on_gpu and not kernels:  # CUPTI recorded nothing: a split of host operators would pass for one
        raise ValueError("the trace holds no GPU kernels (the profiler's CUPTI collected none)")
    if kernels:
        timed = kernels
        span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    else:
        timed = [e for e in events if e.get("cat") == "cpu_op" and any(inside(e, step) for step in decode)]
        span = sum(step["dur"] for step in decode)
    if not decode or not timed:
        raise ValueError("the trace holds no decode step: the requests ended before the profile began "
                         "(raise --output-tokens)")
    if span <= 0:
        raise ValueError("the trace's decode steps take no time")
    by_name: dict[str, float] = {}
    for name, own in own_times(timed):
        by_name[name] = by_name.get(name, 0.0) + own
    by_category: dict[str, float] = {}
    for name, own in by_name.items():
        by_category[category_of(name)] = by_category.get(category_of(name), 0.0) + own
    shares = {category: round(by_category.get(category, 0.0) / span, 4) for category, _ in (*CATEGORIES, (OTHER, ""))}
    # streams may overlap (copies, a shared expert beside the routed ones): idle is time covered by none
    shares[IDLE] = round(max(0.0, 1.0 - covered(timed) / span), 4)
    step_ms = span / 1000 / len(decode)
    return {
        "source": "kernels" if kernels else "cpu operators",
        "steps_recorded": len(decode),
        "batch_sizes": sorted({int(match.group(2)) for e, match in steps if match.group(1) == "DECODE"}),
        "step_ms": round(step_ms, 3),
        "shares": shares,
        "ms_per_step": {category: round(share * step_ms, 3) for category, share in shares.items()},
        "top": [{"name": name[:120], "category": category_of(name), "share": round(own / span, 4)}
                for name, own in sorted(by_name.items(), key=lambda item: -item[1])[:top]],
    }


def inside(event: dict, span: dict) -> bool:
    return span["ts"] <= event["ts"] < span["ts"] + span["dur"]


def covered(events: list[dict]) -> float:
    """The time (µs) at least one of the events runs: the union of their intervals."""
    total, end = 0.0, float("-inf")
    for event in sorted(events, key=lambda e: e["ts"]):
        start, stop = max(event["ts"], end), event["ts"] + event["dur"]
        if stop > start:
            total += stop - start
        end = max(end, stop)
    return total


def read_trace(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return json.load(handle)


def profile_level(url: str, prompts: list[list[int]], output_tokens: int, trace_dir: Path, on_gpu: bool,
                  steps: int = PROFILE_STEPS) -> dict:
    """One request per prompt decodes (up to `output_tokens`, what the KV cache was sized for); once
    every one has its first token (all prefills done), SGLang's profiler records `steps` forward steps,
    and the requests are let go once it has written its trace (requests that end first stop the
    profile early: the trace then holds fewer steps, which the summary says)."""
    profile_id = f"lynx-bench-{time.time_ns()}"
    started = threading.Semaphore(0)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        streams = [pool.submit(_decode_until, url, prompt, output_tokens, stop, started.release) for prompt in prompts]
        try:
            _await_first_tokens(started, streams)
            # CPU activity too: SGLang's step spans are host-side annotations
            _post(url, "/start_profile", {"output_dir": str(trace_dir), "num_steps": steps, "profile_id": profile_id,
                                          "activities": ["CPU", "GPU"] if on_gpu else ["CPU"], "with_stack": False,
                                          "record_shapes": False})  # fmt: skip
            try:
                path, trace = _wait_for_trace(url, trace_dir, profile_id, streams)
            except Exception:
                _stop_profile(url)  # else the next level would run under the profiler
                raise
        finally:
            stop.set()
        for stream in streams:
            stream.result()
    try:
        return {"trace": str(path), **summarize_trace(trace, on_gpu)}
    except ValueError as error:
        raise ValueError(f"{error}; trace {path}") from None


def _await_first_tokens(started: threading.Semaphore, streams, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in streams:
        while not started.acquire(timeout=0.5):
            _raise_if_failed(streams)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the profiled requests did not all start decoding within {timeout_s:.0f} s")


def _raise_if_failed(streams) -> None:
    for stream in streams:
        if stream.done() and stream.exception() is not None:
            raise stream.exception()


def _decode_until(url: str, prompt: list[int], output_tokens: int, stop: threading.Event, on_first_token) -> None:
    """A greedy request that decodes until `stop` is set; closing the stream then aborts it in SGLang."""
    request = greedy_stream_request(url, prompt, output_tokens)
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if line.startswith(b"data:"):
                if on_first_token is not None:
                    on_first_token()
                    on_first_token = None
                if stop.is_set():
                    return
    if on_first_token is not None:
        raise ValueError("a profiled request ended without a token")


def _post(url: str, path: str, body: dict | None) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def _wait_for_trace(url: str, trace_dir: Path, profile_id: str, streams) -> tuple[Path, dict]:
    deadline = time.monotonic() + TRACE_WAIT_S
    stopped = False
    while time.monotonic() < deadline:
        for path in sorted(trace_dir.glob(f"{profile_id}*.trace.json*")):  # tensor parallel: rank 0's first
            try:  # torch gzips into the final name as it goes: a file still being written does not parse
                return path, read_trace(path)
            except (EOFError, OSError, ValueError):
                break
        _raise_if_failed(streams)
        if not stopped and all(stream.done() for stream in streams):  # no step left to end the profile
            _stop_profile(url)
            stopped = True
        time.sleep(0.5)
    raise TimeoutError(f"no complete trace {profile_id}* in {trace_dir} {TRACE_WAIT_S} s after the profile started")


def _stop_profile(url: str) -> None:
    try:
        _post(url, "/stop_profile", None)
    except (urllib.error.URLError, OSError):  # it ended by itself meanwhile (HTTP 500), or the server is gone
        pass


def shares_line(shares: dict) -> str:
    """`expert_gemm 41% · attention 18% · ...`, largest first, the categories under 1% left out."""
    ranked = sorted(shares.items(), key=lambda item: -item[1])
    return " · ".join(f"{name} {share:.0%}" for name, share in ranked if share >= 0.01)
