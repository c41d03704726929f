"""sgl_kernel.utils of the stand-in."""

from lynx_sglang.gpu_runtime.standin_names import module_getattr


def is_arch_support_pdl() -> bool:
    """No programmatic dependent launch in SGLang's Triton attention: the stand-in trades its few
    microseconds for not depending on Triton's PDL support on the machine. (SGLang's fused-MoE kernels
    ask their own check, sglang.kernels.jit.utils, which says yes on sm90 with Triton 3.6.)"""
    return False


__getattr__ = module_getattr(__name__)
