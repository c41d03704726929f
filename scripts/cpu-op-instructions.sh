#!/usr/bin/env bash
# Instructions per call of the C++ routing op (kernels/routing/cpu.cpp), counted by valgrind's
# callgrind: repeatable where wall-clock times on a shared CPU are not, so two versions of the op can
# be compared by a few percent. Counts the op's own code and the libm calls it makes (exp).
#
#   scripts/cpu-op-instructions.sh [POLICY] [E] [T] [router|biased]     (default: lynx 128 256 biased)
#
# The batch is `lynx-sglang bench policies`' (`make_batch`, top-8); `biased` ids are not the logits'
# top-k, as a router with a correction bias gives them. Needs valgrind and the installed .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
policy=${1:-lynx} experts=${2:-128} tokens=${3:-256} ids=${4:-biased}
calls=20
command -v valgrind >/dev/null || { echo "cpu-op-instructions: needs valgrind (Debian: apt install valgrind)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
OMP_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
  .venv/bin/python - "$policy" "$experts" "$tokens" "$ids" "$calls" >/dev/null 2>"$out/valgrind.log" <<'EOF' || { tail -20 "$out/valgrind.log" >&2; exit 1; }
import sys

import torch

from lynx_sglang.policies import get_policy
from lynx_sglang.tools.bench.batches import make_batch

name, experts, tokens, ids, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
policy = get_policy(name, num_experts=experts, top_k=8)
logits, topk_ids, weights = make_batch(tokens, experts, 8, "cpu", torch.float32, ids=ids)
for _ in range(calls):
    policy.select(logits, topk_ids, weights, torch.tensor(tokens), implementation="cpu")
EOF
# Self cost of every function in the op's library and in libm, summed, per call.
callgrind_annotate --inclusive=no --threshold=100 "$out/callgrind.out" \
  | awk -v calls="$calls" -v label="$policy E $experts T $tokens, $ids ids" '
      /routing_cpu-[0-9a-f]+\.so\]$/ { gsub(",", "", $1); op += $1 }
      /libm\.so[^ ]*\]$/ { gsub(",", "", $1); libm += $1 }
      END {
        if (op == 0) { print "cpu-op-instructions: the C++ op did not run (see the log)" > "/dev/stderr"; exit 1 }
        printf "%s: %d instructions per call (op %d, libm %d), over %d calls\n", label, (op + libm) / calls, op / calls, libm / calls, calls
      }'
