"""Test setup for lynx_sglang.kernels.

Triton decides between compiled and interpreted kernels when ``@triton.jit`` decorates a function, i.e.
when ``lynx_sglang.kernels.triton_moe`` is imported. Without CUDA we must switch the interpreter on
before that import, so this happens at the very top of the conftest, before anything else is imported.
"""

import os

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
