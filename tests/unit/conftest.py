"""Test setup for the unit tests: without CUDA, Triton kernels run in Triton's CPU interpreter.

Triton decides between compiled and interpreted kernels when ``@triton.jit`` decorates a function,
and collecting any unit test module may import SGLang's kernel modules (test_gpu_runtime_align.py
runs one), so the switch happens here, before the first module is collected. Without it
`pytest tests/unit` alone failed there, where the whole suite passed (tests/kernels/conftest.py
comes first).
"""

from lynx_sglang.kernels.interpret import interpret_without_cuda

interpret_without_cuda()
