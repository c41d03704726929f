"""The C++ routing op builds with the system compiler, and without target_clones where the compiler
refuses them (the library is the same but for the AVX2 clones)."""

import ctypes
import os
import shutil
import stat

import pytest

from lynx_sglang.kernels.cpu_library import build_library
from lynx_sglang.kernels.routing.cpu import SOURCE, generated_header

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler here")


def compiler_refusing_target_clones(directory):
    """A `c++` that fails unless told not to use target_clones, as an old compiler would."""
    real = shutil.which(os.environ.get("CXX", "c++"))
    script = directory / "c++"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--version*) exec ' + real + ' "$@";; *-DLYNX_NO_TARGET_CLONES*) exec ' + real + ' "$@";; esac\n'
        "echo 'error: target_clones not supported' >&2; exit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_the_op_builds_into_the_cache_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LYNX_SGLANG_CACHE", str(tmp_path))
    library = build_library(SOURCE, generated_header())
    assert library.parent == tmp_path and library.exists()
    assert build_library(SOURCE, generated_header()) == library  # cached: built once per source, header, flags, compiler
    assert ctypes.CDLL(str(library)).lynx_route_cpu


def test_a_compiler_without_target_clones_gets_the_plain_build(tmp_path, monkeypatch):
    monkeypatch.setenv("LYNX_SGLANG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(compiler_refusing_target_clones(tmp_path)))
    library = build_library(SOURCE, generated_header())
    assert ctypes.CDLL(str(library)).lynx_route_cpu
