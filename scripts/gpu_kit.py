"""Prepare what a GPU machine without network needs to serve SGLang 0.5.23 from this repository.

    python scripts/gpu_kit.py DIR [--python-version 3.12]      (scripts/gpu-kit.sh DIR runs this)

DIR receives
  wheels/   the wheels of scripts/gpu-kit-requirements.txt for that Python (manylinux x86-64), and SGLang 0.5.23
            repacked as a pure-Python wheel: no compiled extensions (optional Rust parts with Python
            fallbacks), no multimodal_gen/ and no test/ (neither is imported when serving a language model);
  stubs/    an `IPython` stand-in (SGLang imports `IPython.display.HTML, display` for notebooks only);
  kit.json  what is inside and the sizes.
The kit and the repository's tracked files must travel together within 64 MiB: the script stops
with an error where they would not.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SGLANG = "sglang==0.5.23"
SIZE_LIMIT = 64 * 1024 * 1024
# Inside the sglang wheel: what serving a language model never imports.
DROPPED_PREFIXES = ("sglang/multimodal_gen/", "sglang/test/")
DROPPED_SUFFIXES = (".so", ".pyc")
MANYLINUX = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
IPYTHON_STUB = '''"""Stand-in for IPython: SGLang imports IPython.display for notebook helpers only."""
'''
IPYTHON_DISPLAY_STUB = '''"""Stand-in for IPython.display (notebook helpers SGLang never calls when serving)."""


class HTML(str):
    pass


def display(*objects, **kwargs):
    print(*objects)
'''


def download(requirements: list[str], dest: Path, python_version: str) -> None:
    platforms = [arg for tag in MANYLINUX for arg in ("--platform", tag)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", *platforms,
               "--dest", str(dest), *requirements]  # fmt: skip
    print(f"gpu-kit: downloading {len(requirements)} wheels for Python {python_version}", flush=True)
    subprocess.run(command, check=True)


def _record_row(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def repack_pure(wheel: Path, dest_dir: Path) -> Path:
    """The sglang wheel without its compiled extensions and unused trees, tagged py3-none-any."""
    name, version = wheel.name.split("-")[:2]
    out = dest_dir / f"{name}-{version}-py3-none-any.whl"
    record_rows = []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        dist_info = next(n.split("/")[0] for n in src.namelist() if n.split("/")[0].endswith(".dist-info"))
        for item in src.infolist():
            path = item.filename
            if path.startswith(DROPPED_PREFIXES) or path.endswith(DROPPED_SUFFIXES) or "/__pycache__/" in path:
                continue
            if path in (f"{dist_info}/RECORD", f"{dist_info}/WHEEL"):
                continue
            data = src.read(item)
            dst.writestr(path, data)
            record_rows.append(_record_row(path, data))
        wheel_meta = b"Wheel-Version: 1.0\nGenerator: lynx-sglang gpu-kit\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        dst.writestr(f"{dist_info}/WHEEL", wheel_meta)
        record_rows.append(_record_row(f"{dist_info}/WHEEL", wheel_meta))
        record_rows.append([f"{dist_info}/RECORD", "", ""])
        record = io.StringIO()
        csv.writer(record, lineterminator="\n").writerows(record_rows)  # file names hold commas: quote them
        dst.writestr(f"{dist_info}/RECORD", record.getvalue())
    wheel.unlink()
    return out


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return sum((REPO / f).stat().st_size for f in files.decode().split("\0") if f and (REPO / f).is_file())


def commit() -> str | None:
    """HEAD, marked `-dirty` when tracked files differ from it (the working tree is what travels)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(dest: Path, python_version: str) -> dict:
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("*.whl"):
        old.unlink()
    download([*requirement_lines(REPO / "scripts" / "gpu-kit-requirements.txt"), SGLANG], wheels, python_version)
    sglang_wheel = next(w for w in wheels.glob("sglang-*.whl"))
    repacked = repack_pure(sglang_wheel, wheels)
    stub = dest / "stubs" / "IPython"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text(IPYTHON_STUB)
    (stub / "display.py").write_text(IPYTHON_DISPLAY_STUB)
    kit_size, repo_size = folder_bytes(dest), tracked_bytes()
    manifest = {
        "commit": commit(),
        "python_version": python_version,
        "sglang_wheel": repacked.name,
        "wheels": sorted(w.name for w in wheels.glob("*.whl")),
        "kit_bytes": kit_size,
        "repository_bytes": repo_size,
        "total_mib": round((kit_size + repo_size) / 2**20, 1),
    }
    (dest / "kit.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dest", type=Path, help="folder to fill (inside the repository, git-ignored, to travel)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default: 3.12)")
    args = parser.parse_args(argv)
    manifest = build(args.dest, args.python_version)
    total = manifest["kit_bytes"] + manifest["repository_bytes"]
    print(f"gpu-kit: {len(manifest['wheels'])} wheels, kit {manifest['kit_bytes'] / 2**20:.1f} MiB + repository "
          f"{manifest['repository_bytes'] / 2**20:.1f} MiB = {total / 2**20:.1f} MiB (limit 64 MiB)")
    if total > SIZE_LIMIT:
        print("gpu-kit: error: the kit and the repository exceed 64 MiB together", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
