"""Micro-benchmark: time per `select` call of every policy (one MoE layer of one decode batch).

    lynx-sglang bench policies [--device cpu|cuda] [--repeats N] [--policies a,b] [--tokens 1,8]
                               [--experts 8,64] [--ids router|biased] [--router KIND] [--compile]
                               [--no-launch-counts] [--per-launch]

CPU: wall clock per call for the torch reference ("eager") and the fast path (the C++ op): the
median of `repeats` calls, taken in rounds over every cell of the table (at least 3, and more until
they span 3 s), and the lowest of the medians reported. Other work on a shared machine only ever adds
time, in slow spells from tens of milliseconds to over a second long: three rounds of one fast-path
row take about 30 ms and often fell inside one spell. CUDA: 20 calls captured
back to back in one CUDA graph (as a decode step's graph holds every layer) and replayed, timed with
CUDA events (median of 5 batches of `repeats` replays, divided by the calls), for the fused path
(Triton) and the reference. Launches per call are counted by instrumentation (tools/launch_count.py);
without CUDA, the fused path's are counted with the Triton kernels running in Triton's interpreter.
`--per-launch` (CUDA) times the fused path's two launches apart instead, and the server's
bookkeeping launch that follows them. `--ids biased` gives the policies the top-k ids of a router
with a per-expert correction bias instead of the softmax top-k, so the CPU op cannot take them as
each row's own top-k and selects it from the logits (its slower case). `--router KIND` (sigmoid,
biased-sigmoid, biased-grouped-sigmoid) times `select(..., router=...)` on that router's own routing:
the router model's torch steps (log-choices, the model's weights) added to the policy's. Targets: lynx fast path at
most 150 us per call on one CPU core, and at most 15 us per call under graph replay on an H100/H200,
for T <= 256 and E <= 128.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lynx_sglang.kernels.interpret import interpret_without_cuda
from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.policies.registry import BUILTIN_POLICIES, get_policy, resolve_policy_class

from ..launch_count import count_launches
from .batches import ROUTER_KINDS, expert_groups, make_batch, router_for, top_k_for
from .flags import Parser, positive_int, positive_ints
from .timers import CALLS_PER_GRAPH, time_cpu, time_cuda_graph

DEFAULT_TOKENS = (1, 8, 32, 128, 256)
DEFAULT_EXPERTS = (8, 64, 128)
TARGET_CPU_US = 150.0
TARGET_GPU_US = 15.0
TARGET_SHAPES = "E <= 128, T <= 256"


# Rounds per CPU cell, the lowest median reported (see the module's docstring): at least CPU_ROUNDS,
# over the whole table, and more until they span CPU_TABLE_SECONDS. Slow spells on a shared machine
# last from tens of milliseconds to over a second, while three rounds of a fast-path row take about 30 ms.
CPU_ROUNDS = 3
CPU_TABLE_SECONDS = 3.0
clock = time.monotonic  # the rounds' clock (a test scripts it)


class Table:
    """One table of microseconds: a row per (policy, E), a column per T."""

    def __init__(self, title: str, tokens):
        self.title = title
        self.tokens = tokens
        self.cells: dict[tuple[str, int], list[float]] = {}

    def header(self) -> str:
        head = f"{'policy':<12} {'E':>4} {'k':>2} " + " ".join(f"{'T=' + str(t):>9}" for t in self.tokens)
        return f"\n## {self.title}\n{head}\n{'-' * len(head)}"

    def row(self, name: str, num_experts: int, values: list[float]) -> str:
        self.cells[name, num_experts] = values
        return f"{name:<12} {num_experts:>4} {top_k_for(num_experts):>2} " + " ".join(f"{v:>9.1f}" for v in values)

    def worst(self, name: str, max_experts: int, max_tokens: int) -> float | None:
        """The largest time among the cells at those shapes; NaN when one of them failed."""
        values = [v for (policy, experts), row in self.cells.items() if policy == name and experts <= max_experts
                  for t, v in zip(self.tokens, row) if t <= max_tokens]  # fmt: skip
        if not values:
            return None
        return math.nan if any(math.isnan(v) for v in values) else max(values)


def parse_args(argv=None):
    parser = Parser(prog="lynx-sglang bench policies", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed calls per cell (default 50 on CPU; on CUDA 10 graph replays of 20 calls, five times)")
    parser.add_argument("--policies", default=",".join(BUILTIN_POLICIES),
                        help="comma-separated policy names (default: all built-ins)")
    parser.add_argument("--tokens", type=positive_ints, default=list(DEFAULT_TOKENS), help="comma-separated decode batch sizes")
    parser.add_argument("--experts", type=positive_ints, default=list(DEFAULT_EXPERTS), help="comma-separated expert counts")
    parser.add_argument("--ids", choices=["router", "biased"], default="router",
                        help="the model's top-k ids: its softmax top-k (default), or a biased router's")
    parser.add_argument("--router", choices=ROUTER_KINDS, default="softmax",
                        help="the router kind (policies/router.py): plain softmax (default) or a sigmoid family one")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(select, fullgraph=True) (inductor) of the torch reference")
    parser.add_argument("--no-launch-counts", action="store_true", help="skip counting launches per call")
    parser.add_argument("--per-launch", action="store_true",
                        help="only time the fused path's two Triton launches apart, and the server's bookkeeping launch, "
                             "each under graph replay (CUDA)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.per_launch and args.device != "cuda":
        parser.error("--per-launch times the Triton launches on a GPU: it needs a CUDA device")
    args.repeats = args.repeats or (10 if args.device == "cuda" else 50)
    args.policies = policy_names(parser, args.policies)
    if "grouped" in args.router:
        for num_experts in args.experts:
            try:
                expert_groups(num_experts, top_k_for(num_experts))
            except ValueError as error:
                parser.error(f"--router {args.router}: {error}")
    return args


def policy_names(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """--policies as names the registry resolves, each once: an empty table or a row per unknown name
    would pass for a measurement."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        parser.error(f"--policies: {text!r} lists no policy")
    if len(set(names)) != len(names):
        parser.error(f"--policies: {text!r} lists a policy twice")
    for name in names:
        try:
            resolve_policy_class(name)
        except ValueError as error:
            parser.error(f"--policies: {error}")
    return names


