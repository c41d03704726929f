"""`lynx-sglang bench serve`: end-to-end decode speed of a served, memory-bound MoE, per policy.

Builds (once, cached on disk) a Mixtral-shaped checkpoint with random bf16 weights whose experts are
far larger than the CPU caches, serves it once per arm with `lynx-sglang serve`, and drives each
server with streaming requests at several concurrency levels (each level keeps that many requests in
flight, every request forced to the same output length). Prints decode tokens/s, median and p90
time per output token, and the expert bytes read per decode token (from /lynx/stats), with the
ratios of each arm to the first.

    lynx-sglang bench serve                      # baseline vs budget fraction=0.5 at 1, 4, 16
    lynx-sglang bench serve --arms "baseline;lynx;budget:fraction=0.25" --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lynx_sglang.experiments.client import AdminClient
from lynx_sglang.experiments.launch import ManagedServer

DEFAULT_SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 2, "num_attention_heads": 16,
                 "num_key_value_heads": 4, "num_local_experts": 8, "num_experts_per_tok": 2}  # fmt: skip
DEFAULT_ARMS = "baseline;budget:fraction=0.5"


@dataclass(frozen=True)
class Arm:
    """`policy[:budget]`, e.g. `baseline`, `lynx`, `budget:fraction=0.5`, `lynx:experts=4`."""

    policy: str
    budget: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Arm":
        policy, _, budget = text.strip().partition(":")
        return cls(policy, budget or None)

    @property
    def label(self) -> str:
        return self.policy + (f" {self.budget}" if self.budget else "")

    def serve_flags(self) -> list[str]:
        return ["--lynx-policy", self.policy] + (["--lynx-budget", self.budget] if self.budget else [])


@dataclass
class LevelResult:
    arm: str
    concurrency: int
    requests: int
    output_tokens: int
    seconds: float
    tpot_ms: list[float] = field(repr=False)
    expert_bytes_per_token: float = 0.0
    distinct_experts: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    def tpot_quantile(self, q: float) -> float:
        values = sorted(self.tpot_ms)
        return values[min(len(values) - 1, int(q * len(values)))]

    def as_json(self) -> dict:
        return {"arm": self.arm, "concurrency": self.concurrency, "requests": self.requests,
                "decode_tokens_per_s": self.tokens_per_s, "tpot_median_ms": statistics.median(self.tpot_ms),
                "tpot_p90_ms": self.tpot_quantile(0.9), "expert_bytes_per_decode_token": self.expert_bytes_per_token,
                "distinct_experts_per_layer": self.distinct_experts}  # fmt: skip


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lynx-sglang"


def bench_checkpoint(shape: dict) -> Path:
    """The random bf16 checkpoint of this shape, built on first use (a minute or two, GBs on disk)."""
    from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

    name = "bench-mixtral-" + "-".join(f"{shape[k]}" for k in sorted(shape))
    directory = cache_dir() / name
    if (directory / "model.safetensors").exists() or list(directory.glob("model-*.safetensors")):
        return directory
    expert_gb = 3 * shape["hidden_size"] * shape["intermediate_size"] * 2 * shape["num_local_experts"] \
        * shape["num_hidden_layers"] / 1e9
    print(f"building the benchmark checkpoint ({expert_gb:.2f} GB of bf16 experts) in {directory}", flush=True)
    cache_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=name + "-", dir=cache_dir()))
    build_tiny_checkpoint("mixtral", staging, seed=0, dtype="bfloat16", **shape)
    staging.rename(directory)  # atomic: an interrupted build never looks finished
    return directory


def stream_one(url: str, prompt: list[int], output_tokens: int) -> tuple[float, int]:
    """Send one streaming request; return (time per output token in ms, tokens received)."""
    body = {"input_ids": prompt, "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": output_tokens, "ignore_eos": True}}
    request = urllib.request.Request(url + "/generate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    started = time.perf_counter()
    first = None
    tokens = 0
    with urllib.request.urlopen(request, timeout=1800) as response:
        for line in response:
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            now = time.perf_counter()
            first = first or now
            tokens = len(json.loads(line[5:])["output_ids"]) if b"output_ids" in line else tokens + 1
    ended = time.perf_counter()
    return (ended - first) * 1000 / max(tokens - 1, 1), tokens


def run_level(server: ManagedServer, arm: Arm, concurrency: int, requests: int, prompt_tokens: int, output_tokens: int,
              vocab: int, seed: int) -> LevelResult:
    rng = random.Random(seed)
    prompts = [[rng.randrange(4, vocab) for _ in range(prompt_tokens)] for _ in range(requests)]
    stream_one(server.url, prompts[0], 4)  # warm the path at this level's first shapes
    admin = AdminClient(server.url, server.token)
    admin.reset_stats()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda p: stream_one(server.url, p, output_tokens), prompts))
    seconds = time.perf_counter() - started
    stats = admin.stats()
    return LevelResult(arm.label, concurrency, requests, sum(t for _, t in results), seconds,
                       [tpot for tpot, _ in results], stats["expert_bytes_per_decode_token_after"],
                       stats["distinct_experts_after"])


def print_table(results: list[LevelResult], arms: list[Arm]) -> None:
    print(f"\n{'arm':24s} {'conc':>4s} {'decode tok/s':>12s} {'TPOT med ms':>11s} {'TPOT p90 ms':>11s} "
          f"{'experts/layer':>13s} {'expert MB/token':>15s}")
    for r in results:
        print(f"{r.arm:24s} {r.concurrency:4d} {r.tokens_per_s:12.1f} {statistics.median(r.tpot_ms):11.1f} "
              f"{r.tpot_quantile(0.9):11.1f} {r.distinct_experts:13.2f} {r.expert_bytes_per_token / 1e6:15.1f}")
    first = arms[0].label
    print(f"\nratios to {first} (TPOT median, TPOT p90, decode tok/s, expert bytes per token):")
    for r in results:
        base = next((b for b in results if b.arm == first and b.concurrency == r.concurrency), None)
        if r.arm == first or base is None:
            continue
        print(f"  {r.arm:22s} c={r.concurrency:<3d} TPOT {statistics.median(r.tpot_ms) / statistics.median(base.tpot_ms):.2f}"
              f"  p90 {r.tpot_quantile(0.9) / base.tpot_quantile(0.9):.2f}  tok/s {r.tokens_per_s / base.tokens_per_s:.2f}"
              f"  bytes {r.expert_bytes_per_token / max(base.expert_bytes_per_token, 1):.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lynx-sglang bench serve", description=__doc__.split("\n")[0])
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"';'-separated policy[:budget] (default: {DEFAULT_ARMS})")
    parser.add_argument("--concurrency", default="1,4,16", help="levels (default: 1,4,16)")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: 2 x concurrency, at least 4)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--model-path", help="serve this checkpoint instead of the built one")
    parser.add_argument("--shape", default="", help="checkpoint shape overrides, e.g. hidden_size=1024,num_hidden_layers=6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("serve_args", nargs="*", help="extra flags for `lynx-sglang serve` (after --)")
    args = parser.parse_args(argv)

    arms = [Arm.parse(a) for a in args.arms.split(";") if a.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    shape = {**DEFAULT_SHAPE, **{k: int(v) for k, v in (kv.split("=") for kv in args.shape.split(",") if kv)}}
    model = Path(args.model_path) if args.model_path else bench_checkpoint(shape)
    from lynx_sglang.policy_setup import MoeShape

    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    print(f"model {model} ({MoeShape.from_checkpoint(model)}); arms: {', '.join(a.label for a in arms)}; "
          f"concurrency {levels}; {args.prompt_tokens} prompt + {args.output_tokens} output tokens per request",
          flush=True)
    results: list[LevelResult] = []
    logs = Path(tempfile.mkdtemp(prefix="lynx-bench-serve-"))
    for arm in arms:
        server = ManagedServer(logs / f"{arm.policy}.log", policy=None, model_path=str(model),
                               serve_args=["--dtype", "bfloat16", *arm.serve_flags(), *args.serve_args])
        try:
            server.wait_healthy(timeout=900)  # a large checkpoint loads slowly on CPU
            for concurrency in levels:
                requests = args.requests or max(4, 2 * concurrency)
                result = run_level(server, arm, concurrency, requests, args.prompt_tokens, args.output_tokens, vocab,
                                   args.seed + concurrency)
                print(f"  {arm.label}: c={concurrency} {result.tokens_per_s:.1f} tok/s, "
                      f"TPOT median {statistics.median(result.tpot_ms):.1f} ms", flush=True)
                results.append(result)
        finally:
            server.stop()
    print_table(results, arms)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model), "shape": shape, "arms": [a.label for a in arms],
                                               "results": [r.as_json() for r in results]}, indent=2))
    return 0
