"""`lynx-sglang` command line: serve | eval | bench | policies | train-embedded."""

from __future__ import annotations

import sys

USAGE = """usage: lynx-sglang <command> [args]

commands:
  serve            serve a MoE model through SGLang (default: the embedded model on 127.0.0.1:30000);
                   every flag that is not --lynx-* goes to SGLang unchanged
  eval             exact-match accuracy of a running server on held-out problems of the embedded task
  bench policies   time each expert-selection policy per call
  bench kernels    time the active-expert fused-MoE kernel
  policies         list the available expert-selection policies
  train-embedded   retrain the embedded model (python -m lynx_sglang.embedded.train)
"""


def _bench(argv: list[str]) -> int:
    if not argv or argv[0] not in ("policies", "kernels"):
        print("usage: lynx-sglang bench {policies|kernels} [args]", file=sys.stderr)
        return 2
    if argv[0] == "policies":
        from lynx_sglang.policies.bench import main as bench_main
    else:
        from lynx_sglang.kernels.bench import main as bench_main
    return bench_main(argv[1:]) or 0


def _policies(argv: list[str]) -> int:
    from lynx_sglang.policies import available_policies

    for name in available_policies():
        print(name)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from lynx_sglang.serve import serve

        if rest and rest[0] in ("-h", "--help"):
            print("usage: lynx-sglang serve [--model-path DIR] [--host H] [--port P] [SGLang flags...]")
            return 0
        return serve(rest)
    if command == "eval":
        from lynx_sglang.evaluate import main as eval_main

        return eval_main(rest)
    if command == "bench":
        return _bench(rest)
    if command == "policies":
        return _policies(rest)
    if command == "train-embedded":
        from lynx_sglang.embedded.train import main as train_main

        return train_main(rest)
    print(f"lynx-sglang: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
