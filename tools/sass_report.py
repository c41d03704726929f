"""What the fused routing's launches compile to on an H100/H200 (sm_90), without a GPU.

    python -m lynx_sglang.tools.sass_report [--rule lynx] [--experts 128] [--top-k 8] [--tokens 1,256]
                                            [--set picks=2 parts=1]

Compiles both launches of one routing call as a real call would (`compile_only`), disassembles the
cubins with the tools Triton ships (nvdisasm, cuobjdump) and prints, per launch: registers, stack
(spills), SASS instructions, barriers and shared-memory traffic, and how many of them each function of
the routing's Triton modules (kernels/routing/triton_*.py) produced (from the cubin's line table), and
each loop's body. Launch 2 runs one program per SM with 4 warps, so
nearly every instruction's latency is exposed (Nsight Compute measured 13 cycles per issued
instruction): fewer instructions on a program's path is what makes it faster. Triton's library code
(tl.sum, tl.cumsum) counts for the function whose line came last before it. This is a static count:
code in a branch not taken counts, a loop body counts once. Timings need a GPU
(`lynx-sglang bench policies --per-launch`, `python -m lynx_sglang.tools.launch_sweep`).

Run it with the Triton the GPU machine has (3.6: `PYTHONPATH=<its wheel, unpacked>`) to see what that
GPU runs; TRITON_INTERPRET must be unset.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

from lynx_sglang import kernels

KERNELS = os.path.dirname(os.path.abspath(kernels.__file__))
# The files whose functions instructions are counted for: the routing launches and what they share.
SOURCES = [os.path.join(KERNELS, "routing", name) for name in sorted(os.listdir(os.path.join(KERNELS, "routing")))
           if name.startswith("triton_")] + [os.path.join(KERNELS, "triton_shared.py")]
_INSTRUCTION = re.compile(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LINE = re.compile(r'//## File "(.*?)", line (\d+)')
_LABEL = re.compile(r"(\.L_x_\d+):")


def compiled_launches(call, config):
    """{kernel name: cubin bytes} of the call's two launches, compiled for sm_90."""
    from triton.runtime.jit import JITFunction

    from .compile_only import compile_only_for_hopper
    from lynx_sglang.kernels.routing.triton_plan import plan_triton

    cubins = {}
    with compile_only_for_hopper():
        compile_run = JITFunction.run

        def recording_run(self, *args, **kwargs):
            kernel = compile_run(self, *args, **kwargs)
            cubins[self.fn.__name__] = kernel.asm["cubin"]
            return kernel

        JITFunction.run = recording_run
        try:
            plan = plan_triton(call, config)
            plan.rows()
            plan.decide()
        finally:
            JITFunction.run = compile_run
    return cubins


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def functions_by_line(path: str) -> dict[int, str]:
    """Line number -> the name of the function it is in."""
    names, current = {}, "<module>"
    with open(path) as source:
        for number, line in enumerate(source, 1):
            match = re.match(r"def (\w+)", line)
            if match:
                current = match.group(1)
            names[number] = current
    return names


class Report(collections.namedtuple("Report", "registers stack instructions by_function loops opcodes")):
    """registers and stack bytes per thread, SASS instructions, {function: instructions},
    [(function most of the body comes from, body instructions)], {opcode without modifiers: count}."""


def analyse(cubin: bytes, workdir: str, name: str) -> Report:
    path = os.path.join(workdir, f"{name}.cubin")
    with open(path, "wb") as out:
        out.write(cubin)
    usage = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    listing = subprocess.run([_tool("nvdisasm"), "-g", "-c", path], capture_output=True, text=True, check=True).stdout
    names = {os.path.basename(path): functions_by_line(path) for path in SOURCES}
    instructions, labels, pending, where = [], {}, None, None
    for text in listing.splitlines():
        line = _LINE.search(text)
        if line:  # Triton's library code (tl.sum, tl.cumsum: standard.py) counts for the caller seen last
            if os.path.basename(line.group(1)) in names:
                where = names[os.path.basename(line.group(1))].get(int(line.group(2)))
            continue
        label = _LABEL.match(text)
        if label:
            pending = label.group(1)
            continue
        match = _INSTRUCTION.match(text)
        if match:
            address = int(match.group(1), 16)
            instructions.append((address, match.group(2), where or "<other>"))
            if pending:
                labels[pending] = address
                pending = None
    by_function = collections.Counter(function for _, _, function in instructions)
    opcodes = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]
                                  for _, text, _ in instructions)
    loops = []
    for address, text, _ in instructions:
        target = re.search(r"BRA\b.*?(\.L_x_\d+)", text)
        if target and labels.get(target.group(1), address + 1) <= address:  # a backward branch: a loop
            body = [f for a, _, f in instructions if labels[target.group(1)] <= a <= address]
            loops.append((collections.Counter(body).most_common(1)[0][0], len(body)))
    return Report(registers, stack, len(instructions), by_function, loops, opcodes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lynx_sglang.tools.sass_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rule", default="lynx", help="one of hopper_compile.CALL_RULES (default: lynx)")
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--tokens", default="1,256", help="comma-separated batch sizes")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="LaunchConfig fields instead of launch_config's (e.g. picks=2 parts=1)")
    parser.add_argument("--top", type=int, default=8, help="functions listed per launch")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET (the interpreter replaces the kernels)")
    import torch
    import triton

    from .hopper_compile import CALL_RULES, HOPPER_DEVICE, routing_call
    from lynx_sglang.kernels.routing.launch_config import LaunchConfig, launch_config

    if args.rule not in CALL_RULES:
        parser.error(f"unknown rule {args.rule!r}; one of: {', '.join(CALL_RULES)}")
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        if field not in LaunchConfig._fields or not value.lstrip("-").isdigit():
            parser.error(f"--set {item!r}: expected FIELD=INTEGER, FIELD one of {', '.join(LaunchConfig._fields)}")
        overrides[field] = int(value)
    print(f"# Triton {triton.__version__}, compiled for sm_90; static counts (see --help)")
    with tempfile.TemporaryDirectory() as workdir:
        for tokens in [int(t) for t in args.tokens.split(",")]:
            call = routing_call(args.rule, args.experts, args.top_k, tokens, False, torch.bfloat16, seed=0)
            config = launch_config(tokens, args.experts, args.top_k, HOPPER_DEVICE)._replace(**overrides)
            print(f"\n## {args.rule}, E={args.experts} k={args.top_k} T={tokens}: {config}")
            cubins = compiled_launches(call, config)
            for launch, kernel in enumerate(("routing_rows_kernel", "routing_decide_kernel"), 1):
                report = analyse(cubins[kernel], workdir, kernel)
                print(f"launch {launch} ({kernel}): {report.instructions} instructions, {report.registers} registers, "
                      f"{report.stack} B stack")  # fmt: skip
                # Barriers and shared-memory traffic: where threads wait for each other (reductions across
                # warps, layout conversions of stored vectors).
                print(f"  barriers {report.opcodes['BAR']}, shared-memory stores {report.opcodes['STS']}, "
                      f"loads {report.opcodes['LDS']}, shuffles {report.opcodes['SHFL']}")  # fmt: skip
                listed = ", ".join(f"{f} {n}" for f, n in report.by_function.most_common(args.top))
                print(f"  by function: {listed}")
                if report.loops:
                    print("  loop bodies: " + ", ".join(f"{f} {n}" for f, n in report.loops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
