"""sgl_kernel.quantization of the stand-in: names SGLang imports that the serving path never calls."""

from lynx_sglang.gpu_runtime.standin_names import module_getattr

__getattr__ = module_getattr(__name__)
