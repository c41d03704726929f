"""Per layer call on a CPU: the serving runtime's bookkeeping after a policy's decision, next to the decision.

    lynx-sglang bench bookkeeping [--policy lynx] [--experts 64,128] [--tokens 1,8,32,128,256] [--repeats 50]

After `Policy.select`, the runtime (`Router._finish`) checks the decision (the layer keeps the
model's routing for the step on non-finite logits in a real row, an id out of range or a non-finite
weight), picks the final routing and adds the layer's statistics (the expert kernel takes the experts
present in the final ids: no mask is built). On CUDA that is one Triton launch (kernels/layer_triton.py); on a CPU one call into
the C++ library of the routing op (kernels/layer_cpu.py), or torch ops where it cannot be built. Both
CPU ways are timed here, without and with statistics: per layer call on one thread, median wall clock
of `repeats` calls, microseconds. `select` is the policy's decision as the runtime calls it (the C++
fast path where it builds).
"""

from __future__ import annotations

import argparse

import torch

from lynx_sglang.config import LynxConfig
from lynx_sglang.policies.bench import make_batch, time_cpu, top_k_for
from lynx_sglang.scheduler.bookkeeping import choose_backend
from lynx_sglang.scheduler.runtime import LynxRuntime
from lynx_sglang.scheduler.stats import MoeLayerInfo


def runtime_for(policy: str, num_experts: int, top_k: int, stats: bool, backend: str) -> LynxRuntime:
    runtime = LynxRuntime(LynxConfig(policy=policy, stats=stats))
    runtime.bind_layers([MoeLayerInfo(0, num_experts, top_k, expert_bytes=1)], torch.device("cpu"), "bench",
                        backend=backend)
    return runtime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lynx-sglang bench bookkeeping", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="lynx")
    parser.add_argument("--experts", default="64,128", help="comma-separated expert counts")
    parser.add_argument("--tokens", default="1,8,32,128,256", help="comma-separated decode batch sizes")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        experts = [int(e) for e in args.experts.split(",")]
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        parser.error("--experts and --tokens take comma-separated integers")
    if args.repeats < 1 or min(experts + tokens) < 1:
        parser.error("--repeats, --experts and --tokens must be positive")
    torch.set_num_threads(1)
    ways = ["cpu", "torch"] if choose_backend("cpu") == "cpu" else ["torch"]  # the C++ op, then torch ops
    print(f"# per layer call, microseconds; cpu, 1 thread; torch {torch.__version__}; median of {args.repeats}")
    if len(ways) == 1:
        print("# the C++ library could not be built here (see the log): torch ops only")
    header = "".join(f" {f'{way}: checks':>18} {f'{way}: +statistics':>18}" for way in
                     (["C++", "torch"] if len(ways) == 2 else ["torch"]))  # fmt: skip
    print(f"{'policy':<10} {'E':>4} {'k':>2} {'T':>5} {'select':>9}{header}")
    for num_experts in experts:
        top_k = top_k_for(num_experts)
        runtimes = [runtime_for(args.policy, num_experts, top_k, stats, backend) for backend in ways
                    for stats in (False, True)]  # fmt: skip
        policy = runtimes[0].settings.policy_for(num_experts, top_k, True)
        for num_rows in tokens:
            logits, ids, weights = make_batch(num_rows, num_experts, top_k, "cpu", torch.float32)
            num_real = torch.tensor(num_rows)  # as SGLang passes it

            def select():
                return policy.select(logits, ids, weights, num_real=num_real, layer_id=0,
                                     budget=runtimes[0].settings.budget_for(num_experts))

            decision = select()
            cells = [time_cpu(select, args.repeats)]
            for runtime in runtimes:
                cells.append(time_cpu(lambda: runtime.router._finish(logits, ids, weights, decision.topk_ids,
                                                                      decision.topk_weights, num_real, 0, False),
                                      args.repeats))  # fmt: skip
            times = "".join(f" {cell:>18.1f}" for cell in cells[1:])
            print(f"{args.policy:<10} {num_experts:>4} {top_k:>2} {num_rows:>5} {cells[0]:>9.1f}{times}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
