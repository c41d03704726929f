"""The stages of a GPU run (scripts/gpu-serve.sh runs one, within a time limit, after installing the kit).

    python scripts/gpu_stages.py STAGE OUTDIR

smoke        the embedded model served on CUDA (policy lynx, CUDA graphs on), one completion and the
             stats; then `bench serve` on two layers of the Mixtral-8x7B shape (bf16, dummy weights)
mixtral      `bench serve` on mixtral-8x7b: baseline, budget fraction=0.5, lynx at concurrency 1-64, and
             where each server's step time goes at concurrency 32 (`--profile 32`)
qwen3        the same on qwen3-30b-a3b
routers      the same on glm-4.5-air reduced to 12 layers (a biased sigmoid router, a shared expert) and on
             llama-4-scout reduced to 8 (sigmoid top-1, a shared expert; not served on SGLang's CPU path)
compute      the pruned arm with --lynx-kernel lynx and with --lynx-kernel sglang, both shapes, a record
             each (OUTDIR/compute-<shape>-serve.json, what scripts/expert-compute-table.py reads)
correctness  the embedded model's greedy answers against this repository's CPU answers (200 problems);
             baseline through the lynx kernel against SGLang's on the dummy Mixtral shape (64 prompts x
             32 tokens); a live budget switch under CUDA graphs (experts per layer and TPOT before, after,
             and after a policy switch that leaves the graphs)
offload      expert offload on mixtral-8x7b reduced to 8 layers, 2 of 8 experts resident per layer:
             TPOT and bytes copied per decode token at batch 1 and 8 with every expert resident, LRU,
             activation-aware and LRU under the cache-aware lynx; the host-to-device bandwidth (copy
             engine and the cache's Triton copy kernel) as the bound (OUTDIR/offload.json)
reference    (on a CPU) writes scripts/data/embedded-greedy-cpu.json, the answers `correctness` compares to

Environment: SHAPE, ARMS and CONCURRENCY narrow mixtral and qwen3 (e.g. the arms a time limit cut off);
PROFILE the level they profile (bench serve --profile; default 32, 0: none);
SHAPES the shapes of routers and compute; SMOKE_SHAPE the smoke stage's bench shape; SMOKE_BENCH=0 leaves
that bench out (when the same call runs a bench stage after it).

Each stage writes OUTDIR/<stage>.json (and the bench stages OUTDIR/<stage>-serve.json in the schema of
docs/benchmarks/serve-gpu.json), and appends the tail of every server log to OUTDIR/servers.log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lynx_sglang.embedded.task import heldout_problems
from lynx_sglang.evaluate import complete, post_json
from lynx_sglang.experiments.client import AdminClient
from lynx_sglang.experiments.launch import ManagedServer
from lynx_sglang.sglang_settings import NO_CUDA_GRAPHS, as_flags

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "scripts" / "data" / "embedded-greedy-cpu.json"
REFERENCE_PROBLEMS, REFERENCE_SEED = 200, 1234
GRAPH_SIZES = ["--cuda-graph-bs-decode", "1", "16", "32", "64"]
BENCH_ARMS = "baseline;budget:fraction=0.5;lynx"
# The targets' levels first: each arm runs its levels in this order and the record is rewritten after
# each, so a run the device's time cuts short keeps the levels the targets are judged at.
BENCH_LEVELS = "32,16,1,64"
PROFILE_LEVEL = "32"


class Stage:
    def __init__(self, name: str, out: Path):
        self.name, self.out = name, out
        self.results: dict = {"stage": name, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.logs = Path(tempfile.mkdtemp(prefix=f"lynx-gpu-{name}-"))

    def save(self) -> None:
        (self.out / f"{self.name}.json").write_text(json.dumps(self.results, indent=1) + "\n")

    def server(self, label: str, policy: str | None, model_path: str | None, serve_args: list[str]) -> ManagedServer:
        started = time.monotonic()
        server = ManagedServer(self.logs / f"{label}.log", policy=policy, model_path=model_path, serve_args=serve_args)
        try:
            server.wait_healthy(timeout=480)
        except Exception:
            self.keep_log(server, label)
            raise
        seconds = round(time.monotonic() - started, 1)
        self.results.setdefault("server_start_s", {})[label] = seconds
        print(f"[{self.name}] {label}: healthy after {seconds} s", flush=True)
        return server

    def keep_log(self, server: ManagedServer, label: str, lines: int = 200) -> None:
        with open(self.out / "servers.log", "a") as log:
            log.write(f"===== {self.name} / {label} (last {lines} lines)\n{server.log_tail(lines)}\n")

    def stop(self, server: ManagedServer, label: str) -> None:
        server.stop()
        self.keep_log(server, label)


def bench(stage: Stage, shape: str, arms: str, extra: list[str] = (), concurrency: str = BENCH_LEVELS,
          record_name: str | None = None) -> None:  # fmt: skip
    record = stage.out / (record_name or f"{stage.name}-serve.json")
    command = [sys.executable, "-m", "lynx_sglang.cli", "bench", "serve", "--shape", shape, "--arms", arms,
               "--concurrency", os.environ.get("CONCURRENCY", concurrency), "--record", str(record), *extra,
               "--", *GRAPH_SIZES]  # fmt: skip
    print(f"[{stage.name}] {' '.join(command[2:])}", flush=True)
    proc = subprocess.Popen(command)
    try:
        proc.wait()
    except KeyboardInterrupt:  # the time limit: bench serve stops its servers (they hold the GPU) and keeps its rows
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    finally:
        stage.results.setdefault("bench_exit_codes", []).append(proc.returncode)


def smoke(stage: Stage) -> None:
    server = stage.server("embedded", "lynx", None, GRAPH_SIZES)  # SGLang's default: 36 sizes to capture
    try:
        answer = complete(server.url, "123+45=")
        stats = AdminClient(server.url, server.token).stats()
        stage.results.update(answer=answer, pruned_steps=stats["pruned_steps"], fallback_steps=stats["fallback_steps"],
                             policy=AdminClient(server.url, server.token).policy())
        print(f"[smoke] 123+45= -> {answer!r}; pruned steps {stats['pruned_steps']}", flush=True)
    finally:
        stage.stop(server, "embedded")
    stage.save()
    if os.environ.get("SMOKE_BENCH", "1") == "0":  # a later stage of the same call benches anyway
        return
    bench(stage, os.environ.get("SMOKE_SHAPE", "mixtral-8x7b,num_hidden_layers=2"), "baseline;budget:fraction=0.5",
          ["--output-tokens", "32", "--requests", "16"], concurrency="1,16")


def mixtral(stage: Stage) -> None:
    bench(stage, os.environ.get("SHAPE", "mixtral-8x7b"), os.environ.get("ARMS", BENCH_ARMS), profile_flags())


def qwen3(stage: Stage) -> None:
    bench(stage, os.environ.get("SHAPE", "qwen3-30b-a3b"), os.environ.get("ARMS", BENCH_ARMS), profile_flags())


def profile_flags() -> list[str]:
    """Where the step time goes at the targets' level (a few seconds per server), if that level runs."""
    level = os.environ.get("PROFILE", PROFILE_LEVEL)
    levels = [level.strip() for level in os.environ.get("CONCURRENCY", BENCH_LEVELS).split(",")]
    return ["--profile", level] if level != "0" and level in levels else []


