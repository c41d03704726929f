#!/usr/bin/env bash
# Prepares, on a machine with network, what a GPU machine without network needs to serve SGLang from
# this repository: scripts/gpu_kit.py says what. DIR must lie inside the repository and be git-ignored
# (.gpu-kit is) so that it travels with the working tree to the GPU machine.
#   bash scripts/gpu-kit.sh .gpu-kit                  # for the GPU machine's Python 3.12
#   KIT_PYTHON=3.11 bash scripts/gpu-kit.sh .gpu-kit  # for a rehearsal here
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" scripts/gpu_kit.py "${1:?usage: scripts/gpu-kit.sh DIR}" --python-version "${KIT_PYTHON:-3.12}"
