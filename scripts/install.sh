#!/usr/bin/env bash
# Installs lynx-sglang into ./.venv for this machine, creating the venv if needed.
#   No GPU: the CPU path -- torch==2.13.0, sglang==0.5.23 without its dependencies, the pinned list in
#           requirements/cpu.txt under a constraint that keeps torch at 2.13.0, and the CPU runtime glue.
#           (Resolving SGLang's own pins would pull a CUDA torch and ~200 packages.)
#   GPU:    the full SGLang through the `gpu` extra.
# Re-running installs nothing when the requirement files are unchanged since the last success.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${LYNX_VENV:-.venv}
python=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then mode=gpu; else mode=cpu; fi

stamp="$venv/.lynx-sglang-installed"
wanted="$mode $(cat pyproject.toml requirements/*.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && [ -x "$venv/bin/lynx-sglang" ]; then
  exit 0
fi

echo "lynx-sglang: installing the $mode path into $venv (first run takes a minute or two)" >&2
if [ ! -x "$venv/bin/python" ]; then
  # The CPU path fills about 2.8 GB (triton 1.0, torch 0.8, sglang 0.2) and pip unpacks beside it:
  # say so up front rather than stop half-installed with pip's "No space left on device".
  needed_kib=$((3500 * 1024))
  free_kib=$(df -Pk "$(dirname "$(realpath -m "$venv")")" | awk 'NR == 2 { print $4 }')
  if [ -n "$free_kib" ] && [ "$free_kib" -lt "$needed_kib" ]; then
    echo "lynx-sglang: installing into $venv needs about 3.5 GB free on its disk; $((free_kib / 1024)) MB are" >&2
    exit 1
  fi
  "$python" -m venv "$venv"
fi
# No wheel cache: it would only add a second copy of every wheel on the same disk.
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir)

if [ "$mode" = cpu ]; then
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" --no-deps sglang==0.5.23
  # pip warns that sglang wants other versions (torch 2.14.1, ...); that is expected on this path.
  # The filter may print nothing (grep then exits 1); pipefail still reports pip's own failure.
  "${pip[@]}" -r requirements/cpu.txt -r requirements/test.txt -c requirements/constraints-cpu.txt 2>&1 \
    | { grep -v -e "^sglang .* requires" -e "dependency resolver does not currently" || true; }
  "${pip[@]}" --no-deps --no-build-isolation -e .
  "$venv/bin/python" -m lynx_sglang.cpu_runtime install >&2
else
  "${pip[@]}" -e '.[gpu]' -r requirements/test.txt
fi
echo "$wanted" > "$stamp"
