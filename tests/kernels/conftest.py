"""Test setup for lynx_sglang.kernels: without CUDA, Triton kernels run in Triton's CPU interpreter.

Triton decides between compiled and interpreted kernels when ``@triton.jit`` decorates a function, so
the switch happens here, before any test module imports a kernel module.
"""

from lynx_sglang.kernels.interpret import interpret_without_cuda

interpret_without_cuda()
