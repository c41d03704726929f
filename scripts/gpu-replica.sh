#!/usr/bin/env bash
# Makes, on a machine with network and no GPU, a Python environment like the GPU test image's: Python
# 3.12, torch 2.11.0+cu130 (a CUDA build: about 5 GB, it runs on the CPU too), Triton 3.6.0, transformers
# 5.17 and the image's other packages that SGLang or the tests import. A rehearsal of scripts/gpu-serve.sh
# with it checks the kit on the GPU machine's Python and SGLang under its torch and Triton (docs/gpu.md).
#   bash scripts/gpu-replica.sh DIR        # DIR: a new venv, outside the repository
#   PYTHON312=python3.12                   # the Python 3.12 to make it from
set -euo pipefail
dir=${1:?usage: scripts/gpu-replica.sh DIR}
py=${PYTHON312:-python3.12}
if ! "$py" -c "" 2>/dev/null && command -v pyenv > /dev/null; then  # pyenv: installed but not enabled
  py=$(ls -d "$(pyenv root)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1 || true)
fi
py=${py:-python3.12}
"$py" -c "" 2>/dev/null || { echo "no Python 3.12 found: set PYTHON312 to one"; exit 2; }
"$py" -m venv "$dir"
# numpy 2.3: Triton 3.6's interpreter (TRITON_INTERPRET=1, the kernel tests on a CPU) fails on numpy 2.4
# and newer ("only 0-dimensional arrays can be converted to Python scalars"); compiled kernels do not care.
"$dir/bin/pip" install --quiet torch==2.11.0 triton==3.6.0 torchvision==0.26.0 transformers==5.17.0 numpy==2.3.5 \
  aiohttp httpx requests psutil pyyaml safetensors tokenizers huggingface-hub hf-xet uvloop prometheus-client \
  msgpack tqdm regex sentencepiece tiktoken einops pillow packaging filelock fsspec jinja2 networkx sympy \
  setuptools rich typer click anyio scipy pandas nvidia-ml-py cuda-bindings wheel xxhash pybind11 ninja cmake \
  matplotlib pytest pytest-xdist pytest-timeout hypothesis
"$dir/bin/python" -c "import torch, triton; print('gpu-replica:', torch.__version__, 'triton', triton.__version__)"
