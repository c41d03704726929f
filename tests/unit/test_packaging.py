"""What pyproject installs is what the code imports and reads: every folder of Python files under the
package roots is a listed package (one left out imports in an editable checkout and is missing from a
wheel), and every other file in them is package data (the C++ sources built on first use, the launch
configurations, the embedded checkpoint); and the modules and scripts the docs and scripts run exist."""

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
ROOTS = SETUPTOOLS["package-dir"]  # package -> its top-level folder


def folder_of(package: str) -> Path:
    root = max((r for r in ROOTS if package == r or package.startswith(r + ".")), key=len)
    return ROOT / ROOTS[root] / Path(*package[len(root) :].split(".")[1:])


def installed_files() -> dict[Path, str]:
    """Every tracked file under a package root -> the package its folder installs as."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", *ROOTS.values()], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: what is installed is what is tracked")
    found = {}
    for name in filter(None, listing.stdout.decode().split("\0")):
        path = ROOT / name
        folder = next(f for f in ROOTS.values() if name.startswith(f + "/"))
        package = next(p for p, f in ROOTS.items() if f == folder)
        found[path] = ".".join([package, *path.parent.relative_to(ROOT / folder).parts])
    return found


def test_every_folder_of_python_files_is_a_listed_package():
    packages = {package for path, package in installed_files().items() if path.suffix == ".py"}
    assert packages - set(SETUPTOOLS["packages"]) == set(), "add these to pyproject's packages"
    assert {"lynx_sglang.tools.bench", "lynx_sglang.kernels.routing"} <= packages  # the walk finds subpackages


def test_every_other_file_is_package_data():
    data = SETUPTOOLS["package-data"]
    missing = []
    for path, package in installed_files().items():
        if path.suffix in (".py", ".pyc"):
            continue
        owners = [p for p in data if package == p or package.startswith(p + ".")]
        if not any(fnmatch.fnmatch(str(path.relative_to(folder_of(owner))), glob) for owner in owners
                   for glob in data[owner]):  # fmt: skip
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"not installed (add to pyproject's package-data): {missing}"
    assert any(path.name == "cpu.cpp" for path in installed_files())  # the walk sees the data files


def named_in_docs_and_scripts(pattern: str) -> set[str]:
    texts = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").rglob("*.md"), *(ROOT / "scripts").glob("*")]
    return {match for path in texts if path.is_file() for match in re.findall(pattern, path.read_text())}


def test_every_module_and_script_the_docs_and_scripts_run_exists():
    """`python -m lynx_sglang...` and `scripts/...` as the README, the docs and the scripts name them
    (scripts/gpu-checks.sh once ran a scripts/lynx_launches.py that was no longer there)."""
    modules = named_in_docs_and_scripts(r"-m (lynx_sglang(?:\.\w+)+)")
    assert "lynx_sglang.tools.profile_launches" in modules  # what gpu-checks.sh's profile stage runs
    missing = [m for m in sorted(modules) if not (folder_of(m).with_suffix(".py").is_file() or
                                                  (folder_of(m) / "__init__.py").is_file())]  # fmt: skip
    scripts = named_in_docs_and_scripts(r"\bscripts/[\w.-]+\.(?:py|sh)\b")
    missing += [s for s in sorted(scripts) if not (ROOT / s).is_file()]
    assert not missing, f"named but not there: {missing}"


def test_version_names_lynx_sglang_and_what_it_runs_on(capsys):
    from importlib.metadata import version

    from lynx_sglang import __version__, cli

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"lynx-sglang {__version__} (sglang {version('sglang')}, torch {version('torch')})"
    )


def test_a_reader_that_leaves_early_ends_the_listing_quietly():
    import sys

    listing = subprocess.Popen([sys.executable, "-m", "lynx_sglang.cli", "policies"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, bufsize=0)  # fmt: skip
    listing.stdout.close()  # before its first line, as `| head -0` would: every write meets a closed pipe
    _, errors = listing.communicate(timeout=120)
    assert listing.returncode == 141 and b"Traceback" not in errors, errors.decode()
