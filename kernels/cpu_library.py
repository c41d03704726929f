"""Small C++ libraries built on first use with the system C++ compiler and called through ctypes.

No torch headers, so a build takes about a second and needs only a C++ compiler (`c++`, or $CXX).
What the C++ shares with Python (argument structs, rule codes, table columns) is defined once, in
Python, and reaches the C++ as a generated header, `lynx_generated.h`: the source includes it. A
library is cached under $LYNX_SGLANG_CACHE (default ~/.cache/lynx_sglang), keyed by a hash of the
source, the header, the flags and the compiler. Without a compiler, or if the build fails,
`load_function` returns None (logged once) and callers run torch code instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger("lynx_sglang")

# -ffp-contract=off: no fused multiply-add, so every float operation rounds as the torch reference's.
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]
HEADER_NAME = "lynx_generated.h"
_CTYPES = {"int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32, "float": ctypes.c_float, "double": ctypes.c_double}


def c_struct(name: str, declarations: str) -> type[ctypes.Structure]:
    """A ctypes Structure from C declarations ("const float* logits; int64_t num_rows, top_k;"); the
    same text becomes the C struct in the generated header, so the two layouts cannot drift."""
    fields = []
    for declaration in filter(None, (part.strip() for part in declarations.split(";"))):
        head, *more = declaration.split(",")
        c_type, _, first = head.rpartition(" ")
        ctype = ctypes.c_void_p if c_type.endswith("*") else _CTYPES.get(c_type.removeprefix("const "))
        if ctype is None:
            raise ValueError(f"{name}: unsupported C type {c_type!r} in {declaration!r}")
        fields += [(field.strip(), c_type, ctype) for field in (first, *more)]
    return type(name, (ctypes.Structure,), {
        "_fields_": [(field, ctype) for field, _, ctype in fields],
        "C_DECLARATION": f"struct {name} {{\n" + "".join(f"  {c_type} {field};\n" for field, c_type, _ in fields) + "};\n",
    })  # fmt: skip


def header(constants: dict[str, int], *structs: type[ctypes.Structure]) -> str:
    """The generated header: `#define NAME value` per constant, then the structs (extern "C")."""
    lines = ["// Generated from the Python definitions by kernels/cpu_library.py: do not edit.", "#pragma once",
             "#include <cstdint>"]  # fmt: skip
    lines += [f"#define {name} {int(value)}" for name, value in constants.items()]
    lines += ['extern "C" {', *(struct.C_DECLARATION for struct in structs), "}"]
    return "\n".join(lines) + "\n"


def _cache_dir() -> Path:
    return Path(os.environ.get("LYNX_SGLANG_CACHE", Path.home() / ".cache" / "lynx_sglang"))


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def build_library(source: Path, generated: str) -> Path:
    """Compile `source` with `generated` as its header (once per source, header, flags and compiler);
    return the library's path."""
    version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    key = "\n".join([source.read_text(), generated, " ".join(FLAGS), version])
    target = _cache_dir() / f"{source.parent.name}_{source.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:  # build aside, then rename: atomic
        (Path(scratch) / HEADER_NAME).write_text(generated)
        built = Path(scratch) / target.name
        command = [_compiler(), *FLAGS, f"-I{scratch}", str(source), "-o", str(built)]
        try:
            subprocess.run(command, capture_output=True, text=True, check=True)
        except subprocess.CalledProcessError:
            # A compiler without target_clones (or ifunc support): the plain build, one ISA.
            subprocess.run([*command, "-DLYNX_NO_TARGET_CLONES"], capture_output=True, text=True, check=True)
        os.replace(built, target)
    return target


@functools.cache
def load_function(source: Path, generated: str, name: str, args_type: type[ctypes.Structure]):
    """The library's `int name(const ArgsType*)`, or None (with one log line saying why) when the
    library cannot be built here."""
    try:
        library = ctypes.CDLL(str(build_library(source, generated)))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        logger.warning("lynx-sglang: C++ op %s unavailable (%s); torch code runs instead", name, detail.strip()[:300])
        return None
    function = getattr(library, name)
    function.argtypes = [ctypes.POINTER(args_type)]
    function.restype = ctypes.c_int
    return function
