"""SGLang on a CUDA machine where SGLang's compiled kernels (`sgl_kernel`) cannot be imported.

sgl-kernel wheels are built against one torch release (sglang 0.5.23 pins sglang-kernel 0.4.10, built
for torch 2.14.1); on a machine with another torch, or without the wheel, SGLang's CUDA path stops at
its first `from sgl_kernel import ...`. This runtime lets unmodified SGLang serve there anyway:

- a stand-in `sgl_kernel` package (`standin/sgl_kernel/`), put first on the SGLang processes'
  PYTHONPATH. It implements the few kernels the serving path really calls (the MoE alignment in
  Triton, a handful of elementwise ops in torch) and turns every other name into a function that
  raises `MissingKernelError("sgl_kernel.<name> ...")` when called, so a gap names itself;
- SGLang settings that keep it on Triton and torch code (`SERVE_SETTINGS`, `SERVE_ENV`);
- REPLACE hooks for SGLang's JIT (nvcc-built) kernels on that path (`sglang_patches.py`), registered
  by the plugin in every SGLang process when `RUNTIME_ENV` is set.

`lynx-sglang serve` chooses it by itself on a CUDA machine where `sgl_kernel` does not import, and
says so in one log line; where sgl-kernel is installed nothing changes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

# Set in the SGLang processes' environment when the stand-in runs; the plugin reads it.
RUNTIME_ENV = "LYNX_SGLANG_GPU_RUNTIME"
STANDIN_DIR = Path(__file__).resolve().parent / "standin"


def sgl_kernel_importable(python: str = sys.executable) -> bool:
    """Whether a real `sgl_kernel` imports in `python` (a subprocess: a wheel built for another torch
    fails when its shared library loads, and that must not happen in the caller's process)."""
    if importlib.util.find_spec("sgl_kernel") is None:
        return False
    probe = subprocess.run([python, "-c", "import sgl_kernel"], capture_output=True, timeout=300)
    return probe.returncode == 0


def serve_environment(environ: dict | os._Environ = os.environ) -> dict[str, str]:
    """The variables SGLang's processes need to run on the stand-in."""
    path = environ.get("PYTHONPATH", "")
    return {
        **SERVE_ENV,
        RUNTIME_ENV: "1",
        "PYTHONPATH": str(STANDIN_DIR) + (os.pathsep + path if path else ""),
    }


# SGLang flags: each backend below runs Triton or torch code on CUDA.
# By SGLang's keyword names (`--<name>` on the command line).
SERVE_SETTINGS = {
    "attention_backend": "triton",  # Hopper's default (fa3) lives in sgl_kernel
    "moe_runner_backend": "triton",
    "sampling_backend": "pytorch",  # flashinfer is not installed there
    "cuda_graph_backend_prefill": "disabled",  # breakable prefill graphs call sgl_kernel.weak_ref_tensor
}

SERVE_ENV = {
    # Every BaseFusedOp (RMSNorm, rotary, activation, top-k) runs its forward_native.
    "SGLANG_FORCE_FUSED_OP_BACKEND": "torch",
    # sglang asserts the sgl-kernel version on CUDA; there is none to check.
    "SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK": "1",
    # The Rust radix-tree core is a compiled extension per Python version; use SGLang's Python one.
    "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python",
    "TVM_FFI_DISABLE_TORCH_C_DLPACK": "1",
    # A JIT kernel (nvcc at first use) the REPLACE hooks missed fails at once, naming its module, or
    # SGLang takes its own fallback, instead of compiling for minutes.
    "SGLANG_CRASH_ON_JIT_COMPILE": "1",
}

LOG_LINE = (
    "sgl_kernel does not import here: SGLang runs on lynx-sglang's GPU runtime (MoE alignment in Triton; "
    "RMSNorm, rotary, activations and top-k in torch; Triton attention; pytorch sampling; no prefill CUDA graphs)"
)
