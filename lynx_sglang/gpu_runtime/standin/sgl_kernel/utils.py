"""sgl_kernel.utils of the stand-in."""

from lynx_sglang.gpu_runtime.standin_names import module_getattr


def is_arch_support_pdl() -> bool:
    """No programmatic dependent launch in SGLang's Triton attention: the stand-in trades its few
    microseconds for not depending on Triton's PDL support on the machine."""
    return False


__getattr__ = module_getattr(__name__)
