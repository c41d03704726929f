"""python -m lynx_sglang.tiny_checkpoints ARCH OUT_DIR [--num-experts N] [--top-k K] [--seed S]"""

from __future__ import annotations

import argparse
import sys

from lynx_sglang.tiny_checkpoints import ARCHITECTURES, ROUTER_KINDS, RouterShapeError, build_tiny_checkpoint
from lynx_sglang.tiny_checkpoints.configs import router_shape


def parser() -> argparse.ArgumentParser:
    kinds = "; ".join(f"{arch}: {kind}" for arch, kind in ROUTER_KINDS.items())
    p = argparse.ArgumentParser(
        prog="python -m lynx_sglang.tiny_checkpoints",
        description=f"Write a random tiny MoE checkpoint (float32, 4 layers, hidden 128). Routers: {kinds}.",
    )
    p.add_argument("arch", choices=ARCHITECTURES, metavar="ARCH", help=f"one of {', '.join(ARCHITECTURES)}")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--num-experts", "--experts", type=int, default=None, metavar="N",
                   help="routed experts per MoE layer (default 8)")  # fmt: skip
    p.add_argument("--top-k", "--topk", type=int, default=None, metavar="K",
                   help="experts per token (default 2; llama4 1)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        router_shape(args.arch, args.num_experts, args.top_k)  # fail before anything is written
    except RouterShapeError as e:
        p.error(str(e))
    print(build_tiny_checkpoint(args.arch, args.out_dir, seed=args.seed, num_experts=args.num_experts,
                                top_k=args.top_k))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
