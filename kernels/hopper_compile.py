"""Compile every Triton kernel of the active-expert MoE for an NVIDIA Hopper GPU (sm_90), without one.

    python -m lynx_sglang.kernels.hopper_compile [--dtypes bf16 fp16 fp32] [--quick]

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

# Hopper (H100/H200): 227 KiB of shared memory per thread block at most.
HOPPER_MAX_SHARED_BYTES = 232_448
BATCHES = (1, 8, 32, 64, 128)


def _signature(kernel, pointer_types: dict[str, str], constexprs: dict) -> dict[str, str]:
    signature = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types[name]
        else:
            signature[name] = "i32"
    return signature


def compile_for_hopper(kernel, pointer_types: dict[str, str], constexprs: dict, num_warps: int, num_stages: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = _signature(kernel, pointer_types, constexprs)
    names = list(signature)
    source = ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}
    )
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def kernel_cases(dtype: str, config, top_k: int, activation_code: int):
    """(kernel, pointer types, constexprs) for the three launches of one MoE call."""
    from . import triton_moe as tm

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lynx_sglang.kernels.hopper_compile", description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"], choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--quick", action="store_true", help="SiLU only, and only the smallest and largest batch")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("hopper_compile: unset TRITON_INTERPRET (the interpreter replaces the kernels)", file=sys.stderr)
        return 2

    from .bench import MODEL_SHAPES
    from .triton_moe import ACTIVATION_CODES, choose_config

    batches = (BATCHES[0], BATCHES[-1]) if args.quick else BATCHES
    activations = ["silu"] if args.quick else list(ACTIVATION_CODES)
    element_sizes = {"bf16": 2, "fp16": 2, "fp32": 4}
    failures = 0
    compiled = 0
    started = time.monotonic()
    for dtype in args.dtypes:
        configs = {}
        for shape in MODEL_SHAPES:
            for batch in batches:
                config = choose_config(
                    batch, shape.top_k, shape.experts, shape.hidden, shape.intermediate,
                    element_size=element_sizes[dtype],
                )  # fmt: skip
                configs.setdefault((config, shape.top_k), f"{shape.name} B={batch}")
        # Distinct (config, top_k) pairs over the benchmark shapes: the compile depends on nothing else.
        for (config, top_k), example in configs.items():
            for activation in activations:
                for kernel, pointers, constexprs in kernel_cases(dtype, config, top_k, ACTIVATION_CODES[activation]):
                    label = f"{dtype} {kernel.fn.__name__} {activation} k={top_k} {constexprs} ({example})"
                    try:
                        binary = compile_for_hopper(kernel, pointers, constexprs, config.num_warps, config.num_stages)
                    except Exception as exc:  # report every failing case, not just the first
                        failures += 1
                        print(f"FAIL {label}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                        continue
                    shared = binary.metadata.shared
                    if shared > HOPPER_MAX_SHARED_BYTES:
                        failures += 1
                        print(f"FAIL {label}: needs {shared} B of shared memory (> {HOPPER_MAX_SHARED_BYTES})")
                        continue
                    compiled += 1
                    print(f"ok   {label}: shared {shared} B")
    print(f"{compiled} compiled for sm_90, {failures} failed, in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