def routers(stage: Stage) -> None:
    for shape in os.environ.get("SHAPES", "glm-4.5-air,num_hidden_layers=12;llama-4-scout,num_hidden_layers=8").split(";"):
        bench(stage, shape, BENCH_ARMS, record_name=f"routers-{shape.partition(',')[0]}-serve.json")


def compute(stage: Stage) -> None:
    for shape in os.environ.get("SHAPES", "mixtral-8x7b,num_hidden_layers=8;qwen3-30b-a3b,num_hidden_layers=12").split(";"):
        # a record per shape: scripts/expert-compute-table.py turns each into the device's table
        bench(stage, shape, "budget:fraction=0.5", ["--kernels", "lynx,sglang"],
              record_name=f"compute-{shape.partition(',')[0]}-serve.json")


def embedded_answers(url: str) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    problems = heldout_problems(REFERENCE_PROBLEMS, seed=REFERENCE_SEED)
    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(lambda p: complete(url, p.prompt), problems))


def reference(stage: Stage) -> None:
    server = stage.server("embedded-cpu", "baseline", None, [])
    try:
        answers = embedded_answers(server.url)
    finally:
        stage.stop(server, "embedded-cpu")
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps({"problems": REFERENCE_PROBLEMS, "seed": REFERENCE_SEED, "dtype": "float32",
                                     "answers": answers}, indent=0) + "\n")
    print(f"wrote {REFERENCE}")


