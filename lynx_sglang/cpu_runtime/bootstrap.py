"""Import hook installed at interpreter start on CPU installs (see the package docstring).

Kept cheap: nothing heavy is imported until torchvision, sgl_kernel or sglang is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_torch_library_handles: list = []  # torch.library.Library objects must stay alive


def torchvision_extension_loads(package_dir: str) -> bool:
    """Whether torchvision's compiled ops (`_C*.so` in its folder) load against this torch. A build
    made for this torch registers `torchvision::nms` itself: defining the schema before it would make
    its registration abort the process (a C++ error at load time, nothing Python can catch)."""
    import glob

    import torch

    libraries = glob.glob(os.path.join(package_dir, "_C*.so"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
    except OSError:  # undefined symbols: a wheel built for another torch (PyPI's beside a CPU torch)
        return False
    return True


def define_torchvision_op_schemas() -> None:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return  # a CPU torchvision (or an earlier call) already defined them
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    _torch_library_handles.append(lib)


def patch_torch_cpu() -> None:
    import torch

    if not hasattr(torch.cpu, "is_current_stream_capturing"):
        torch.cpu.is_current_stream_capturing = lambda: False
    if not hasattr(torch.cpu, "empty_cache"):
        torch.cpu.empty_cache = lambda: None


class _CpuRuntimeFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._prepared: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" and "torchvision" not in self._prepared:
            self._prepared.add("torchvision")
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or not spec.origin or not torchvision_extension_loads(os.path.dirname(spec.origin)):
                define_torchvision_op_schemas()
            return None  # let the normal finders import the real torchvision
        if fullname == "sglang" and "sglang" not in self._prepared:
            self._prepared.add("sglang")
            os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
            patch_torch_cpu()
            if os.environ.get("TRITON_INTERPRET") == "1":  # SGLang's own Triton kernels, interpreted, too
                from lynx_sglang.kernels import interpret

                interpret.patch_language_once_per_launch()
                interpret.reduce_marked_combines_with_numpy()
            return None
        if fullname == "sgl_kernel":
            if importlib.machinery.PathFinder.find_spec(fullname, path) is not None:
                return None  # a real sgl_kernel is installed: use it
            standin = os.path.join(os.path.dirname(__file__), "sgl_kernel_standin.py")
            return importlib.util.spec_from_file_location("sgl_kernel", standin)
        return None


def install_import_hook() -> None:
    if not any(isinstance(f, _CpuRuntimeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CpuRuntimeFinder())


install_import_hook()
