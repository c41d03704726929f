"""Timing for the benchmarks: medians of interleaved rounds, CUDA-graph replays between CUDA events, wall
clock on a CPU, and the copy bandwidth the kernels' GB/s are compared with."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


class Timer:
    """Median time per case, with the cases interleaved round by round.

    A case is a list of closures, one per weight copy; round r calls closure r % copies of every case in
    turn. Interleaving makes slow drifts of the machine (other jobs, clocks) hit all cases alike, so
    ratios between cases (50 % vs 100 % active, ours vs stock) stay meaningful on a shared machine.
    """

    def __init__(self, device: torch.device, use_graphs: bool, warmup: int, iters: int):
        self.device = device
        self.use_graphs = use_graphs and device.type == "cuda"
        self.warmup = warmup
        self.iters = iters

    def _prepare(self, closures):
        """Warm up (JIT compile outside any capture) and, on a GPU, capture one graph per closure."""
        if self.device.type != "cuda":
            # at least one call here, so that one that fails is reported as its case's failure, as on a GPU
            for i in range(max(self.warmup, 1)):
                closures[i % len(closures)]()
            return closures
        runners = []
        for fn in closures:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(self.warmup, 2)):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            if self.use_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    fn()
                runners.append(graph.replay)
            else:
                runners.append(fn)
        return runners

    def median_seconds(self, cases: dict[str, list[Callable[[], object]]]) -> dict[str, float]:
        runners = {}
        for name, closures in cases.items():
            try:
                runners[name] = self._prepare(closures)
            except Exception as error:  # noqa: BLE001 - one failing implementation must not stop the table
                print(f"# {name} failed: {type(error).__name__}: {str(error)[:200]}")
        samples: dict[str, list] = {name: [] for name in runners}
        for round_index in range(self.iters):
            for name, fns in runners.items():
                fn = fns[round_index % len(fns)]
                if self.device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    samples[name].append((start, end))
                else:
                    start_time = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start_time)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            samples = {n: [s.elapsed_time(e) / 1e3 for s, e in pairs] for n, pairs in samples.items()}
        result = {name: float("nan") for name in cases}
        result.update({name: statistics.median(values) for name, values in samples.items()})
        return result


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 5) -> float:
    """Device-to-device (or RAM-to-RAM) copy bandwidth in GB/s: 2 * bytes / time (read + write)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            start_time = time.perf_counter()
            dst.copy_(src)
            samples.append(time.perf_counter() - start_time)
    del src, dst
    return 2 * nbytes / statistics.median(samples) / 1e9


def time_cpu(call, repeats: int) -> float:
    for _ in range(3):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


# A decode step replays one graph holding every layer: a layer call's cost is its kernels, not the
# replay's own launch (several us). So the graph holds this many calls back to back.
CALLS_PER_GRAPH = 20


def time_cuda_graph(call, repeats: int) -> float:
    """Microseconds per call: CALLS_PER_GRAPH calls captured in one graph, `repeats` replays between
    CUDA events, median of five such runs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (allocations, lazy init, Triton compiles) outside the capture
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            call()
    graph.replay()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1e3 / (repeats * CALLS_PER_GRAPH))  # ms -> us
    return statistics.median(per_call)
