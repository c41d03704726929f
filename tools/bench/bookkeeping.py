"""Per layer call on a CPU: the serving runtime's bookkeeping after a policy's decision, next to the decision.

    lynx-sglang bench bookkeeping [--policy lynx] [--experts 64,128] [--tokens 1,8,32,128,256] [--repeats 50]

After `Policy.select`, the runtime checks the decision (the layer keeps the model's routing for the step
on an id out of range or a non-finite weight in a real row), picks the final routing,
builds the active-expert mask for the expert kernel and adds the layer's statistics:
`lynx_sglang.kernels.bookkeeping`, one Triton launch on CUDA, on a CPU one call into its C++ library, or
torch ops where that cannot be built. Both CPU ways are timed here, without and with statistics: per
layer call on one thread, median wall clock of `repeats` calls, microseconds. `select` is the policy's
decision (the C++ fast path where it builds).
"""

from __future__ import annotations

import argparse

import torch

from lynx_sglang.kernels.bookkeeping import bookkeeping_for, finalize_torch
from lynx_sglang.kernels.bookkeeping.layout import FIELDS
from lynx_sglang.policies import ExpertBudget, get_policy

from .batches import make_batch, top_k_for
from .flags import Parser, positive_int, positive_ints
from .timers import time_cpu


def bookkeeping_cells(finalize, decision, logits, ids, weights, num_real, repeats: int) -> list[float]:
    """(checks + final routing + mask, the same with statistics), microseconds per call."""
    table = torch.zeros(len(FIELDS), dtype=torch.float64)
    step = torch.zeros((), dtype=torch.float64)
    proposed = (logits, ids, weights, decision.topk_ids, decision.topk_weights, num_real)
    return [time_cpu(lambda: finalize(*proposed, mask=True), repeats),
            time_cpu(lambda: finalize(*proposed, mask=True, table_row=table, step_fell_back=step), repeats)]


def main(argv=None) -> int:
    parser = Parser(prog="lynx-sglang bench bookkeeping", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="lynx")
    parser.add_argument("--experts", type=positive_ints, default=[64, 128], help="comma-separated expert counts")
    parser.add_argument("--tokens", type=positive_ints, default=[1, 8, 32, 128, 256],
                        help="comma-separated decode batch sizes")
    parser.add_argument("--repeats", type=positive_int, default=50)
    args = parser.parse_args(argv)
    experts, tokens = args.experts, args.tokens
    try:
        policies = {e: get_policy(args.policy, num_experts=e, top_k=top_k_for(e)) for e in experts}
    except ValueError as error:
        parser.error(f"--policy: {error}")
    torch.set_num_threads(1)
    fastest = bookkeeping_for("cpu")
    ways = {"C++": fastest.finalize} if fastest.name == "cpu" else {}
    ways["torch"] = finalize_torch
    print(f"# per layer call, microseconds; cpu, 1 thread; torch {torch.__version__}; median of {args.repeats}")
    if fastest.name != "cpu":
        print("# the C++ library could not be built here (see the log): torch ops only")
    header = "".join(f" {f'{way}: checks+mask':>18} {f'{way}: +statistics':>18}" for way in ways)
    print(f"{'policy':<10} {'E':>4} {'k':>2} {'T':>5} {'select':>9}{header}")
    for num_experts in experts:
        top_k, policy = top_k_for(num_experts), policies[num_experts]
        budget = ExpertBudget.unlimited(num_experts, "cpu")  # what the server passes without --lynx-budget
        for num_rows in tokens:
            logits, ids, weights = make_batch(num_rows, num_experts, top_k, "cpu", torch.float32)
            num_real = torch.tensor(num_rows)  # as SGLang passes it

            def select():
                return policy.select(logits, ids, weights, num_real=num_real, layer_id=0, budget=budget)

            cells = [time_cpu(select, args.repeats)]
            for finalize in ways.values():
                cells += bookkeeping_cells(finalize, select(), logits, ids, weights, num_real, args.repeats)
            times = "".join(f" {cell:>18.1f}" for cell in cells[1:])
            print(f"{args.policy:<10} {num_experts:>4} {top_k:>2} {num_rows:>5} {cells[0]:>9.1f}{times}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
