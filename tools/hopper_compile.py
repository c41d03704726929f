"""Compile every Triton kernel of lynx_sglang.kernels for an NVIDIA Hopper GPU (sm_90), without one.

    python -m lynx_sglang.tools.hopper_compile [--dtypes bf16 fp16 fp32] [--quick]

Covers the active-expert MoE (three kernels), the fused routing decision (two kernels, every rule) and
the serving runtime's per-layer bookkeeping (one kernel).

Triton compiles ahead of time from a kernel's signature: no driver and no GPU are needed to lower the
kernels to PTX and a cubin (Triton ships its own ptxas). That catches what the CPU interpreter cannot:
`tl.dot` tile minimums and dtype support on the real backend, ops the NVIDIA backend rejects, and shared
memory beyond what an SM offers at the configurations `choose_config` picks for the benchmark shapes.
It cannot catch races or wrong results on the device: that still needs a GPU run.

Run it with TRITON_INTERPRET unset (the interpreter replaces the kernels with Python functions).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from typing import NamedTuple

# Hopper (H100/H200): 227 KiB of shared memory per thread block at most.
HOPPER_MAX_SHARED_BYTES = 232_448
HOPPER_DEVICE = "NVIDIA_H100_80GB_HBM3"  # whose launch configurations the routing cases compile
HOPPER_SMS = 132  # an H100 SXM's, for the MoE's tiles
BATCHES = (1, 8, 32, 64, 128)


def _signature(kernel, pointer_types: dict[str, str], constexprs: dict, scalar_types: dict[str, str]) -> dict[str, str]:
    signature = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types[name]
        else:
            signature[name] = scalar_types.get(name, "i32")
    return signature


def compile_for_hopper(kernel, pointer_types: dict[str, str], constexprs: dict, num_warps: int, num_stages: int,
                       scalar_types: dict[str, str] | None = None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = _signature(kernel, pointer_types, constexprs, scalar_types or {})
    names = list(signature)
    source = ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}
    )
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def kernel_cases(dtype: str, config, top_k: int, activation_code: int):
    """(kernel, pointer types, constexprs) for the three launches of one MoE call."""
    from lynx_sglang.kernels.moe import triton_kernels as tm

    t = f"*{dtype}"
    ids = {"sorted_pair_ids_ptr": "*i32", "block_expert_ptr": "*i32"}
    return [
        (
            tm._gate_up_activation_kernel,
            {"hidden_ptr": t, "w13_ptr": t, "intermediate_ptr": t, **ids},
            dict(TOP_K=top_k, ACTIVATION=activation_code, BLOCK_M=config.block_m,
                 BLOCK_N=config.gate_up_block_n, BLOCK_K=config.gate_up_block_k, UPCAST_DOT=False),
        ),
        (
            tm._down_weighted_kernel,
            {"intermediate_ptr": t, "w2_ptr": t, "pair_out_ptr": t, "topk_weights_ptr": "*fp32", **ids},
            dict(BLOCK_M=config.block_m, BLOCK_N=config.down_block_n, BLOCK_K=config.down_block_k, UPCAST_DOT=False),
        ),
        (
            tm._combine_topk_kernel,
            {"pair_out_ptr": t, "pair_is_computed_ptr": "*i1", "out_ptr": t},
            dict(TOP_K=top_k, BLOCK_H=config.combine_block_h),
        ),
    ]  # fmt: skip


class Case(NamedTuple):
    """One compilation: a kernel at one specialisation."""

    label: str
    kernel: object
    pointers: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    scalars: dict = {}


def moe_cases(dtype: str, batches, activations):
    from lynx_sglang.kernels.moe.config import choose_config
    from lynx_sglang.kernels.moe.triton_kernels import ACTIVATION_CODES

    from .bench.kernels import MODEL_SHAPES

    element_sizes = {"bf16": 2, "fp16": 2, "fp32": 4}
    configs = {}
    for shape in MODEL_SHAPES:
        for batch in batches:
            config = choose_config(batch, shape.top_k, shape.experts, shape.hidden, shape.intermediate,
                                   num_sms=HOPPER_SMS, element_size=element_sizes[dtype])  # fmt: skip
            configs.setdefault((config, shape.top_k), f"{shape.name} B={batch}")
    # Distinct (config, top_k) pairs over the benchmark shapes: the compile depends on nothing else.
    for (config, top_k), example in configs.items():
        for activation in activations:
            for kernel, pointers, constexprs in kernel_cases(dtype, config, top_k, ACTIVATION_CODES[activation]):
                label = f"{dtype} {kernel.fn.__name__} {activation} k={top_k} {constexprs} ({example})"
                yield Case(label, kernel, pointers, constexprs, config.num_warps, config.num_stages)


# (rule, T, E, k, slots, with a budget): every mode, the largest shapes (T 512, E 256) and the smallest.
ROUTING_SHAPES = [
    ("lynx beta=2 mass", 256, 128, 8, 8, True), ("lynx beta=4 index", 512, 256, 8, 8, False),
    ("lynx beta=1 mass", 1, 8, 2, 2, False), ("own-top j=4", 256, 128, 8, 8, True),
    ("own-top j=2 slots=2", 64, 64, 4, 2, False), ("budget n=32", 512, 256, 8, 8, True),
    ("topn n=16", 256, 128, 8, 8, False), ("coverage", 256, 128, 8, 8, True),
    ("coverage cap", 128, 64, 6, 6, True), ("coverage any-drop", 8, 16, 2, 2, False),
    ("given keep", 256, 128, 8, 8, True), ("given", 32, 60, 4, 4, False),
]  # fmt: skip


def routing_cases(dtype: str, quick: bool):
    """Both launches of the fused routing, with the constexprs a call at each shape launches them with on
    an H100 (its launch configurations)."""
    import torch

    from lynx_sglang.kernels.routing import (BudgetRule, CoverageRule, GivenRule, LynxRule, OwnTopRule, RoutingCall,
                                             TopNRule)
    from lynx_sglang.kernels.routing.launch_config import launch_config
    from lynx_sglang.kernels.routing.triton_plan import launch_constants, mass_partial_dtype
    from lynx_sglang.kernels.routing.triton_remap import routing_decide_kernel
    from lynx_sglang.kernels.routing.triton_rows import routing_rows_kernel

    rules = {
        "lynx beta=2 mass": LynxRule(3.0, 2, True), "lynx beta=4 index": LynxRule(3.0, 4, False),
        "lynx beta=1 mass": LynxRule(0.7, 1, True), "own-top j=4": OwnTopRule(4), "own-top j=2 slots=2": OwnTopRule(2),
        "budget n=32": BudgetRule(32), "topn n=16": TopNRule(16), "coverage": CoverageRule(900_000),
        "coverage cap": CoverageRule(500_000, 200_000), "coverage any-drop": CoverageRule(500_000, 0, True),
        "given keep": GivenRule(), "given": GivenRule(),
    }  # fmt: skip
    shapes = ROUTING_SHAPES[:3] if quick else ROUTING_SHAPES
    for name, rows, experts, top_k, slots, budget in shapes:
        call = RoutingCall(
            rules[name], torch.empty(rows, experts), torch.empty(rows, top_k, dtype=torch.int32),
            torch.empty(rows, top_k), torch.tensor(rows), slots, not budget,
            budget_max_experts=torch.tensor(1) if budget else None, budget_mass_fraction=torch.tensor(1.0) if budget else None,
            given_keep=torch.empty(rows, dtype=torch.bool) if name == "given keep" else None,
        )  # fmt: skip
        config = launch_config(rows, experts, top_k, HOPPER_DEVICE)
        constants = launch_constants(call, config)
        example = f"{name}, T={rows} E={experts} k={top_k}"
        per_row = {"own_ids_ptr": "*i32", "own_values_ptr": "*fp32", "own_weights_ptr": "*i64", "row_state_ptr": "*i32",
                   "bins_ptr": "*i8", "bin_masks_ptr": "*i64", "num_real_ptr": "*i64",
                   "part_tallies_ptr": "*i32",
                   "part_mass_ptr": "*i32" if mass_partial_dtype(rows) == torch.int32 else "*i64"}  # fmt: skip
        yield Case(
            f"{dtype} routing_rows_kernel ({example})", routing_rows_kernel,
            {"logits_ptr": f"*{dtype}", "topk_ids_ptr": "*i32", **per_row},
            constants.rows, config.rows_warps, 1, {"alpha": "fp32"},
        )  # fmt: skip
        yield Case(
            f"{dtype} routing_decide_kernel ({example})", routing_decide_kernel,
            {"logits_ptr": f"*{dtype}", "topk_ids_ptr": "*i32", "topk_weights_ptr": "*fp32", **per_row,
             "budget_max_ptr": "*i64", "budget_fraction_ptr": "*fp32", "given_active_ptr": "*u8", "given_keep_ptr": "*u8",
             "scratch_ptr": "*i64", "out_ids_ptr": "*i32", "out_weights_ptr": "*fp32", "active_out_ptr": "*u8"},
            constants.decide, config.decide_warps, 1,
        )  # fmt: skip


def layer_cases(dtype: str, quick: bool):
    """The serving runtime's per-layer bookkeeping launch (bookkeeping/triton_launch.py) at the routing shapes, in its
    three uses: checks, mask and statistics after a decision (num_real a device tensor); the statistics
    of a fallen-back call (a given flag, num_real an int); the model's own routing (mask and
    statistics, every row real)."""
    from lynx_sglang.kernels.bookkeeping import triton_launch as lt

    shapes = ROUTING_SHAPES[:3] if quick else ROUTING_SHAPES
    for ids in ("i32",) if quick else ("i32", "i64"):
        for _, rows, experts, top_k, _, _ in shapes:
            block_t, scan_t, block_e, block_k, warps = lt.launch_sizes(rows, experts, top_k)
            uses = {"checks, mask, stats": (True, False, True, 2), "stats, given fallback": (False, True, False, 1),
                    "model routing: mask, stats": (False, False, True, 0)}  # fmt: skip
            for use, (check, given_fell, mask, num_real_mode) in uses.items():
                yield Case(
                    f"{dtype} _layer_kernel (T={rows} E={experts} k={top_k}, ids {ids}, {use})", lt._layer_kernel,
                    {"logits_ptr": f"*{dtype}", "original_ids_ptr": f"*{ids}", "original_weights_ptr": "*fp32",
                     "new_ids_ptr": f"*{ids}", "new_weights_ptr": "*fp32", "num_real_ptr": "*i64", "fell_back_ptr": "*u8",
                     "out_ids_ptr": f"*{ids}", "out_weights_ptr": "*fp32", "mask_ptr": "*u8", "table_row_ptr": "*fp64",
                     "step_fell_back_ptr": "*fp64", "scratch_ptr": "*i32"},
                    dict(TOP_K=top_k, CHECK=check, GIVEN_FELL=given_fell, MASK=mask, STATS=True,
                         NUM_REAL_MODE=num_real_mode, BLOCK_T=block_t, SCAN_T=scan_t, BLOCK_E=block_e, BLOCK_K=block_k),
                    warps, 1,
                )  # fmt: skip


# ---- real calls: the specialisations a launch on the device makes -----------------------------------
# Every rule (as the policies build them: lynx's defaults and another beta / tie rule, oea's own top-1,
# budget, topn, coverage with and without its cap) and a given active set with kept rows (the shared
# stages of a policy deciding in torch).
CALL_RULES = ["lynx", "lynx beta=1 index", "own-top j=1", "budget", "topn", "coverage", "coverage cap", "given keep"]


def call_grid(quick: bool):
    """(rule name, E, k, T, with a budget) over the block sizes and modes the launches can take."""
    shapes = [(64, 8, 1), (64, 1, 5), (8, 2, 1), (128, 8, 256)] if quick else [
        (experts, top_k, rows) for experts in (8, 64, 128, 256) for top_k in (1, 2, 8) for rows in (1, 5, 40, 512)
    ]  # fmt: skip
    for name in CALL_RULES[:3] if quick else CALL_RULES:
        for experts, top_k, rows in shapes:
            yield name, experts, top_k, rows, rows % 2 == 1


def routing_call(name: str, experts: int, top_k: int, rows: int, with_budget: bool, dtype, seed: int):
    """A RoutingCall as a policy's select builds it, on CPU tensors."""
    import torch

    from lynx_sglang.kernels.routing import (BudgetRule, CoverageRule, GivenRule, LynxRule, OwnTopRule, RoutingCall,
                                             TopNRule)
    from lynx_sglang.kernels.routing.rules import MASS_BITS

    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, experts, generator=generator).to(dtype)
    weights, ids = torch.softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
    ids = ids.to(torch.int64 if rows % 5 == 0 else torch.int32)  # both id dtypes models give
    kept = max(top_k, experts // 4)
    units = lambda fraction: int(fraction * (1 << MASS_BITS))  # noqa: E731
    rule = {
        "lynx": LynxRule(1.0, 4, True), "lynx beta=1 index": LynxRule(0.7, 1, False), "own-top j=1": OwnTopRule(1),
        "budget": BudgetRule(kept), "topn": TopNRule(kept), "coverage": CoverageRule(units(0.7)),
        "coverage cap": CoverageRule(units(0.5), units(0.2)), "given keep": GivenRule(),
    }[name]  # fmt: skip
    given = {}
    if name == "given keep":
        given = dict(given_active=torch.arange(experts) < kept, given_keep=torch.arange(rows) % 3 == 0)
    budget = {}
    if with_budget:
        budget = dict(budget_max_experts=torch.tensor(max(1, experts // 2)), budget_mass_fraction=torch.tensor(0.9))
    return RoutingCall(rule, logits, ids, weights, torch.tensor(rows), top_k, True, **budget, **given)


def compile_calls(specs, dtype: str) -> None:
    """Child process: each call's launches compiled for sm_90 (compile_only); prints one line per call."""
    import torch

    from lynx_sglang.kernels.bookkeeping.layout import FIELDS
    from lynx_sglang.kernels.bookkeeping.triton_launch import finalize_triton, record_triton
    from lynx_sglang.kernels.routing.triton_plan import route_triton

    from .compile_only import compile_only_for_hopper

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    with compile_only_for_hopper():
        for index, spec in specs:
            print(f"start {index}", flush=True)
            call = routing_call(*spec, dtypes[dtype], seed=index)
            result = route_triton(call)
            # The serving runtime's launch after it (checks, mask, statistics; statistics alone), same shape.
            num_real = call.num_real  # a 0-dim tensor, as SGLang passes it
            table, step = torch.zeros(len(FIELDS), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
            finalize_triton(call.logits, call.topk_ids, call.topk_weights, result.topk_ids, result.topk_weights,
                            num_real, mask=True, table_row=table, step_fell_back=step)  # fmt: skip
            record_triton(table, step, num_real, call.logits, call.topk_ids, call.topk_ids, mask=True)
            print(f"ok {index}", flush=True)


def run_call_grid(dtypes, quick: bool, workers: int) -> tuple[int, int]:
    """Every call of the grid, in child processes (a compiler crash aborts its process: that call is
    reported and a new child takes the rest). Returns (compiled calls, failed calls)."""
    import json
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    specs = [(dtype, spec) for dtype in dtypes for spec in call_grid(quick)]

    def label(index):
        dtype, (name, experts, top_k, rows, with_budget) = specs[index]
        return f"{dtype} {name}, E={experts} k={top_k} T={rows}{' budget' if with_budget else ''}"

    def run_share(indices):
        results, pending = {}, list(indices)
        while pending:
            dtype = specs[pending[0]][0]
            batch = [i for i in pending if specs[i][0] == dtype]
            payload = json.dumps([(i, specs[i][1]) for i in batch])
            proc = subprocess.run([sys.executable, "-m", __spec__.name, "--compile-calls", dtype, payload],
                                  capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})  # fmt: skip
            started = None
            for line in proc.stdout.splitlines():
                kind, _, value = line.partition(" ")
                if kind == "start":
                    started = int(value)
                elif kind == "ok":
                    results[int(value)] = None
                    started = None
            if started is not None:  # the child died compiling this call
                tail = [l for l in proc.stderr.splitlines() if "Assertion" in l or "Error" in l or "error:" in l]
                results[started] = (tail[-1] if tail else f"exit code {proc.returncode}")[:300]
            elif proc.returncode != 0 and not any(i in results for i in batch):
                raise RuntimeError(f"compile worker failed: {proc.stderr[-2000:]}")
            pending = [i for i in pending if i not in results]
        return results

    shares = [range(w, len(specs), workers) for w in range(workers)]
    failures = compiled = 0
    with ThreadPoolExecutor(workers) as pool:
        for results in pool.map(run_share, shares):
            for index, error in sorted(results.items()):
                if error is None:
                    compiled += 1
                    print(f"ok   call {label(index)}")
                else:
                    failures += 1
                    print(f"FAIL call {label(index)}: {error}")
    return compiled, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lynx_sglang.tools.hopper_compile", description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"], choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--quick", action="store_true",
                    help="SiLU only, the smallest and largest batch, three routing specialisations")
    ap.add_argument("--calls", action="store_true",
                    help="instead: real calls (route_triton as it launches, with Triton's specialisation "
                         "on alignment and divisibility), over a grid of shapes and rules")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel compile processes (--calls)")
    ap.add_argument("--compile-calls", nargs=2, metavar=("DTYPE", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compile_calls:
        import json

        compile_calls(json.loads(args.compile_calls[1]), args.compile_calls[0])
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("hopper_compile: unset TRITON_INTERPRET (the interpreter replaces the kernels)", file=sys.stderr)
        return 2

    from lynx_sglang.kernels.moe.triton_kernels import ACTIVATION_CODES

    if args.calls:
        started = time.monotonic()
        compiled, failures = run_call_grid(args.dtypes, args.quick, max(1, args.workers))
        print(f"{compiled} calls compiled for sm_90, {failures} failed, in {time.monotonic() - started:.0f} s")
        return 1 if failures else 0
    batches = (BATCHES[0], BATCHES[-1]) if args.quick else BATCHES
    activations = ["silu"] if args.quick else list(ACTIVATION_CODES)
    failures = compiled = 0
    started = time.monotonic()
    for dtype in args.dtypes:
        for case in [*moe_cases(dtype, batches, activations), *routing_cases(dtype, args.quick),
                     *layer_cases(dtype, args.quick)]:
            try:
                binary = compile_for_hopper(case.kernel, case.pointers, case.constexprs, case.num_warps,
                                            case.num_stages, case.scalars)  # fmt: skip
            except Exception as exc:  # report every failing case, not just the first
                failures += 1
                print(f"FAIL {case.label}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                continue
            shared = binary.metadata.shared
            if shared > HOPPER_MAX_SHARED_BYTES:
                failures += 1
                print(f"FAIL {case.label}: needs {shared} B of shared memory (> {HOPPER_MAX_SHARED_BYTES})")
                continue
            compiled += 1
            print(f"ok   {case.label}: shared {shared} B")
    print(f"{compiled} compiled for sm_90, {failures} failed, in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
