"""deploy/Dockerfile.gpu's steps that need no CUDA, built and run for real with podman on a stand-in for
SGLang's CUDA image (tests/deploy/containers/gpu-standin.Containerfile: Debian's python3 without
ensurepip, a CPU torch, an sglang distribution of the pinned version that is only its metadata, and
a constraint that keeps pip from resolving any other torch): the version guard, the install into a
venv that sees the image's own SGLang and torch, the entrypoint and the non-root user. What needs
the real image (CUDA, SGLang's kernels, serving on a GPU) is not run here."""

from __future__ import annotations

import json
import re

import pytest
from containers_testlib import HERE, build, container_tools, debian_base, image_tag, podman, torch_source, torch_version
from deploy_testlib import DEPLOY, ROOT

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

VENV = "/opt/lynx-sglang/.venv"


def sglang_version() -> str:
    [version] = re.findall(r"^ARG SGLANG_VERSION=(\S+)$", (DEPLOY / "Dockerfile.gpu").read_text(), re.MULTILINE)
    return version


@pytest.fixture(scope="module")
def standin_base():
    container_tools()
    folders, find_links = torch_source()
    args = {"BASE_IMAGE": debian_base(), "SGLANG_VERSION": sglang_version(), "TORCH_VERSION": torch_version(),
            "PIP_FIND_LINKS": find_links}  # fmt: skip
    return build(image_tag("gpu-standin"), HERE / "gpu-standin.Containerfile", HERE, args=args, mounts=folders)


@pytest.fixture(scope="module")
def gpu_image(standin_base):
    return build(image_tag("gpu"), DEPLOY / "Dockerfile.gpu", ROOT, args={"BASE_IMAGE": image_tag("gpu-standin")})


def run(image: str, *args, entrypoint: str | None = None):
    flags = ["--entrypoint", entrypoint] if entrypoint else []
    return podman("run", "--rm", "--network", "none", *flags, image, *args, check=False)


def test_the_install_step_takes_the_gpu_path_and_adds_neither_sglang_nor_torch(gpu_image):
    [install] = [step for step in gpu_image.steps() if "make install" in step.splitlines()[0]]
    if "--> Using cache" not in install:
        assert "lynx-sglang: installing the gpu path" in install, install[-3000:]
    # The step's own check passed (the build did), and pip holds neither in the venv.
    # --local: what the venv itself holds, not what it sees of the image's packages.
    venv = run(gpu_image.image, "-m", "pip", "list", "--local", "--format", "json", entrypoint=f"{VENV}/bin/python")
    assert venv.returncode == 0, venv.stderr
    installed = {package["name"].lower() for package in json.loads(venv.stdout)}
    assert "lynx-sglang" in installed and not installed & {"sglang", "torch"}, sorted(installed)
    assert not any(name.startswith("nvidia-") for name in installed), sorted(installed)


def test_the_venv_sees_the_images_own_sglang_and_torch(gpu_image, standin_base):
    probe = ("import importlib.metadata as m, importlib.util as u\n"
             "for name in ('sglang', 'torch', 'lynx_sglang'): print(name, u.find_spec(name).origin)\n"
             "print('sglang-version', m.version('sglang'))")  # fmt: skip
    found = run(gpu_image.image, "-c", probe, entrypoint=f"{VENV}/bin/python")
    assert found.returncode == 0, found.stderr
    where = dict(line.split(" ", 1) for line in found.stdout.splitlines())
    assert where["sglang-version"] == sglang_version()
    for name in ("sglang", "torch"):
        assert not where[name].startswith(VENV), where  # the image's, not a second copy
    assert where["lynx_sglang"] == "/opt/lynx-sglang/lynx_sglang/__init__.py", where  # editable, at the code


def test_the_entrypoint_runs_lynx_sglang_serve_as_a_non_root_user(gpu_image):
    shown = run(gpu_image.image, "--help")  # the entrypoint: `lynx-sglang serve --host 0.0.0.0 --port 30000 --help`
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "usage: lynx-sglang serve" in shown.stdout, shown.stdout[:500]
    uid = run(gpu_image.image, "-u", entrypoint="id")
    assert uid.returncode == 0 and uid.stdout.strip() != "0", uid.stdout + uid.stderr


def test_the_first_step_refuses_a_base_image_without_the_pinned_sglang(standin_base):
    # The Debian base has no sglang: the guard stops the build before anything is installed.
    with pytest.raises(AssertionError, match=f"base image has sglang '', expected {re.escape(sglang_version())}"):
        build(image_tag("gpu-refused"), DEPLOY / "Dockerfile.gpu", ROOT, args={"BASE_IMAGE": debian_base()})