def greedy_tokens(url: str, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    from concurrent.futures import ThreadPoolExecutor

    def one(prompt):
        body = {"input_ids": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": tokens, "ignore_eos": True}}
        return post_json(url + "/generate", body, timeout=600)["output_ids"]

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        return list(pool.map(one, prompts))


def check_embedded(stage: Stage) -> None:
    expected = json.loads(REFERENCE.read_text())["answers"]
    server = stage.server("embedded-f32", "baseline", None, ["--dtype", "float32"])
    try:
        answers = embedded_answers(server.url)
    finally:
        stage.stop(server, "embedded-f32")
    agree = sum(a == b for a, b in zip(answers, expected))
    stage.results["embedded_agreement"] = {"agree": agree, "total": len(expected),
                                           "first_differences": [[i, a, b] for i, (a, b) in enumerate(zip(answers, expected)) if a != b][:10]}
    print(f"[correctness] embedded model: {agree}/{len(expected)} greedy answers as on the CPU", flush=True)
    stage.save()


def check_kernels(stage: Stage, shape_dir: str) -> None:
    rng = random.Random(0)
    prompts = [[rng.randrange(10, 90) for _ in range(16)] for _ in range(64)]
    outputs = {}
    for kernel in ("lynx", "sglang"):
        server = stage.server(f"mixtral-{kernel}", "baseline", shape_dir,
                              ["--load-format", "dummy", "--dtype", "bfloat16", "--lynx-kernel", kernel, *GRAPH_SIZES])
        try:
            outputs[kernel] = greedy_tokens(server.url, prompts, 32)
        finally:
            stage.stop(server, f"mixtral-{kernel}")
    pairs = [(a, b) for x, y in zip(outputs["lynx"], outputs["sglang"]) for a, b in zip(x, y)]
    same = sum(a == b for a, b in pairs)
    # Once one token differs, the rest of that sequence continues from another prefix: count both ways.
    first_split = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None)
                   for x, y in zip(outputs["lynx"], outputs["sglang"])]
    stage.results["kernel_agreement"] = {"same_tokens": same, "tokens": len(pairs),
                                         "sequences_identical": first_split.count(None), "sequences": len(prompts),
                                         "first_difference_positions": [i for i in first_split if i is not None]}
    print(f"[correctness] lynx vs sglang kernel, baseline routing: {same}/{len(pairs)} tokens equal, "
          f"{first_split.count(None)}/64 sequences identical", flush=True)
    stage.save()


