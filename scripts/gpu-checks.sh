#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run that fits a short lease:
#   1. the kernel and policy tests on CUDA tensors (Triton compiled for the device, the Hopper
#      ahead-of-time compile check, the fused routing against the torch reference),
#   2. `bench policies`: each policy's select() under CUDA-graph replay, launches per call, and the
#      fused path's two launches timed apart (`--per-launch`),
#   3. `launches`: only the per-launch times (`bench policies --per-launch`) of the fused rules,
#   4. `sweep`: lynx's launch configurations (block sizes, warps) timed per E and T (tools/launch_sweep.py),
#   5. `profile`: lynx's two launches at E 128 under Nsight Compute (ncu), where it is installed,
#   6. `bench kernels --quick`: the active-expert MoE against the stock algorithm and grouped_mm,
#   7. the long hypothesis agreement test of every policy on CUDA, with whatever time is left.
# Most of a cold run is Triton compiling each specialisation of the kernels, so the benchmarks are
# first run once in parallel processes (one per policy / shape) to fill Triton's cache; the timed
# runs that follow compile nothing.
#
#   bash scripts/gpu-checks.sh OUTDIR [SECONDS]     # logs in OUTDIR; stops starting stages after SECONDS (default 450)
#   STAGES="tests policies" bash scripts/gpu-checks.sh OUTDIR   # only some of: tests policies launches sweep profile kernels thorough
#   TESTS="tests/kernels/test_kernels_layer.py" ...                # the tests stage runs these (default: tests/kernels tests/policies)
#   SWEEP_EXPERTS=128,64 ...                                       # the sweep's E, timed in this order (default 64,128)
#
# Files in OUTDIR: device.txt and one .txt per stage, plus sweep.jsonl (a lease
# returns at most 8 files: "tests policies sweep profile" makes 6). The profile has no per-source-line
# counters: on the H100 of run 4 ncu's source page came back without metrics (no PC sampling there).
# Needs torch with CUDA, Triton, pytest, hypothesis, pytest-xdist and pytest-timeout; not SGLang.
set -uo pipefail
out=${1:?usage: scripts/gpu-checks.sh OUTDIR [SECONDS]}
deadline=$((SECONDS + ${2:-450}))
cd "$(dirname "$0")/.."
mkdir -p "$out"
python=${PYTHON:-python3}
workers=$(( $(nproc --all) > 2 ? $(nproc --all) - 1 : 1 ))  # --all: nproc alone obeys OMP_NUM_THREADS
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
unset TRITON_INTERPRET

# A stage gets at most CAP seconds, and never more than what is left before the deadline.
budget() { local left=$((deadline - SECONDS)); echo $(( left < $1 ? (left > 0 ? left : 1) : $1 )); }
stage() { echo "== $1 ($(date -u +%T), $((deadline - SECONDS)) s left)"; }
stages=" ${STAGES:-tests policies profile kernels thorough} "
wanted() { [[ $stages == *" $1 "* ]]; }

if ! "$python" -c "import lynx_sglang.policies" 2>/dev/null; then
  "$python" -m pip install --quiet --no-deps --no-build-isolation -e . || exit 1
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$python" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
  echo "$(nproc --all) CPU cores; $workers test workers"
} 2>&1 | tee "$out/device.txt"

if wanted tests; then
stage "tests on CUDA" | tee "$out/tests.txt"
timeout -s INT "$(budget 150)" "$python" -m pytest -p no:cacheprovider -q -n "$workers" --dist load --timeout 140 \
  ${TESTS:-tests/kernels tests/policies} --ignore tests/kernels/test_kernels_sglang_bench.py \
  --deselect tests/policies/test_policy_fused.py::test_fused_matches_reference_every_policy 2>&1 | tee -a "$out/tests.txt"
fi

if wanted policies; then
stage "bench policies: compile (parallel)"
policies=$("$python" -c "from lynx_sglang.policies.registry import BUILTIN_POLICIES as p; print(' '.join(p))")
for policy in $policies; do
  timeout "$(budget 90)" "$python" -m lynx_sglang.tools.bench.policies --policies "$policy" --repeats 1 --no-launch-counts >/dev/null 2>&1 &
done
wait
stage "bench policies" | tee "$out/policies.txt"
timeout "$(budget 100)" "$python" -m lynx_sglang.tools.bench.policies 2>&1 | tee -a "$out/policies.txt"
timeout "$(budget 40)" "$python" -m lynx_sglang.tools.bench.policies --ids biased --policies lynx,oea,budget,coverage \
  --no-launch-counts 2>&1 | tee -a "$out/policies.txt"
timeout "$(budget 40)" "$python" -m lynx_sglang.tools.bench.policies --per-launch --policies lynx,oea,budget,coverage \
  2>&1 | tee -a "$out/policies.txt"
fi

if wanted launches; then
stage "bench policies --per-launch: compile (parallel)"
for policy in lynx oea budget coverage; do
  timeout "$(budget 90)" "$python" -m lynx_sglang.tools.bench.policies --per-launch --policies "$policy" --repeats 1 >/dev/null 2>&1 &
done
wait
stage "bench policies --per-launch" | tee "$out/launches.txt"
timeout "$(budget 60)" "$python" -m lynx_sglang.tools.bench.policies --per-launch --policies lynx,oea,budget,coverage \
  2>&1 | tee -a "$out/launches.txt"
fi

if wanted sweep; then
stage "sweep: lynx's launch configurations" | tee "$out/sweep.txt"
timeout "$(budget 240)" "$python" -m lynx_sglang.tools.launch_sweep --policies lynx --experts "${SWEEP_EXPERTS:-64,128}" \
  --log "$out/sweep.jsonl" 2>&1 | tee -a "$out/sweep.txt"
fi

if wanted profile; then
stage "profile: lynx's launches at E 128, T 1 and 256, under Nsight Compute" | tee "$out/profile.txt"
if command -v ncu >/dev/null; then
  # Every launch of tools/profile_launches.py (T 1, T 256, T 256 picking the other way; three pairs each).
  timeout "$(budget 120)" ncu --clock-control none --kernel-name "regex:routing_(rows|decide)_kernel" \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
    "$python" -m lynx_sglang.tools.profile_launches \
    2>&1 | tee -a "$out/profile.txt"
else
  echo "ncu is not on PATH here: no profile" | tee -a "$out/profile.txt"
fi
fi

if wanted kernels; then
stage "bench kernels: compile (parallel)"
shapes=$("$python" -c "from lynx_sglang.tools.bench.kernels import MODEL_SHAPES as s; print(' '.join(x.name for x in s))")
for shape in $shapes; do
  timeout "$(budget 60)" "$python" -m lynx_sglang.tools.bench.sglang_moe --quick --shapes "$shape" \
    --iters 1 --warmup 1 --copies 1 --copy-mib 64 >/dev/null 2>&1 &
done
wait
stage "bench kernels" | tee "$out/kernels.txt"
timeout "$(budget 100)" "$python" -m lynx_sglang.tools.bench.sglang_moe --quick 2>&1 | tee -a "$out/kernels.txt"
fi

if wanted thorough; then
stage "every policy against the reference, hypothesis batches on CUDA" | tee "$out/thorough.txt"
timeout -s INT "$(budget 600)" "$python" -m pytest -p no:cacheprovider -q -n "$workers" --dist load --timeout 300 \
  tests/policies/test_policy_fused.py -k "test_fused_matches_reference_every_policy and triton" 2>&1 | tee -a "$out/thorough.txt"
fi
stage "done"
