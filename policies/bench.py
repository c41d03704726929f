"""Micro-benchmark: time per `select` call of every policy (one MoE layer of one decode batch).

    python -m lynx_sglang.policies.bench [--device cpu|cuda] [--repeats N] [--compile]

CPU: median of `repeats` wall-clock calls (time.perf_counter). CUDA: the call is captured once in a
CUDA graph and replayed; the time per replay comes from CUDA events (median of 5 batches of
`repeats` replays), which is what a CUDA-graph decode step pays. Target on an H100/H200: at most
15 microseconds per layer call at T <= 256, E <= 128.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .registry import BUILTIN_POLICIES, get_policy

DEFAULT_TOKENS = (1, 8, 32, 128, 256)
DEFAULT_EXPERTS = (8, 64, 128)


def top_k_for(num_experts: int) -> int:
    """A realistic k per expert count: Mixtral 8/top-2; Qwen2-57B 64/top-8; Qwen3-30B 128/top-8."""
    return 2 if num_experts <= 8 else 8


def make_batch(num_rows, num_experts, top_k, device, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Skewed routing, as in real models: a shared per-expert bias on top of per-token noise.
    logits = (torch.randn(num_rows, num_experts, generator=generator) * 2.0
              + torch.randn(1, num_experts, generator=generator))
    probs = torch.softmax(logits, dim=-1)
    weights, ids = probs.topk(top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (logits.to(device=device, dtype=dtype), ids.to(device=device, dtype=torch.int32),
            weights.to(device=device))


def time_cpu(call, repeats: int) -> float:
    for _ in range(3):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def time_cuda_graph(call, repeats: int) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (allocations, lazy init) outside the capture
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    graph.replay()
    torch.cuda.synchronize()
    per_replay = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        end.synchronize()
        per_replay.append(start.elapsed_time(end) * 1e3 / repeats)  # ms -> us
    return statistics.median(per_replay)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lynx_sglang.policies.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per cell (default 50 on CPU, 200 graph replays on CUDA)")
    parser.add_argument("--policies", default=",".join(BUILTIN_POLICIES),
                        help="comma-separated policy names (default: all built-ins)")
    parser.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)))
    parser.add_argument("--experts", default=",".join(map(str, DEFAULT_EXPERTS)))
    parser.add_argument("--compile", action="store_true",
                        help="time torch.compile(policy.select, fullgraph=True) (inductor) instead of eager")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    repeats = args.repeats or (200 if args.device == "cuda" else 50)
    tokens = [int(x) for x in args.tokens.split(",")]
    experts = [int(x) for x in args.experts.split(",")]
    names = [name.strip() for name in args.policies.split(",") if name.strip()]
    device = torch.device(args.device)
    logits_dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    timer = time_cuda_graph if args.device == "cuda" else time_cpu

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    mode = "torch.compile (inductor), " if args.compile else "eager, "
    mode += "CUDA graph replay, CUDA events" if args.device == "cuda" else "median wall clock"
    print(f"# policy select() time per call, microseconds; {where}; torch {torch.__version__}; "
          f"{mode}; {repeats} repeats; logits {str(logits_dtype).replace('torch.', '')}; "
          "all rows real (num_real as a 0-dim tensor)")
    header = f"{'policy':<12} {'E':>4} {'k':>2} " + " ".join(f"{'T=' + str(t):>9}" for t in tokens)
    print(header)
    print("-" * len(header))
    for name in names:
        for num_experts in experts:
            top_k = top_k_for(num_experts)
            try:
                policy = get_policy(name, num_experts=num_experts, top_k=top_k, renormalize=True)
            except ValueError as error:
                print(f"{name:<12} {num_experts:>4} {top_k:>2}  skipped: {error}")
                continue
            select = policy.select
            if args.compile:
                torch._dynamo.reset()
                select = torch.compile(policy.select, fullgraph=True)
            cells = []
            for num_rows in tokens:
                logits, ids, weights = make_batch(num_rows, num_experts, top_k, device, logits_dtype)
                num_real = torch.tensor(num_rows, device=device)
                micros = timer(lambda: select(logits, ids, weights, num_real), repeats)
                cells.append(f"{micros:>9.1f}")
            print(f"{name:<12} {num_experts:>4} {top_k:>2} " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
