"""Where a decode step's time goes: `bench serve --profile C` records a few decode steps of each server
with SGLang's own profiler (POST /start_profile) while C requests decode, and splits the trace's time
by category (expert GEMMs, MoE alignment, the model's routing, lynx's routing and bookkeeping,
attention, dense GEMMs, the rest, and the device's idle time between kernels).

On a GPU the trace holds kernels (inside CUDA graphs too); the split is of their time. On a CPU it
holds operators, which nest: each counts its own time only, and the split is of operator time.
Shares are of the trace's span; `ms_per_step` scales them by the level's median TPOT."""

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

PROFILE_STEPS = 16
TRACE_WAIT_S = 300  # the scheduler writes the trace after the last profiled step
# First match wins. GPU kernel names (SGLang's Triton kernels, this repository's, torch's and cuBLAS's)
# and CPU operator names (aten::*, the CPU path's own operators).
CATEGORIES = (
    ("expert_gemm", r"fused_moe|_gate_up_activation|_down_weighted|_combine_topk|moe_sum_reduce|grouped_mm|"
                    r"fused_experts"),
    ("moe_align", r"align"),
    ("lynx_routing", r"routing_rows_kernel|routing_decide_kernel|lynx"),
    ("lynx_bookkeeping", r"^_layer_kernel|bookkeeping"),
    ("model_routing", r"router|moe_fused_gate|topk|top_k|softmax|sigmoid|sort"),
    ("attention", r"_fwd_|attention|attn|flash|sdpa|kv_?cache|set_kv"),
    ("dense_gemm", r"gemm|nvjet|xmma|cutlass|cublas|splitk|aten::mm$|aten::addmm|aten::bmm|aten::linear"),
)
OTHER = "other"
IDLE = "idle"


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


def summarize_trace(trace: dict, tpot_median_ms: float | None, top: int = 12) -> dict:
    """The split of one trace: shares of its span by category (with idle), ms per decode step at the
    level's median TPOT, and the names that took the most time."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e and "ts" in e]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    source = "kernels" if kernels else "cpu operators"
    timed = kernels or [e for e in events if e.get("cat") == "cpu_op"]
    if not timed:
        raise ValueError("the trace holds no kernels and no CPU operators")
    span = max(e["ts"] + e["dur"] for e in timed) - min(e["ts"] for e in timed)
    by_name: dict[str, float] = {}
    for name, own in own_times(timed):
        by_name[name] = by_name.get(name, 0.0) + own
    by_category: dict[str, float] = {}
    for name, own in by_name.items():
        by_category[category_of(name)] = by_category.get(category_of(name), 0.0) + own
    busy = sum(by_category.values())
    if not kernels:  # CPU operators run on several threads: shares of their total, not of the span
        span = busy
    shares = {category: round(by_category.get(category, 0.0) / span, 4) for category, _ in (*CATEGORIES, (OTHER, ""))}
    shares[IDLE] = round(max(0.0, 1.0 - busy / span), 4) if span else 0.0
    return {
        "source": source,
        "span_ms": round(span / 1000, 3),
        "shares": shares,
        "ms_per_step": None if tpot_median_ms is None else {k: round(v * tpot_median_ms, 3) for k, v in shares.items()},
        "top": [{"name": name[:120], "category": category_of(name), "share": round(own / span, 4)}
                for name, own in sorted(by_name.items(), key=lambda item: -item[1])[:top]],
    }


def read_trace(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return json.load(handle)


def profile_level(url: str, prompts: list[list[int]], output_tokens: int, trace_dir: Path, on_gpu: bool,
                  tpot_median_ms: float | None, steps: int = PROFILE_STEPS) -> dict:
    """One request per prompt decodes (up to `output_tokens`, what the KV cache was sized for); once
    every one has its first token (all prefills done), SGLang's profiler records `steps` forward steps,
    and the requests are let go once it has written its trace (requests that end first stop the
    profile early: the trace then holds fewer steps)."""
    profile_id = f"lynx-bench-{time.time_ns()}"
    started = threading.Semaphore(0)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        streams = [pool.submit(_decode_until, url, prompt, output_tokens, stop, started.release) for prompt in prompts]
        try:
            for _ in prompts:
                if not started.acquire(timeout=600):
                    raise TimeoutError("the profiled requests did not all start decoding within 600 s")
            _post(url, "/start_profile", {"output_dir": str(trace_dir), "num_steps": steps, "profile_id": profile_id,
                                          "activities": ["GPU"] if on_gpu else ["CPU"], "with_stack": False,
                                          "record_shapes": False})  # fmt: skip
            trace = _wait_for_trace(url, trace_dir, profile_id, streams)
        finally:
            stop.set()
        for stream in streams:
            stream.result()
    return {"concurrency": len(prompts), "steps_asked": steps, **summarize_trace(trace, tpot_median_ms)}


def _decode_until(url: str, prompt: list[int], output_tokens: int, stop: threading.Event, on_first_token) -> None:
    """A greedy request that decodes until `stop` is set; closing the stream then aborts it in SGLang."""
    body = {"input_ids": prompt, "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": output_tokens, "ignore_eos": True}}
    request = urllib.request.Request(url + "/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if line.startswith(b"data:"):
                if on_first_token is not None:
                    on_first_token()
                    on_first_token = None
                if stop.is_set():
                    return


def _post(url: str, path: str, body: dict | None) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def _wait_for_trace(url: str, trace_dir: Path, profile_id: str, streams) -> dict:
    deadline = time.monotonic() + TRACE_WAIT_S
    stopped = False
    while time.monotonic() < deadline:
        for path in sorted(trace_dir.glob(f"{profile_id}*.trace.json*")):
            try:  # torch gzips into the final name as it goes: a file still being written does not parse
                return read_trace(path)
            except (EOFError, OSError, ValueError):
                break
        if not stopped and all(stream.done() for stream in streams):  # no step left to end the profile
            try:
                _post(url, "/stop_profile", None)
            except urllib.error.HTTPError:  # it ended by itself meanwhile
                pass
            stopped = True
        time.sleep(0.5)
    raise TimeoutError(f"no complete trace {profile_id}* in {trace_dir} {TRACE_WAIT_S} s after the profile started")

def shares_line(shares: dict) -> str:
    """`expert_gemm 41% · attention 18% · ...`, largest first, the categories under 1% left out."""
    ranked = sorted(shares.items(), key=lambda item: -item[1])
    return " · ".join(f"{name} {share:.0%}" for name, share in ranked if share >= 0.01)
