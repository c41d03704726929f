"""Glue that lets unmodified SGLang run on a CPU-only install. Never imported on a CUDA install.

SGLang 0.5.23 needs four things on a machine without a GPU, none of which edits its source:
1. `SGLANG_USE_CPU_ENGINE=1`, or its rotary-embedding module imports vllm.
2. A `sgl_kernel` module: several SGLang modules import `<name>_cpu` functions from it at import
   time, and no CPU build of sgl-kernel exists. `sgl_kernel_standin` provides them in plain torch.
3. The `torchvision::nms`/`qnms` op schemas, defined before torchvision first loads where its compiled
   ops do not load against this torch (PyPI's torchvision beside the CPU torch): its fake-op
   registration fails without them. A torchvision built for this torch defines them itself.
4. No-op `torch.cpu.is_current_stream_capturing` / `torch.cpu.empty_cache`, which SGLang's expert
   distribution recorder calls.

These must hold in every interpreter SGLang starts (launcher, scheduler, detokenizer), so
`python -m lynx_sglang.cpu_runtime install` writes a `.pth` file into the environment that imports
`lynx_sglang.cpu_runtime.bootstrap` at interpreter start. The bootstrap only installs an import hook;
the work happens when `torchvision`, `sgl_kernel` or `sglang` is first imported.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

PTH_NAME = "lynx_sglang_cpu_runtime.pth"
# A .pth line runs at every interpreter start; it must never fail even if lynx_sglang is removed.
PTH_LINE = (
    "import sys; exec('try:\\n import lynx_sglang.cpu_runtime.bootstrap\\nexcept ImportError:\\n pass')\n"
)


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def is_installed() -> bool:
    return pth_path().is_file()


def install() -> Path:
    path = pth_path()
    path.write_text(PTH_LINE)
    return path


def uninstall() -> None:
    pth_path().unlink(missing_ok=True)


def glue_is_active() -> bool:
    """True in a process where the CPU bootstrap ran (a CPU install), never on a CUDA install."""
    return "lynx_sglang.cpu_runtime.bootstrap" in sys.modules
