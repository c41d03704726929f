"""The standing limits, checked on every tracked file: no Python file over 450 lines (700 for a file
that defines Triton kernels), no function over 100 lines, reference docs (docs/*.md) under 350 lines
and benchmark docs (docs/benchmarks/*.md) under 400, and no path of a developer's machine."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILE_LINES = 450
TRITON_FILE_LINES = 700  # a kernel's tiles and masks take room; applies where `@triton.jit` appears
FUNCTION_LINES = 100
DOC_LINES_UNDER = {"docs": 350, "docs/benchmarks": 400}

# Over a limit today and being split elsewhere. The lead empties this set at merge; an offender that
# is back within its limit fails test_known_offenders_are_still_over_a_limit, so the set cannot go stale.
KNOWN_OFFENDERS: set[str] = set()

# An absolute path that starts a word (not the tail of a URL or of a relative path) in one of the
# places a developer machine keeps things.
MACHINE_PATH = re.compile(r"(?<![\w.\-])/(?:work|opt|root)/[\w.\-/]*|(?<![\w.\-])/tmp/(?=lynx)[\w.\-/]*")
# Absolute paths that name no developer machine: where the container image installs the project
# (deploy/Dockerfile*), and the scratch directory scripts/gpu-serve.sh makes where it runs.
NOT_A_MACHINE_PATH = ("/opt/lynx-sglang", "/tmp/lynx-gpu-site")


def tracked_files() -> list[str]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the limits apply to tracked files")
    return [name for name in listing.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def text_of(name: str) -> str | None:
    data = (ROOT / name).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def long_functions(name: str, source: str) -> dict[str, int]:
    """`path::Qual.name` -> lines, for every function (methods and nested ones too) over the limit."""
    found = {}

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = prefix + child.name
                length = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and length > FUNCTION_LINES:
                    found[f"{name}::{qualname}"] = length
                visit(child, qualname + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=name), "")
    return found


def python_offenders(files: list[str]) -> dict[str, str]:
    offenders = {}
    for name in files:
        if not name.endswith(".py"):
            continue
        source = (ROOT / name).read_text(encoding="utf-8")
        limit = TRITON_FILE_LINES if "@triton.jit" in source else FILE_LINES
        if len(source.splitlines()) > limit:
            offenders[name] = f"{len(source.splitlines())} lines, limit {limit}"
        for function, length in long_functions(name, source).items():
            offenders[function] = f"{length} lines, limit {FUNCTION_LINES}"
    return offenders


def doc_offenders(files: list[str]) -> dict[str, str]:
    offenders = {}
    for name in files:
        folder, _, file_name = name.rpartition("/")
        if folder in DOC_LINES_UNDER and file_name.endswith(".md"):
            lines = len((ROOT / name).read_text(encoding="utf-8").splitlines())
            if lines >= DOC_LINES_UNDER[folder]:
                offenders[name] = f"{lines} lines, must be under {DOC_LINES_UNDER[folder]}"
    return offenders


def machine_paths(files: list[str]) -> dict[str, list[str]]:
    found = {}
    for name in files:
        text = text_of(name)
        paths = [m.group() for m in MACHINE_PATH.finditer(text or "")]
        paths = [p for p in paths if not any(p == ok or p.startswith(ok + "/") for ok in NOT_A_MACHINE_PATH)]
        if paths:
            found[name] = sorted(set(paths))
    return found


def test_python_files_and_functions_are_within_their_limits():
    offenders = python_offenders(tracked_files())
    new = {key: why for key, why in offenders.items() if key not in KNOWN_OFFENDERS}
    assert not new, f"over the standing limits: {new}"


def test_docs_are_within_their_limits():
    offenders = doc_offenders(tracked_files())
    assert not offenders, f"over the standing limits: {offenders}"


def test_known_offenders_are_still_over_a_limit():
    offenders = python_offenders(tracked_files())
    back_within = sorted(KNOWN_OFFENDERS - set(offenders))
    assert not back_within, f"within the limits now: remove {back_within} from KNOWN_OFFENDERS"


def test_nothing_tracked_names_a_path_of_a_machine():
    files = tracked_files()
    assert not machine_paths(files)
    this_file = str(Path(__file__).resolve().relative_to(ROOT))
    for allowed in NOT_A_MACHINE_PATH:  # an allowance nobody needs any more goes too
        assert any(allowed in (text_of(name) or "") for name in files if name != this_file), allowed


def test_the_checks_see_what_they_look_for():
    files = tracked_files()
    assert "lynx_sglang/serve.py" in files and "docs/architecture.md" in files
    source = "class A:\n    def long(self):\n" + "".join(f"        x = {i}\n" for i in range(FUNCTION_LINES))
    source += "def short():\n    def inner():\n        pass\n"
    assert long_functions("m.py", source) == {"m.py::A.long": FUNCTION_LINES + 1}
    root, work, scratch = ("/" + part for part in ("root", "work", "tmp/lynx-1"))
    text = f"{work}/main/x.py, {root}/.cache, https://host{work}/x, a{work}/b, /opt/lynx-sglang/bin, {scratch}"
    assert [m.group() for m in MACHINE_PATH.finditer(text)] == [
        f"{work}/main/x.py", f"{root}/.cache", "/opt/lynx-sglang/bin", scratch]
