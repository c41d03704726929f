"""The GPU runtime's stand-in `sgl_kernel` against the SGLang that is installed: every name SGLang
imports from it is implemented, stubbed by name or left out on purpose, and every REPLACE target the
runtime registers still exists (SGLang's HookRegistry only logs a target it cannot find)."""

import argparse
import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lynx_sglang import gpu_runtime
from lynx_sglang.gpu_runtime import sglang_patches
from lynx_sglang.gpu_runtime.standin_names import ABSENT, IMPLEMENTED, STUBS
from lynx_sglang.sglang_settings import as_flags

SGLANG = Path(importlib.util.find_spec("sglang").origin).parent
# Trees SGLang never imports when serving a language model (the GPU kit leaves them out too).
SKIPPED = ("multimodal_gen/", "test/")


def sgl_kernel_imports() -> dict[tuple[str, str], str]:
    """(module, name) -> where, for every `from sgl_kernel[.sub] import name`, `import sgl_kernel.sub`,
    `sgl_kernel.name` attribute and "sgl_kernel:name" kernel-registry target in SGLang's source."""
    found = {}
    for path in SGLANG.rglob("*.py"):
        relative = path.relative_to(SGLANG).as_posix()
        if relative.startswith(SKIPPED):
            continue
        text = path.read_text(encoding="utf-8")
        if "sgl_kernel" not in text:  # every form below names it: no need to parse the file
            continue
        for node in ast.walk(ast.parse(text)):
            where = f"sglang/{relative}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sgl_kernel":
                for alias in node.names:
                    found.setdefault((node.module, alias.name), where)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("sgl_kernel."):
                        found.setdefault((alias.name, ""), where)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sgl_kernel":
                found.setdefault(("sgl_kernel", node.attr), where)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                module, colon, name = node.value.partition(":")
                if module == "sgl_kernel" and colon and name.isidentifier():
                    found.setdefault(("sgl_kernel", name), where)
    return found


def test_every_name_sglang_imports_from_sgl_kernel_is_known_to_the_standin():
    imports = sgl_kernel_imports()
    assert len(imports) > 100  # the scan sees SGLang's imports (130 pairs in 0.5.23)
    unknown = []
    for (module, name), where in sorted(imports.items()):
        if module in ABSENT:
            continue
        if name and name not in IMPLEMENTED.get(module, set()) and name not in STUBS.get(module, ()):
            unknown.append(f"{module}.{name} ({where})")
        elif not name and module not in STUBS and module not in IMPLEMENTED:
            unknown.append(f"module {module} ({where})")
    assert not unknown, ("SGLang imports names the GPU runtime's stand-in neither implements, stubs nor leaves "
                         "out: classify each in lynx_sglang/gpu_runtime/standin_names.py:\n" + "\n".join(unknown))


def test_every_stubbed_or_implemented_module_exists_and_absent_ones_do_not():
    package = gpu_runtime.STANDIN_DIR / "sgl_kernel"
    for module in {*STUBS, *IMPLEMENTED} - {"sgl_kernel"}:
        assert (package / f"{module.split('.')[1]}.py").is_file(), module
    for module in ABSENT:
        assert not (package / f"{module.split('.')[1]}.py").exists(), module


STANDIN_PROBE = """
import json, sgl_kernel
from sgl_kernel import fast_topk_v2, moe_align_block_size
from sgl_kernel.kvcacheio import transfer_kv_direct
from sgl_kernel.utils import is_arch_support_pdl
result = {"version": sgl_kernel.__version__, "pdl": is_arch_support_pdl()}
try:
    fast_topk_v2(1, 2)
except Exception as error:
    result["stub"] = [type(error).__name__, str(error)]
for absent in ("sgl_kernel.scalar_type", "sgl_kernel.flash_attn", "sgl_kernel.allreduce"):
    try:
        __import__(absent)
        result[absent] = "imported"
    except ImportError:
        result[absent] = "absent"
print(json.dumps(result))
"""


def test_on_pythonpath_the_standin_is_sgl_kernel_and_its_stubs_name_themselves():
    # What `lynx-sglang serve` gives SGLang's processes on a CUDA machine without sgl_kernel.
    env = {**os.environ, **gpu_runtime.serve_environment(os.environ)}
    probe = subprocess.run([sys.executable, "-c", STANDIN_PROBE], env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout.splitlines()[-1])
    assert result["version"].endswith("lynx-gpu-standin") and result["pdl"] is False
    kind, message = result["stub"]
    assert kind == "MissingKernelError" and "sgl_kernel.fast_topk_v2" in message
    assert {result[m] for m in ABSENT} == {"absent"}


def replaced(target: str):
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            assert hasattr(owner, attribute), f"{target}: no {attribute} in {owner}"
            owner = getattr(owner, attribute)
        return owner
    pytest.fail(f"{target}: no importable module")


@pytest.mark.parametrize("target", sorted(sglang_patches.REPLACEMENTS))
def test_every_replace_target_exists_and_its_replacement_takes_its_arguments(target):
    """SGLang calls the replacement as it calls the original: every argument the original takes,
    positionally where it may be positional, must bind (a mismatch would show only on a GPU)."""
    original = inspect.signature(replaced(target))
    positional = [p for p in original.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    by_name = {p.name: None for p in original.parameters.values() if p.kind is p.KEYWORD_ONLY}
    replacement = inspect.signature(sglang_patches.REPLACEMENTS[target])
    replacement.bind(*[None] * len(positional), **by_name)
    # and as SGLang may call it, leaving out what the original defaults
    required = [p for p in positional if p.default is p.empty]
    replacement.bind(*[None] * len(required), **{name: None for name, p in original.parameters.items()
                                                   if p.kind is p.KEYWORD_ONLY and p.default is p.empty})


def test_llama_mlp_would_import_cutlass_on_cuda_without_the_dual_gemm_hook():
    """Why DualGemm._select_mode is replaced: on CUDA it imports the CuTe DSL kernel to ask whether
    the dual GEMM applies (SM100 only), and that module needs `cutlass`, which the GPU runtime lacks."""
    source = inspect.getsource(replaced("sglang.srt.layers.dual_gemm.DualGemm._select_mode"))
    assert "from sglang.kernels.ops.gemm.cutedsl_dual_gemm import" in source
    kernel_source = (SGLANG / "kernels" / "ops" / "gemm" / "cutedsl_dual_gemm.py").read_text()
    assert re.search(r"^import cutlass$", kernel_source, re.M)
    assert sglang_patches.no_dual_gemm(None, None, 4096) is None


def test_runtime_settings_are_sglang_flags_and_the_log_line_names_them():
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()  # the parser `python -m sglang.launch_server` builds
    ServerArgs.add_cli_args(parser)
    parsed = vars(parser.parse_args(["--model-path", "any", *as_flags(gpu_runtime.SERVE_SETTINGS)]))
    for name, value in gpu_runtime.SERVE_SETTINGS.items():
        assert parsed[name] == value, name
    assert "Triton" in gpu_runtime.LOG_LINE and "torch" in gpu_runtime.LOG_LINE
