"""Benchmark of the active-expert fused MoE: time, active-weight bytes, GB/s, fraction of copy bandwidth.

    python -m lynx_sglang.tools.bench.kernels            # GPU: model shapes x batches x active fractions
    python -m lynx_sglang.tools.bench.kernels --quick    # GPU: fewer batches / fractions / iterations
    python -m lynx_sglang.tools.bench.kernels --cpu      # CPU: one memory-bound shape, torch path

For every (shape, batch B, active fraction f) the benchmark builds the routing a policy would hand over
after its remap: round(f * E) active experts, and topk_ids drawn from consecutive random permutations
of the active list, so every active expert gets tokens whenever B*k allows it. "experts" in the table
is the number of experts that actually have tokens (at B=1 that is at most k, whatever f is), and the
active bytes are their w13 + w2 bytes: the bytes any correct implementation must stream.

Timing: median over many calls. On a GPU each call is replayed from a CUDA graph (as SGLang's decode
runs it; this also proves the op is capturable) between CUDA events; on a CPU it is timed with
perf_counter. Several copies of the weights are rotated so that the caches (GPU L2, CPU L3) do not
flatter the figures. The copy bandwidth is measured in the same run (``dst.copy_(src)`` of 1 GiB,
GB/s = 2 * bytes / time).

Compared implementations, at the same active set (the same topk_ids), each named in the output:
* ``stock``: ``lynx_sglang.kernels.moe.stock``, a re-implementation of SGLang's Triton fused-MoE algorithm
  (align over all E
  experts, then the stock block kernel); GPU or ``--triton-on-cpu`` only;
* ``grouped_mm``: ``torch._grouped_mm`` over tokens sorted by expert, where available;
* whatever the caller adds: ``sglang_moe.py`` (``lynx-sglang bench kernels``) adds SGLang's own fused
  MoE; this module never imports SGLang.
Ratios are "other time / our time": above 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lynx_sglang.kernels import fused_moe_active

from .flags import Parser, non_negative_int, percentage, positive_int
from .timers import Timer, copy_bandwidth


@dataclass(frozen=True)
class MoeShape:
    name: str
    hidden: int
    intermediate: int
    experts: int
    top_k: int


MODEL_SHAPES = [
    MoeShape("mixtral-8x7b", 4096, 14336, 8, 2),
    MoeShape("qwen3-30b-a3b", 2048, 768, 128, 8),
    MoeShape("deepseek-v2-lite", 2048, 1408, 64, 6),
    MoeShape("olmoe-1b-7b", 2048, 1024, 64, 8),
]
CPU_SHAPE = MoeShape("cpu-memory-bound", 1024, 3584, 8, 2)
# The embedded model's experts: so small that the torch calls per expert, not the bytes, are the cost.
CPU_SHAPES = [CPU_SHAPE, MoeShape("embedded", 128, 256, 8, 2)]
TINY_SHAPE = MoeShape("tiny", 32, 32, 8, 2)  # smoke tests only

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COMPARISONS = ("stock", "grouped_mm")
PROG = "lynx-sglang bench kernels"  # `python -m` of this module names itself instead (no SGLang comparison then)


def make_routing(num_tokens: int, shape: MoeShape, num_active: int, device, seed: int = 0):
    """topk_ids over ``num_active`` random experts (each covered when B*k allows), weights, mask. A
    token's k experts are distinct, as a router's are; with fewer active experts than k, the slots left
    over repeat its first expert with weight 0, as the policies' remap fills them (policies/remap.py;
    SGLang's native MoE, the CPU comparison, cannot take a row naming one expert twice: its cell fails).
    (Slices of back-to-back permutations gave a token one expert twice at a seam: routing no model
    makes, on which SGLang's native MoE failed.)"""
    gen = torch.Generator().manual_seed(seed)
    active = torch.randperm(shape.experts, generator=gen)[:num_active]
    order = active[torch.randperm(num_active, generator=gen)]
    used = min(shape.top_k, num_active)
    # token t takes `used` consecutive experts of the cycle from t * used: distinct, the cycle covered
    slots = (torch.arange(num_tokens).unsqueeze(1) * used + torch.arange(used)) % num_active
    topk_ids = order[slots]
    topk_weights = torch.rand(num_tokens, used, generator=gen) + 0.1
    topk_weights = topk_weights / topk_weights.sum(dim=1, keepdim=True)
    if used < shape.top_k:
        padding = shape.top_k - used
        topk_ids = torch.cat([topk_ids, topk_ids[:, :1].expand(-1, padding)], dim=1)
        topk_weights = torch.cat([topk_weights, torch.zeros(num_tokens, padding)], dim=1)
    topk_ids = topk_ids.to(torch.int32)
    active_mask = torch.zeros(shape.experts, dtype=torch.bool)
    active_mask[active] = True
    computed = int(torch.unique(topk_ids).numel())
    return topk_ids.to(device), topk_weights.to(device), active_mask.to(device), computed


def expert_bytes(shape: MoeShape, dtype: torch.dtype) -> int:
    return 3 * shape.hidden * shape.intermediate * torch.empty((), dtype=dtype).element_size()


def grouped_mm_moe(hidden, w13, w2, topk_ids, topk_weights):
    """MoE with torch._grouped_mm over tokens sorted by expert (graph safe: no host sync)."""
    num_tokens, top_k = topk_ids.shape
    num_experts = w13.shape[0]
    intermediate = w13.shape[1] // 2
    flat_ids = topk_ids.reshape(-1).long()
    order = torch.argsort(flat_ids, stable=True)
    tokens = order // top_k
    counts = torch.zeros(num_experts, dtype=torch.int32, device=hidden.device)
    counts.scatter_add_(0, flat_ids, torch.ones_like(flat_ids, dtype=torch.int32))
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    x = hidden.index_select(0, tokens)
    gate_up = torch._grouped_mm(x, w13.transpose(1, 2), offs=offsets)
    h = (F.silu(gate_up[:, :intermediate].float()) * gate_up[:, intermediate:].float()).to(hidden.dtype)
    y = torch._grouped_mm(h, w2.transpose(1, 2), offs=offsets)
    out = torch.zeros(num_tokens, w2.shape[1], dtype=torch.float32, device=hidden.device)
    out.index_add_(0, tokens, y.float() * topk_weights.reshape(-1)[order, None].float())
    return out.to(hidden.dtype)


Implementation = Callable  # fn(hidden, w13, w2, topk_ids, topk_weights, active_mask) -> [T, H]


def build_implementations(device: torch.device, args) -> dict[str, tuple[str, Implementation]]:
    """name -> (what runs, fn) for this device."""
    impls: dict[str, tuple[str, Implementation]] = {}
    if device.type == "cuda" or args.triton_on_cpu:
        from lynx_sglang.kernels.moe.stock import fused_moe_stock

        impls["ours"] = ("lynx_sglang.kernels.fused_moe_active, implementation='triton' (Triton)",
                         lambda h, w13, w2, ids, tw, mask: fused_moe_active(h, w13, w2, ids, tw, mask,
                                                                            implementation="triton"))
        if "stock" in args.compare:
            impls["stock"] = ("lynx_sglang.kernels.moe.stock.fused_moe_stock (re-implementation of SGLang's algorithm)",
                              lambda h, w13, w2, ids, tw, mask: fused_moe_stock(h, w13, w2, ids, tw))
    else:
        impls["ours"] = ("lynx_sglang.kernels.fused_moe_active (CPU torch path)",
                         lambda h, w13, w2, ids, tw, mask: fused_moe_active(h, w13, w2, ids, tw, mask))
        if "stock" in args.compare:
            print("# stock: not run: it is Triton, for a GPU (or --triton-on-cpu under TRITON_INTERPRET=1)")
    if "grouped_mm" in args.compare and not hasattr(torch, "_grouped_mm"):
        print(f"# grouped_mm: not run: torch {torch.__version__} has no torch._grouped_mm")
    elif "grouped_mm" in args.compare:
        impls["grouped_mm"] = ("torch._grouped_mm over tokens sorted by expert",
                               lambda h, w13, w2, ids, tw, mask: grouped_mm_moe(h, w13, w2, ids, tw))
    return impls


def run(args, extra_implementations: Callable | None = None) -> list[dict]:
    """The table. extra_implementations(device) -> {name: (what runs, fn)} adds comparisons."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    if args.cpu:
        shapes = [s for s in CPU_SHAPES if s.name in (args.shapes or [CPU_SHAPE.name])]
    elif args.tiny:
        shapes = [TINY_SHAPE]
    else:
        shapes = [s for s in MODEL_SHAPES if not args.shapes or s.name in args.shapes]
    timer = Timer(device, not args.no_graphs, args.warmup, args.iters)
    copy_gbs = copy_bandwidth(device, args.copy_mib << 20)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# device: {device_name}; dtype {args.dtype}; copy bandwidth {copy_gbs:.1f} GB/s "
          f"({args.copy_mib} MiB dst.copy_(src), 2*bytes/time); {args.copies} weight copies rotated; "
          f"median of {args.iters} calls{'' if device.type != 'cuda' or args.no_graphs else ', CUDA-graph replay'}")  # fmt: skip
    described = build_implementations(device, args)
    if extra_implementations is not None:
        described.update(extra_implementations(device))
    for name, (what, _) in described.items():
        print(f"# {name} = {what}")
    impls = {name: fn for name, (_, fn) in described.items()}
    others = [name for name in impls if name != "ours"]

    # each row's time over ours at the highest active % given (100 unless --fractions leaves it out)
    header = ["shape", "B", "active", "experts", "MB", "ours_us", "GB/s", "copy%", f"t/t{max(args.fractions)}"]
    header += [f"x_{name}" for name in others]
    print(" | ".join(header))
    rows = []
    for shape in shapes:
        weights = []
        for _ in range(args.copies):
            w13 = torch.randn(shape.experts, 2 * shape.intermediate, shape.hidden, device=device, dtype=dtype)
            w2 = torch.randn(shape.experts, shape.hidden, shape.intermediate, device=device, dtype=dtype)
            weights.append((w13.mul_(shape.hidden**-0.5), w2.mul_(shape.intermediate**-0.5)))
        for batch in dict.fromkeys(args.batches):  # in the order given, each once
            hidden = torch.randn(batch, shape.hidden, device=device, dtype=dtype)
            fractions = sorted(set(args.fractions), reverse=True)
            cases, computed_experts = {}, {}
            for fraction in fractions:
                num_active = max(1, round(fraction / 100 * shape.experts))
                ids, tw, mask, computed_experts[fraction] = make_routing(batch, shape, num_active, device, seed=batch)
                tw = tw.to(dtype)
                for name, fn in impls.items():
                    cases[(fraction, name)] = [
                        (lambda fn=fn, w13=w13, w2=w2, ids=ids, tw=tw, mask=mask: fn(hidden, w13, w2, ids, tw, mask))
                        for w13, w2 in weights
                    ]
            times = timer.median_seconds(cases)
            time_at_full = times[(fractions[0], "ours")]
            for fraction in fractions:
                computed = computed_experts[fraction]
                active_bytes = computed * expert_bytes(shape, dtype)
                ours = times[(fraction, "ours")]
                gbs = active_bytes / ours / 1e9
                row = {
                    "shape": shape.name, "B": batch, "active_pct": fraction, "experts": computed,
                    "active_mb": active_bytes / 1e6, "ours_us": ours * 1e6, "gbs": gbs,
                    "copy_frac": gbs / copy_gbs, "rel_to_full": ours / time_at_full,
                }  # fmt: skip
                row.update({f"x_{name}": times[(fraction, name)] / ours for name in others})
                rows.append(row)
                cells = [shape.name, str(batch), f"{fraction}%", str(computed), f"{row['active_mb']:.1f}",
                         f"{row['ours_us']:.1f}", f"{gbs:.1f}", f"{100 * row['copy_frac']:.0f}%",
                         f"{row['rel_to_full']:.2f}"]  # fmt: skip
                cells += [f"{row[f'x_{name}']:.2f}" for name in others]
                print(" | ".join(cells), flush=True)
        del weights
    copy_after = copy_bandwidth(device, args.copy_mib << 20)
    print(f"# copy bandwidth again after the runs: {copy_after:.1f} GB/s (copy% above uses the first, "
          f"{copy_gbs:.1f} GB/s)")
    return rows


def parse_args(argv=None, prog: str = PROG):
    parser = Parser(prog=prog, description=__doc__.split("\n")[0])
    modes = parser.add_mutually_exclusive_group()  # each picks the shapes: together one would be ignored
    modes.add_argument("--cpu", action="store_true", help="CPU mode: one memory-bound shape (E 8, H 1024, I 3584) on the torch path")
    modes.add_argument("--tiny", action="store_true",
                       help="only a tiny shape (H 32, I 32, E 8), on the CPU unless --device says otherwise (smoke tests)")
    parser.add_argument("--quick", action="store_true", help="fewer batches, fractions and iterations")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available; cpu with --cpu or --tiny)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--shapes", nargs="+", default=None,
                        help=f"subset of {[s.name for s in MODEL_SHAPES]} (with --cpu: of {[s.name for s in CPU_SHAPES]})")
    parser.add_argument("--batches", type=positive_int, nargs="+", default=None, help="decode batch sizes")
    parser.add_argument("--fractions", type=percentage, nargs="+", default=None, help="active percentages, 1 to 100")
    parser.add_argument("--iters", type=positive_int, default=None, help="timed calls per case")
    parser.add_argument("--warmup", type=non_negative_int, default=None)
    parser.add_argument("--copies", type=positive_int, default=None, help="weight copies rotated (beat the caches)")
    parser.add_argument("--copy-mib", type=positive_int, default=1024, help="size of the bandwidth copy")
    parser.add_argument("--compare", nargs="*", choices=COMPARISONS, default=list(COMPARISONS),
                        help="stock, grouped_mm (none: give --compare alone)")
    parser.add_argument("--no-graphs", action="store_true", help="time eager launches instead of graph replays")
    parser.add_argument("--triton-on-cpu", action="store_true",
                        help="run the Triton impls on CPU (in Triton's interpreter: needs TRITON_INTERPRET=1 set "
                             "before the command starts; tests)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    on_gpu = args.device.startswith("cuda")
    if args.batches is None:
        args.batches = [4, 16] if args.cpu else ([1, 64] if args.quick else [1, 8, 32, 64, 128])
    if args.fractions is None:
        args.fractions = [100, 50] if args.quick else [100, 75, 50, 25]
    if args.iters is None:
        args.iters = (20 if args.quick else 100) if on_gpu else (5 if args.quick else 20)
    if args.warmup is None:
        args.warmup = 5 if on_gpu else 2
    if args.copies is None:
        # GPU: 3 copies of each shape's weights (>= 3x L2 even at B=1); CPU: 4 copies of the CPU shape
        # (176 MB each in bf16) so the 260 MB L3 of the machine this was written on cannot hold them.
        args.copies = 3 if on_gpu else 4
    return args


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """Refuse, before any work, what would end in a traceback or a table of nan: one line each."""
    if args.tiny and args.shapes:
        parser.error("--shapes: --tiny runs the tiny shape only")
    known = [s.name for s in (CPU_SHAPES if args.cpu else MODEL_SHAPES)]
    if unknown := [name for name in args.shapes or [] if name not in known]:
        parser.error(f"--shapes: {', '.join(unknown)} not among {', '.join(known)}")
    if args.device is None:
        args.device = "cpu" if (args.cpu or args.tiny or not torch.cuda.is_available()) else "cuda"
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        parser.error(f"--device: {args.device!r} is not cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    if device.type == "cpu" and not (args.cpu or args.tiny):
        why = "--device cpu" if torch.cuda.is_available() else "no CUDA device is available"
        parser.error(f"the model shapes need a GPU ({why}): use --cpu for the CPU shapes, or --tiny")
    if args.triton_on_cpu and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads the variable when the kernels are first imported, before these flags are parsed.
        parser.error("--triton-on-cpu runs the Triton kernels in Triton's interpreter, which must be on from the "
                     f"start: run it as `TRITON_INTERPRET=1 {parser.prog} ... --triton-on-cpu`")


def main(argv=None, extra_implementations: Callable | None = None, prog: str = PROG) -> int:
    run(parse_args(argv, prog), extra_implementations)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m lynx_sglang.tools.bench.kernels"))