def policies_of(args, device=None):
    """(name, E, policy, its select with the --router model bound) for every cell row; names a policy
    cannot take at that shape are reported."""
    for name in args.policies:
        for num_experts in args.experts:
            try:
                policy = get_policy(name, num_experts=num_experts, top_k=top_k_for(num_experts))
            except ValueError as error:
                print(f"{name:<12} {num_experts:>4}  skipped: {error}")
                continue
            router = router_for(args.router, num_experts, device or torch.device("cpu"))
            yield name, num_experts, policy, (policy.select if router is None else
                                              functools.partial(policy.select, router=router))


def batch_of(args, num_rows, num_experts, device, dtype):
    """The cell's (logits, ids, weights) under --ids and --router."""
    router = router_for(args.router, num_experts, device)
    return make_batch(num_rows, num_experts, top_k_for(num_experts), device, dtype, ids=args.ids, router=router)


@dataclass
class _Row:
    name: str
    num_experts: int
    select: Callable
    cells: list  # (num_rows, batch)
    values: list = field(init=False)  # each cell's lowest median so far
    failures: list = field(default_factory=list)

    def __post_init__(self):
        self.values = [math.inf] * len(self.cells)


def _time_rows(rows: list[_Row], args, device, timer, implementation: str) -> None:
    """Rounds over every cell of `rows`, each cell keeping its lowest median: one round on CUDA (the timer
    takes its own median of five), on CPU at least CPU_ROUNDS and more until they span CPU_TABLE_SECONDS."""
    rounds = 1 if device.type == "cuda" else CPU_ROUNDS
    started, done = clock(), 0
    while done < rounds or (device.type == "cpu" and clock() - started < CPU_TABLE_SECONDS):
        done += 1
        for row in rows:
            for i, (num_rows, batch) in enumerate(row.cells):
                if math.isnan(row.values[i]):
                    continue
                try:
                    value = timer(lambda: row.select(*batch, implementation=implementation), args.repeats)  # noqa: B023
                    row.values[i] = min(row.values[i], value)
                except Exception as error:  # noqa: BLE001 - one failing cell (a capture refused, say) must not hide the rest
                    row.values[i] = math.nan
                    row.failures.append(f"#   {row.name} E={row.num_experts} T={num_rows} failed: "
                                        f"{type(error).__name__}: {' '.join(str(error).split())[:300]}")  # fmt: skip


