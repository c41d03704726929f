#!/usr/bin/env bash
# Runs on the GPU machine (no network): installs the kit that scripts/gpu-kit.sh prepared, and this
# repository, into a temporary folder beside the machine's own torch and Triton, then runs stages of
# scripts/gpu_stages.py in order within one time limit and writes their results to OUTDIR.
#
#   bash scripts/gpu-serve.sh OUTDIR [STAGE[,STAGE...]]
#   STAGE: smoke (default), mixtral, qwen3, routers, compute, correctness, offload, reference
#   KIT=.gpu-kit        where the kit lies (default .gpu-kit)
#   STAGE_SECONDS=540   the time limit from this script's start (the install included) to the end of the
#                       last stage; what the stages finished by then stays in OUTDIR
#   PYTHON=python3      the machine's Python with its torch and Triton
#   SITE=/tmp/lynx-gpu-site  where the kit and this repository are installed (put first on PYTHONPATH)
#
# Files in OUTDIR: install.txt, <stage>.txt (everything printed), <stage>.json, <stage>-serve.json for
# bench stages, servers.log (the tail of each server's log). A stage that fails ends the run: the end of
# the server logs and the first missing name are printed.
set -uo pipefail
out=${1:?usage: scripts/gpu-serve.sh OUTDIR [STAGE[,STAGE...]]}
stages=${2:-smoke}
# The names of scripts/gpu_stages.py's STAGES (a unit test keeps them equal): a misspelt stage is refused
# before the install, not after it.
known_stages="smoke mixtral qwen3 routers compute correctness offload reference"
[ -n "${stages//,/}" ] || { echo "no stage given; stages: ${known_stages// /, }"; exit 2; }
for stage in ${stages//,/ }; do
  case " $known_stages " in
    *" $stage "*) ;;
    *) echo "unknown stage '$stage'; stages: ${known_stages// /, } (several: STAGE,STAGE)"; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
kit=${KIT:-.gpu-kit}
python=${PYTHON:-python3}
site=${SITE:-/tmp/lynx-gpu-site}
mkdir -p "$out" "$site"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
[ -f "$kit/kit.json" ] || { echo "no kit at $kit: run scripts/gpu-kit.sh $kit first (on a machine with network)"; exit 2; }

install() {
  local started=$SECONDS
  # --target, not a venv: a venv made from the machine's python3 (itself a venv) would not see its torch.
  local pip=("$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile
             --no-build-isolation --upgrade --target "$site")
  # A second call on the same warm machine keeps the kit's wheels (same kit.json and wheel files): only
  # this repository is installed again.
  local stamp
  stamp=$(cat "$kit/kit.json" <(ls -l "$kit"/wheels) | md5sum | cut -d' ' -f1)
  if [ "$(cat "$site/.kit-stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "the kit's wheels are installed in $site already"
  else
    "${pip[@]}" "$kit"/wheels/*.whl || return 1
    echo "$stamp" > "$site/.kit-stamp"
  fi
  "${pip[@]}" . || return 1
  if ! "$python" -c "import IPython.display" 2>/dev/null; then
    cp -r "$kit/stubs/IPython" "$site/"
  fi
  if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device: a rehearsal on the CPU (the CPU runtime glue is enabled for it)"
    "$python" -m lynx_sglang.cpu_runtime install || return 1
  fi
  echo "installed in $((SECONDS - started)) s"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$python" -c "import torch, triton, sglang, transformers; print('python', __import__('sys').version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| sglang', sglang.__version__, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
}

install > "$out/install.txt" 2>&1
status=$?
cat "$out/install.txt"
if [ $status -ne 0 ]; then echo "install failed"; exit 1; fi

# Servers run in sessions of their own and outlive a killed stage: none may hold the GPU when one
# starts. Only on the GPU machine, which runs nothing else: a rehearsal would stop every SGLang server
# of the machine it runs on (a test suite's among them).
if "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  pkill -f "sglang.launch_server" 2>/dev/null && sleep 5
fi

export LYNX_COMMIT=${LYNX_COMMIT:-$("$python" -c "import json; print(json.load(open('$kit/kit.json')).get('commit') or '')")}
# Run from the installed copy, not the working tree, whose lynx_sglang/ would shadow it.
repo=$PWD
out=$(realpath "$out")
cd /tmp
deadline=${STAGE_SECONDS:-540}  # bash's SECONDS counts from the script's start: a call's limit holds the install too
status=0
for stage in ${stages//,/ }; do
  left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "== no time left for stage $stage ($left s of STAGE_SECONDS)"
    status=124
    break
  fi
  timeout -s INT "$left" "$python" "$repo/scripts/gpu_stages.py" "$stage" "$out" 2>&1 | tee "$out/$stage.txt"
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    echo "== stage $stage ended with status $status$([ "$status" -eq 124 ] && echo ' (time limit)')"
    if [ -f "$out/servers.log" ]; then
      echo "== the end of the server logs"
      tail -n 60 "$out/servers.log"
    fi
    echo "== first missing name or import error"
    grep -h -m 3 -E "MissingKernelError|NotImplementedError|ModuleNotFoundError|ImportError|AttributeError|No module named" \
      "$out/servers.log" "$out/$stage.txt" 2>/dev/null || echo "(none found)"
    break
  fi
done
exit "$status"
