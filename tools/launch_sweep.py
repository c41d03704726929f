"""Launch-configuration sweep of the fused routing on a GPU: which block sizes and warps make each
launch fastest, per policy, E and T. The device's files under kernels/configs/
(routing_launch,E=...,device_name=....json, read by kernels/routing/launch_config.py) come from here.

    python -m lynx_sglang.tools.launch_sweep [--policies lynx] [--experts 64,128] [--tokens 1,8,32,128,256]
                                             [--repeats 10] [--workers N] [--log FILE]

Every candidate (`candidates`: rows per program, warps of each launch, the ranking chunk of launch 2,
sorts or counting for its orders, lynx's way of picking and its rows per step) is first compiled in
parallel processes (a Triton compile takes seconds, a cached one milliseconds; a child that crashes
costs only its own candidates), then each launch is timed alone under CUDA-graph replay in this
process, as `bench policies --per-launch` times them. Prints, per shape: the default's times, the
fastest candidate for the pair of launches, and the fastest for each launch alone. `--log` writes every
candidate's times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from lynx_sglang.kernels.configs import device_name
from lynx_sglang.kernels.routing import GivenRule, fused_supports
from lynx_sglang.kernels.routing.launch_config import LaunchConfig, launch_config, parts_per_load
from lynx_sglang.kernels.routing.triton_plan import plan_triton
from lynx_sglang.kernels.triton_shared import block_sizes
from lynx_sglang.policies.registry import get_policy

from .bench.batches import make_batch, top_k_for
from .bench.timers import time_cuda_graph


def candidates(num_rows: int, num_experts: int, top_k: int) -> list[LaunchConfig]:
    """The default first, then alternatives for each launch, and lynx's earlier ways of picking with
    their own settings (rows per step, warps). Launch 1's warps never exceed its tile's elements over
    32 (triton_shared.warps_for: more crashed Triton 3.6 at some shapes); launch 2's are bounded by
    its largest tile, the ranking's chunk x E (a candidate that fails to compile is reported and
    skipped)."""
    default = launch_config(num_rows, num_experts, top_k, device_name())
    block_e, _ = block_sizes(num_experts, top_k)
    rows_pow2 = 1 << max(num_rows - 1, 0).bit_length()
    found = [default]

    def add(config: LaunchConfig) -> None:
        config = config._replace(parts=parts_per_load(-(-num_rows // config.block_t)))
        if config not in found:
            found.append(config)

    for block_t in (t for t in (1, 2, 4, 8) if t <= rows_pow2):  # launch 1: rows per program and warps
        for warps in (1, 4, 8):  # 8: one warp per row at 8 rows (E 128, T 256: half the partials)
            if warps * 32 <= block_t * block_e:
                add(default._replace(block_t=block_t, rows_warps=warps, scan_t=max(default.scan_t, block_t)))
    for block_t in sorted({default.block_t} | {t for t in (8, 16) if t <= rows_pow2}):  # launch 2
        for warps in (2, 4, 8, 16):
            for chunk in sorted({min(16, block_e), min(32, block_e)}):
                if warps * 32 <= chunk * block_e:
                    add(default._replace(block_t=block_t, scan_t=max(default.scan_t, block_t), decide_warps=warps,
                                         chunk=chunk))  # fmt: skip
    for warps in (4, 8):  # launch 2 ordering the experts by O(E^2) counting instead of sorts
        if warps * 32 <= default.chunk * block_e:
            add(default._replace(sort=False, decide_warps=warps))
    for picks in sorted({0, 1, 2} - {default.picks}):  # lynx's other ways to pick (the other rules ignore them)
        for scan_t in sorted({max(default.block_t, min(s, rows_pow2)) for s in (16, 32, 64) if s * block_e <= 8192}):
            for warps in (4, 8):
                if warps * 32 <= scan_t * block_e:
                    add(default._replace(picks=picks, scan_t=scan_t, decide_warps=warps))
    return found


def routing_call(name: str, num_experts: int, num_rows: int):
    """The RoutingCall the policy builds for a benchmark batch (bf16 logits on CUDA, all rows real)."""
    policy = get_policy(name, num_experts=num_experts, top_k=top_k_for(num_experts))
    logits, ids, weights = make_batch(num_rows, num_experts, top_k_for(num_experts), "cuda", torch.bfloat16)
    return policy.fused_call(logits, ids, weights, torch.tensor(num_rows, device="cuda"))


def cells(args):
    """(policy name, E, T, call) for every shape with a fused rule."""
    for name in args.policies:
        for num_experts in args.experts:
            for num_rows in args.tokens:
                call = routing_call(name, num_experts, num_rows)
                if isinstance(call.rule, GivenRule) or not fused_supports(call):
                    print(f"# {name} E={num_experts}: decided in torch, nothing to sweep")
                    break
                yield name, num_experts, num_rows, call


def compile_child(tasks: list) -> None:
    """Child process: run each (policy, E, T, config) once (Triton compiles it into its cache)."""
    for name, num_experts, num_rows, config in tasks:
        call = routing_call(name, num_experts, num_rows)
        try:
            plan = plan_triton(call, LaunchConfig(*config))
            plan.rows()
            plan.decide()
            torch.cuda.synchronize()
            print(json.dumps(["ok", name, num_experts, num_rows, config]), flush=True)
        except Exception as error:  # noqa: BLE001 - reported, the sweep goes on
            print(json.dumps(["failed", name, num_experts, num_rows, config, f"{type(error).__name__}: {error}"[:300]]),
                  flush=True)  # fmt: skip


def compile_all(tasks: list, workers: int) -> tuple[set, list[str]]:
    """Compile every task in `workers` child processes; (the tasks that ran, failure lines)."""
    chunks = [tasks[i::workers] for i in range(workers) if tasks[i::workers]]
    command = [sys.executable, "-m", "lynx_sglang.tools.launch_sweep", "--child"]
    children = [subprocess.Popen(command + [json.dumps(chunk)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True) for chunk in chunks]  # fmt: skip
    ran, failures = set(), []
    for child, chunk in zip(children, chunks):
        out, _ = child.communicate()
        done = set()
        for line in out.splitlines():
            status, name, num_experts, num_rows, config, *why = json.loads(line)
            key = (name, num_experts, num_rows, tuple(config))
            done.add(key)
            if status == "ok":
                ran.add(key)
            else:
                failures.append(f"#   failed {key}: {why[0] if why else ''}")
        if child.returncode != 0:
            lost = [tuple(t[:3]) + (tuple(t[3]),) for t in chunk if (t[0], t[1], t[2], tuple(t[3])) not in done]
            failures.append(f"#   a compile process died (exit {child.returncode}); {len(lost)} candidates not run, "
                            f"first {lost[:1]}")  # fmt: skip
    return ran, failures


def describe(config: LaunchConfig) -> str:
    return (f"bt{config.block_t} st{config.scan_t} w{config.rows_warps}/{config.decide_warps} c{config.chunk} "
            f"p{config.parts} k{config.picks}{' sorts' if config.sort else ''}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lynx_sglang.tools.launch_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="lynx")
    parser.add_argument("--experts", default="64,128")
    parser.add_argument("--tokens", default="1,8,32,128,256")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=max(1, min(15, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--log", help="write every candidate's times (JSON lines) here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the sweep times Triton launches on a GPU: it needs a CUDA device")
    if args.child:
        compile_child(json.loads(args.child))
        return 0
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    args.experts = [int(x) for x in args.experts.split(",")]
    args.tokens = [int(x) for x in args.tokens.split(",")]

    shapes = list(cells(args))
    tasks = [[name, e, t, list(config)] for name, e, t, call in shapes
             for config in candidates(t, e, call.topk_ids.shape[1])]  # fmt: skip
    print(f"# launch sweep; {torch.cuda.get_device_name()}; {len(tasks)} candidates; compiling in {args.workers} "
          f"processes", flush=True)  # fmt: skip
    ran, failures = compile_all(tasks, args.workers)
    for line in failures:
        print(line, flush=True)
    log = open(args.log, "w") if args.log else None
    print(f"{'policy':<8} {'E':>4} {'T':>4}  {'default (rows+decide)':>24}  {'best pair':>38}  {'best rows':>30}  "
          f"{'best decide':>30}")  # fmt: skip
    for name, num_experts, num_rows, call in shapes:
        times = {}
        for config in candidates(num_rows, num_experts, call.topk_ids.shape[1]):
            if (name, num_experts, num_rows, tuple(config)) not in ran:
                continue
            plan = plan_triton(call, config)
            plan.rows()
            times[config] = (time_cuda_graph(plan.rows, args.repeats), time_cuda_graph(plan.decide, args.repeats))
            if log:
                log.write(json.dumps([name, num_experts, num_rows, list(config), *times[config]]) + "\n")
        if not times:
            print(f"{name:<8} {num_experts:>4} {num_rows:>4}  no candidate ran")
            continue
        default = launch_config(num_rows, num_experts, call.topk_ids.shape[1], device_name())
        pair = min(times, key=lambda c: sum(times[c]))
        rows = min(times, key=lambda c: times[c][0])
        decide = min(times, key=lambda c: times[c][1])
        base = times.get(default)
        base_text = f"{base[0]:.1f}+{base[1]:.1f}={sum(base):.1f}" if base else "did not run"
        print(f"{name:<8} {num_experts:>4} {num_rows:>4}  {base_text:>24}  "
              f"{describe(pair) + f' {times[pair][0]:.1f}+{times[pair][1]:.1f}={sum(times[pair]):.1f}':>38}  "
              f"{describe(rows) + f' {times[rows][0]:.1f}':>30}  {describe(decide) + f' {times[decide][1]:.1f}':>30}",
              flush=True)  # fmt: skip
    if log:
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