def run_table(table: Table, args, device, dtype, timer, implementation: str, compiled: bool = False) -> None:
    """On CPU the rounds go over the whole table, so that a cell's rounds lie seconds apart; on CUDA, and
    for torch.compile (each row resets dynamo), row by row, each row printed as it is done."""
    print(table.header(), flush=True)
    whole_table = device.type == "cpu" and not compiled
    rows = []
    for name, num_experts, _, select in policies_of(args, device):
        if compiled:
            torch._dynamo.reset()
            select = torch.compile(select, fullgraph=True)
        cells = []
        for num_rows in args.tokens:
            logits, ids, weights = batch_of(args, num_rows, num_experts, device, dtype)
            num_real = torch.tensor(num_rows, device=device)
            cells.append((num_rows, (logits, ids, weights, num_real)))
        rows.append(_Row(name, num_experts, select, cells))
        if not whole_table:
            _time_rows(rows[-1:], args, device, timer, implementation)
            _print_rows(table, rows[-1:])
    if whole_table:
        _time_rows(rows, args, device, timer, implementation)
        _print_rows(table, rows)


def _print_rows(table: Table, rows: list[_Row]) -> None:
    for row in rows:
        print(table.row(row.name, row.num_experts, row.values), flush=True)
        for line in row.failures:
            print(line, flush=True)


def launch_counts(args, device, dtype, fused: str) -> None:
    """Launches per call of the fused path and of the torch reference, at the smallest and largest T."""
    where = "on the device" if device.type == "cuda" else "Triton kernels run in Triton's interpreter"
    print(f"\n## launches per layer call (counted: Triton launches + torch ops that launch a CUDA kernel; {where})")
    print(f"{'policy':<12} {'E':>4} {'k':>2} {'fused (triton + torch)':>24} {'torch reference':>16}")
    sizes = sorted({min(args.tokens), max(args.tokens)})
    for name, num_experts, _, select in policies_of(args, device):
        fused_counts, reference_counts = [], []
        for num_rows in sizes:
            logits, ids, weights = batch_of(args, num_rows, num_experts, device, dtype)
            num_real = torch.tensor(num_rows, device=device)
            try:
                counter = count_launches(select, logits, ids, weights, num_real, implementation=fused)
                fused_counts.append(f"{counter.triton} + {counter.torch_ops}")
                reference = count_launches(select, logits, ids, weights, num_real, implementation="torch")
                reference_counts.append(str(reference.torch_ops))
            except Exception as error:  # noqa: BLE001 - report it, go on with the other policies
                fused_counts.append("failed")
                reference_counts.append("-")
                print(f"#   {name} E={num_experts} T={num_rows}: {type(error).__name__}: {str(error)[:300]}")
        print(f"{name:<12} {num_experts:>4} {top_k_for(num_experts):>2} {' / '.join(fused_counts):>24} "
              f"{' / '.join(reference_counts):>16}", flush=True)  # fmt: skip
    print(f"(each cell: T={' / T='.join(map(str, sizes))})")


def per_launch_table(args, device, dtype, timer) -> None:
    """Launch 1 (rows: own top-k, bins, partial sums) and launch 2 (batch decision, remap) of each
    fused rule, timed apart: which one to make faster. Launch 2 is replayed on launch 1's output."""
    from lynx_sglang.kernels.routing import GivenRule, fused_supports
    from lynx_sglang.kernels.routing.triton_plan import plan_triton

    print("\n## fused path per launch: launch 1 (rows) / launch 2 (decision, remap), us per call")
    head = f"{'policy':<12} {'E':>4} {'k':>2} " + " ".join(f"{'T=' + str(t):>17}" for t in args.tokens)
    print(f"{head}\n{'-' * len(head)}")
    for name, num_experts, policy, _ in policies_of(args, device):
        cells, failures = [], []
        for num_rows in args.tokens:
            logits, ids, weights = batch_of(args, num_rows, num_experts, device, dtype)
            call = policy.fused_call(logits, ids, weights, torch.tensor(num_rows, device=device))
            if isinstance(call.rule, GivenRule) or not fused_supports(call):
                cells.append("-")  # decided in torch: its time is not the launches'
                continue
            try:
                plan = plan_triton(call)
                plan.rows()
                cells.append(f"{timer(plan.rows, args.repeats):.1f} / {timer(plan.decide, args.repeats):.1f}")
            except Exception as error:  # noqa: BLE001 - report the cell, go on
                cells.append("failed")
                failures.append(f"#   {name} E={num_experts} T={num_rows} failed: {type(error).__name__}: "
                                f"{' '.join(str(error).split())[:300]}")  # fmt: skip
        print(f"{name:<12} {num_experts:>4} {top_k_for(num_experts):>2} " + " ".join(f"{c:>17}" for c in cells),
              flush=True)  # fmt: skip
        for line in failures:
            print(line, flush=True)


