"""deploy/Dockerfile (CPU) and deploy/Dockerfile.gpu, read as Docker would: the SGLang version they carry,
the installer they run, the layer that keeps SGLang cached, the user they run as. The container tests
(test_containers_*.py) build and run them."""

import json
import re
import subprocess
import sys

import pytest
from deploy_testlib import DEPLOY, ROOT

DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "gpu": DEPLOY / "Dockerfile.gpu"}
# What scripts/install.sh reads (plus the folder lister): the only sources allowed before the install.
INSTALL_INPUTS = {"Makefile", "pyproject.toml", "requirements/", "scripts/install.sh", "deploy/package_dirs.py",
                  "deploy/gpu-build/", "lynx_sglang/__init__.py",
                  # `python -m lynx_sglang.cpu_runtime install`: the rest of the glue is code, copied later
                  "lynx_sglang/cpu_runtime/__init__.py", "lynx_sglang/cpu_runtime/__main__.py"}


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def sglang_pin(text: str) -> str:
    [version] = set(re.findall(r"sglang==([\w.]+)", text))
    return version


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_installs_through_the_readme_installer(kind):
    # README: `make serve` / `make test` install first; `make install` is scripts/install.sh.
    assert "make serve" in (ROOT / "README.md").read_text()
    assert "bash scripts/install.sh" in (ROOT / "Makefile").read_text()
    runs = [args for op, args in instructions(DOCKERFILES[kind]) if op == "RUN"]
    assert sum("make install" in r for r in runs) == 1, runs
    assert not any(re.search(r"pip install[^&]*\bsglang\b", r) for r in runs), "SGLang installed outside the installer"


def test_both_images_carry_the_sglang_version_the_project_pins():
    project = sglang_pin((ROOT / "pyproject.toml").read_text())
    assert sglang_pin((ROOT / "scripts" / "install.sh").read_text()) == project  # the CPU image's SGLang
    gpu = instructions(DOCKERFILES["gpu"])
    assert ("ARG", f"SGLANG_VERSION={project}") in gpu
    # By default SGLang's official image of that release (tests/deploy/test_containers_gpu_steps.py
    # builds on a stand-in instead).
    assert ("ARG", "BASE_IMAGE=lmsysorg/sglang:v${SGLANG_VERSION}") in gpu
    assert [args for op, args in gpu if op == "FROM"] == ["${BASE_IMAGE}"]


def test_cpu_image_build_arguments_default_to_what_a_user_gets():
    # The public Python image and no wheel source beyond the indexes; the container tests set both.
    steps = instructions(DOCKERFILES["cpu"])
    assert steps[:3] == [("ARG", "BASE_IMAGE=python:3.11-slim-bookworm"), ("FROM", "${BASE_IMAGE}"),
                         ("ARG", "PIP_FIND_LINKS=")]  # fmt: skip


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_sglang_layer_is_reused_when_only_project_code_changes(kind):
    steps = instructions(DOCKERFILES[kind])
    install = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "make install" in args)
    copied_before = {src for op, args in steps[:install] if op == "COPY" for src in args.split()[:-1]}
    assert copied_before <= INSTALL_INPUTS, copied_before - INSTALL_INPUTS
    assert ("COPY", ". .") in steps[install:], "the project code must come after the install"


def test_dependency_layer_creates_every_package_folder():
    listed = subprocess.run([sys.executable, "deploy/package_dirs.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    assert "lynx_sglang" in listed and "policies" in listed and "kernels" in listed
    for folder in listed:
        assert (ROOT / folder / "__init__.py").is_file(), folder


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_runs_lynx_sglang_serve_as_a_non_root_user(kind):
    steps = instructions(DOCKERFILES[kind])
    user = [args for op, args in steps if op == "USER"][-1]
    assert user not in ("root", "0")
    [entrypoint] = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    assert entrypoint == ["/opt/lynx-sglang/deploy/entrypoint.sh"]
    assert ("VOLUME", "/models") in steps
    assert not any("TOKEN" in args for op, args in steps if op in ("ENV", "ARG")), "a secret baked into the image"


def test_cpu_image_has_the_compiler_the_cpu_routing_op_needs():
    # kernels/routing/cpu.py builds its library with `c++` on first use (Debian's g++ provides it);
    # SGLang's official image has build-essential.
    installs = [args for op, args in instructions(DOCKERFILES["cpu"]) if op == "RUN" and "apt-get install" in args]
    assert any(re.search(r"\bg\+\+(\s|$)", args) for args in installs), installs


def test_scripts_the_images_run_are_executable_as_committed():
    # The images run them directly (ENTRYPOINT, the installer's `nvidia-smi -L`): COPY keeps git's mode.
    scripts = ["deploy/entrypoint.sh", "deploy/gpu-build/nvidia-smi"]
    listed = subprocess.run(["git", "ls-files", "-s", *scripts], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert len(listed) == len(scripts) and all(line.startswith("100755 ") for line in listed), listed


def test_entrypoint_execs_lynx_sglang_serve():
    script = DEPLOY / "entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    [command] = [line for line in script.read_text().splitlines() if line.startswith("exec ")]
    assert command.startswith("exec lynx-sglang serve --host 0.0.0.0 ") and command.endswith('"$@"')