def check_live_switch(stage: Stage, shape_dir: str) -> None:
    from lynx_sglang.tools.bench.serve import stream_one

    server = stage.server("switch", "budget", shape_dir, ["--lynx-budget", "fraction=0.5", "--load-format", "dummy",
                                                          "--dtype", "bfloat16", *GRAPH_SIZES])  # fmt: skip
    admin = AdminClient(server.url, server.token)
    rng = random.Random(1)
    phases = []

    def measure(label: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        admin.reset_stats()
        prompts = [[rng.randrange(10, 90) for _ in range(64)] for _ in range(32)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            tpots = sorted(t for t, _ in pool.map(lambda p: stream_one(server.url, p, 64), prompts))
        stats, policy = admin.stats(), admin.policy()
        phases.append({"phase": label, "experts_per_layer": stats["distinct_experts_after"],
                       "tpot_median_ms": tpots[len(tpots) // 2], "graphs_replay": policy["cuda_graphs_replay_pruning"]})
        print(f"[correctness] {label}: {phases[-1]}", flush=True)

    try:
        measure("budget fraction=0.5 (captured)")
        admin.set_policy({"budget": "fraction=0.25"})
        measure("budget fraction=0.25 (live switch)")
        admin.set_policy({"policy": "lynx"})
        measure("policy lynx (graphs left: eager decode)")
    finally:
        stage.stop(server, "switch")
        stage.results["live_switch"] = phases
        stage.save()


def correctness(stage: Stage) -> None:
    from lynx_sglang.tools.bench.models import describe_device, resolve_model

    checks = os.environ.get("CHECKS", "embedded,kernels,switch").split(",")
    if "embedded" in checks:
        check_embedded(stage)
    # The Mixtral shape with as many layers as the device holds (SHAPE may shrink it).
    model = resolve_model(None, os.environ.get("SHAPE", "mixtral-8x7b"), [], describe_device(), stage.logs)
    shape_dir = str(model.path)
    if "kernels" in checks:
        check_kernels(stage, shape_dir)
    if "switch" in checks:
        check_live_switch(stage, shape_dir)


OFFLOAD_CACHE = ["--lynx-expert-cache", "2"]
# Activation-aware last: with random routers it differs little from LRU, so it is the arm to lose if time runs out.
OFFLOAD_ARMS = [("all resident", "baseline", []), ("lru", "baseline", OFFLOAD_CACHE),
                ("lru, cache-aware lynx", "lynx", OFFLOAD_CACHE + ["--lynx-param", "prefer_resident=true"]),
                ("activation", "baseline", OFFLOAD_CACHE + ["--lynx-cache-policy", "activation"])]


def copy_bandwidth() -> dict:
    """Host-to-device GB/s from pinned memory: the copy engine (tensor.copy_) and the expert cache's Triton
    copy kernel, which reads pinned memory through its device address (what a decode step's misses use)."""
    import torch

    from lynx_sglang.kernels.cache import ExpertCache

    if not torch.cuda.is_available():  # a rehearsal on a CPU: nothing to measure
        return {"copy_engine_gb_s": None, "cache_copy_kernel_gb_s": None}

    def timed(run, nbytes, repeats=5) -> float:
        run()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
        return round(repeats * nbytes / (time.perf_counter() - started) / 1e9, 2)

    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    device = torch.empty_like(host, device="cuda")
    engine = timed(lambda: device.copy_(host, non_blocking=True), host.numel())
    del host, device
    # 8 experts of a quarter of Mixtral's width (50 MB each), 4 slots: each fetch replaces all four
    w13 = torch.randn(8, 2 * 3584, 4096, dtype=torch.bfloat16)
    cache = ExpertCache(w13, torch.randn(8, 4096, 3584, dtype=torch.bfloat16), 4, device="cuda")
    halves = [torch.arange(8, device="cuda") >= 4, torch.arange(8, device="cuda") < 4]
    state = {"turn": 0}

    def fetch() -> None:
        state["turn"] ^= 1
        cache.fetch(halves[state["turn"]], "triton")

    kernel = timed(fetch, 4 * cache.expert_bytes, repeats=6)
    return {"copy_engine_gb_s": engine, "cache_copy_kernel_gb_s": kernel}


def offload_level(server: ManagedServer, batch: int, prompt_rng: random.Random) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from lynx_sglang.tools.bench.serve import stream_one

    admin = AdminClient(server.url, server.token)
    admin.reset_stats()
    prompts = [[prompt_rng.randrange(10, 90) for _ in range(128)] for _ in range(2 * batch)]
    with ThreadPoolExecutor(max_workers=batch) as pool:
        tpots = sorted(t for t, _ in pool.map(lambda p: stream_one(server.url, p, 16), prompts))
    cache = admin.stats().get("expert_cache") or {}
    layers = cache.get("layers") or []
    tokens = layers[0]["decode_tokens"] if layers else 0
    return {"batch": batch, "tpot_median_ms": tpots[len(tpots) // 2], "decode_tokens": tokens,
            "misses_per_decode_token": sum(layer["decode_misses"] for layer in layers) / tokens if tokens else 0.0,
            "bytes_copied_per_decode_token": cache.get("cache_bytes_copied_per_decode_token", 0.0)}


def offload(stage: Stage) -> None:
    from lynx_sglang.tools.bench.models import describe_device, resolve_model

    import torch

    stage.results.update(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (a rehearsal)",
                         commit=os.environ.get("LYNX_COMMIT", ""))
    stage.results["bandwidth"] = copy_bandwidth()
    print(f"[offload] host-to-device: {stage.results['bandwidth']}", flush=True)
    shape = os.environ.get("SHAPE", "mixtral-8x7b,num_hidden_layers=8")
    model = resolve_model(None, shape, [], describe_device(), stage.logs)
    stage.results.update(shape=shape, rows=[])
    for label, policy, arm_args in OFFLOAD_ARMS:
        args = ["--load-format", "dummy", "--dtype", "bfloat16", "--cuda-graph-bs-decode", "1", "8", *arm_args]
        graphs = True
        try:
            server = stage.server(label, policy, str(model.path), args)
        except Exception as error:  # noqa: BLE001 - say it, then try without CUDA graphs
            print(f"[offload] {label}: no healthy server with CUDA graphs ({error}); again without them")
            graphs = False
            server = stage.server(f"{label} (eager)", policy, str(model.path), args + as_flags(NO_CUDA_GRAPHS))
        try:
            for batch in (1, 8):
                row = {"arm": label, "cuda_graphs": graphs, **offload_level(server, batch, random.Random(batch))}
                rate = stage.results["bandwidth"]["copy_engine_gb_s"]
                # per step: the batch's copies at the copy engine's rate
                row["copy_bound_ms"] = round(row["bytes_copied_per_decode_token"] * batch / (rate * 1e6), 3) if rate else None
                stage.results["rows"].append(row)
                print(f"[offload] {row}", flush=True)
                stage.save()
        finally:
            stage.stop(server, label)


STAGES = {"smoke": smoke, "mixtral": mixtral, "qwen3": qwen3, "routers": routers, "compute": compute, "correctness": correctness,
          "offload": offload, "reference": reference}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in STAGES:
        print(f"usage: gpu_stages.py {{{'|'.join(STAGES)}}} OUTDIR", file=sys.stderr)
        return 2
    stage = Stage(argv[0], Path(argv[1]))
    stage.out.mkdir(parents=True, exist_ok=True)
    try:
        STAGES[argv[0]](stage)
    finally:
        stage.save()
    return 0 if not any(stage.results.get("bench_exit_codes", [])) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