def layer_launch_table(args, device, dtype, timer) -> None:
    """The server's bookkeeping launch after a decision (kernels/bookkeeping/triton_launch.py: fallback checks,
    final routing, active mask, statistics), per E and T: what a pruned layer call adds to `select`."""
    from lynx_sglang.kernels.bookkeeping.layout import FIELDS
    from lynx_sglang.kernels.bookkeeping.triton_launch import finalize_triton

    print("\n## the server's bookkeeping launch per layer call (checks, mask, statistics), us per call")
    head = f"{'':<12} {'E':>4} {'k':>2} " + " ".join(f"{'T=' + str(t):>9}" for t in args.tokens)
    print(f"{head}\n{'-' * len(head)}")
    for num_experts in args.experts:
        top_k = top_k_for(num_experts)
        values = []
        for num_rows in args.tokens:
            logits, ids, weights = make_batch(num_rows, num_experts, top_k, device, dtype, ids=args.ids)
            num_real = torch.tensor(num_rows, device=device)  # as SGLang passes it
            table = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)
            step = torch.zeros((), dtype=torch.float64, device=device)
            proposed = ids.flip(1)  # the same experts in another order: a proposal the checks accept
            values.append(timer(lambda: finalize_triton(logits, ids, weights, proposed, weights, num_real, mask=True,
                                                        table_row=table, step_fell_back=step), args.repeats))  # fmt: skip
        print(f"{'layer':<12} {num_experts:>4} {top_k:>2} " + " ".join(f"{v:>9.1f}" for v in values), flush=True)


def target_line(label: str, table: Table, target: float) -> str:
    worst = table.worst("lynx", 128, 256)
    if worst is None:
        return f"# target {label}: lynx not measured at {TARGET_SHAPES}"
    if math.isnan(worst):
        return f"# target {label}: lynx FAILED in a cell at {TARGET_SHAPES} (see above)"
    verdict = "met" if worst <= target else "MISSED"
    return f"# target {label}: lynx, worst cell at {TARGET_SHAPES}: {worst:.1f} us (target {target:.0f} us): {verdict}"


def main(argv=None) -> int:
    args = parse_args(argv)
    on_gpu = args.device == "cuda"
    if not on_gpu:
        interpret_without_cuda()  # launch counts of the Triton path without a GPU
    device = torch.device(args.device)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    where = torch.cuda.get_device_name() if on_gpu else f"cpu, {torch.get_num_threads()} thread(s)"
    mode = (f"CUDA graph replay ({CALLS_PER_GRAPH} calls per graph), CUDA events" if on_gpu
            else f"wall clock, lowest median of rounds over the table's cells (at least {CPU_ROUNDS}, "
                  f"over at least {CPU_TABLE_SECONDS:g} s of the table)")
    print(f"# policy select() time per layer call, microseconds; {where}; torch {torch.__version__}; {mode}; "
          f"{args.repeats} repeats; logits {str(dtype).replace('torch.', '')}; all rows real (num_real a 0-dim tensor); "
          f"model ids: {'softmax top-k' if args.ids == 'router' else 'a biased router (not the logits top-k)'}; "
          f"router model: {args.router}")
    timer = time_cuda_graph if on_gpu else time_cpu
    fast = "triton" if on_gpu else "cpu"
    if args.per_launch:
        per_launch_table(args, device, dtype, timer)
        layer_launch_table(args, device, dtype, timer)
        return 0
    counting = not args.no_launch_counts and fused_available("triton")
    if not on_gpu:
        print("# CUDA: no CUDA device here, so no graph-replay times"
              + ("; launch counts below use Triton's interpreter" if counting else ""))
    eager = Table("torch reference" + (" (CUDA graph replay)" if on_gpu else " (CPU eager)"), args.tokens)
    run_table(eager, args, device, dtype, timer, "torch")
    fused = Table("fused path" + (": Triton, CUDA graph replay" if on_gpu else ": CPU fast path (C++ op)"), args.tokens)
    if fused_available(fast):
        run_table(fused, args, device, dtype, timer, fast)
        print(target_line("CUDA graph replay" if on_gpu else "CPU fast path, one core", fused,
                          TARGET_GPU_US if on_gpu else TARGET_CPU_US))
    else:
        print(f"\n## {fused.title}: not available here (see the log); policies run the torch reference")
    if args.compile:
        run_table(Table("torch.compile (inductor) of the torch reference", args.tokens), args, device, dtype, timer,
                  "torch", compiled=True)  # fmt: skip
    if counting:
        launch_counts(args, device, dtype, "triton")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
