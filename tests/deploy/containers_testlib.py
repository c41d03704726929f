"""Real images and containers for the deploy tests, built and run with podman (no Docker engine or
image registry needed): the tools, a base image made from Debian's packages, where pip finds the CPU
torch, image builds, containers, and docker-compose through podman's Docker-compatible API."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_testlib import COMPOSE_FILE, DEPLOY, ROOT, apt_install
from live_server import free_port


def report_figure(text: str) -> None:
    """Not a problem: a figure the container tests measure (image size, build times), shown in the
    warnings summary of every run. A plain UserWarning: pytest-xdist's controller re-imports a
    warning's class by its module, and it cannot import the test modules' helpers."""
    warnings.warn(f"container figures: {text}", UserWarning, stacklevel=2)

HERE = Path(__file__).resolve().parent / "containers"
PODMAN_CONF = HERE / "containers.conf"
# Debian's podman 4.3 with runc, debootstrap for the base image, docker-compose 1.29 for the compose file.
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap", "docker-compose": "docker-compose"}
# The base image's recipe. bookworm's python3 is 3.11, the Python of the CPU image's default base
# (python:3.11-slim-bookworm); apt keeps no downloaded packages, as in Debian's official images.
SUITE = "bookworm"
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", SUITE]
APT_CLEAN = """DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
# Tagged by its recipe: a changed recipe makes a new base, never reuses an old one.
RECIPE = hashlib.sha256(repr((DEBOOTSTRAP, APT_CLEAN)).encode()).hexdigest()[:8]
BASE_IMAGE = f"localhost/lynx-sglang-test/debian:{SUITE}-{RECIPE}"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# One tag per checkout: a rebuild replaces this checkout's image, never another's.
CHECKOUT = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
BUILD_TIMEOUT_S = 1500
STARTUP_TIMEOUT_S = 300


def podman_env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=str(PODMAN_CONF))


def podman(*args, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout,
                            **kwargs)  # fmt: skip
    if check and result.returncode != 0:
        pytest.fail(f"`podman {' '.join(map(str, args))[:300]}` exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@contextmanager
def machine_lock(name: str, *, shared: bool = False):
    """One test process at a time, across pytest workers and checkouts of this machine; or, `shared`,
    any number of them while none holds it alone."""
    with open(Path(tempfile.gettempdir()) / f"lynx-sglang-tests-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


# podman 4.3's build looks for a cached step by listing every image, then reading each one's top layer:
# an image removed in between (another worker's `podman rmi`) fails the build with "layer not known"
# (buildah #5674, fixed in buildah 1.43). So builds share the image store and removals take it alone;
# a build that still meets the race (a process outside these locks) is run once more.
IMAGE_STORE = "image-store"
CACHE_RACE = "checking if cached image exists from a previous build"


def remove_image(reference: str) -> None:
    """`podman rmi`, once no build runs; an image in use by a running test elsewhere stays."""
    with machine_lock(IMAGE_STORE):
        podman("rmi", reference, check=False)


def container_tools() -> None:
    """podman, runc, debootstrap and docker-compose, installed from Debian's packages when missing
    (root only; with podman's recommends: catatonit for `init: true`, netavark and aardvark-dns for
    networks with names), or skip saying why. Skips too when podman cannot run containers here."""
    missing = [package for command, package in TOOLS.items() if not shutil.which(command)]
    if missing:
        apt_install(missing, f"{', '.join(missing)} not installed", recommends=True)
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    remove_leftovers()


# Every container a test starts names the test process that started it.
OWNER = "lynx-sglang-test.owner-pid"


def remove_leftovers() -> None:
    """Containers of test processes that are gone (a run killed before its cleanup): a server left
    running would take the cores the rest of the suite needs."""
    listed = podman("ps", "-a", "--filter", f"label={OWNER}", "--format", "json").stdout
    for container in json.loads(listed or "[]"):
        try:
            os.kill(int(container["Labels"][OWNER]), 0)
        except ProcessLookupError:
            podman("rm", "-f", "-v", container["Id"], check=False, timeout=90)


def die_with_parent() -> None:
    """In a child process before exec: SIGTERM when the test process dies, cleaned up or not."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def debian_mirror() -> str:
    """The Debian mirror apt already uses (its sources lists name it)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        text = path.read_text(errors="replace") if path.is_file() else ""
        for uri in re.findall(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(https?://\S+)", text, re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def debian_base() -> str:
    """A base image made from Debian's packages (debootstrap, with python3 and its venv module), kept
    in podman's storage between runs: only the first run on a machine makes it."""
    with machine_lock("debian-base"):
        if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return BASE_IMAGE
        with tempfile.TemporaryDirectory() as rootfs:
            made = subprocess.run([*DEBOOTSTRAP, rootfs, debian_mirror()], capture_output=True, text=True, timeout=900)
            if made.returncode != 0:
                pytest.skip(f"debootstrap could not make a {SUITE} base image: {made.stdout[-500:]}{made.stderr[-500:]}")
            (Path(rootfs) / "etc" / "apt" / "apt.conf.d" / "docker-clean").write_text(APT_CLEAN)
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            podman("import", "-", BASE_IMAGE, stdin=tar.stdout, timeout=600)
            assert tar.wait() == 0
    return BASE_IMAGE


def pip_config() -> dict[str, list[str]]:
    """pip's settings on this machine (`pip config list`: files and PIP_* variables), by name."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings: dict[str, list[str]] = {}
    for key, value in re.findall(r"^\S*?\.([\w-]+)='(.*)'$", listed, re.MULTILINE):
        settings.setdefault(key, []).extend(value.split())
    return settings


def torch_version() -> str:
    [version] = re.findall(r"^torch==(\S+)", (ROOT / "requirements" / "constraints-cpu.txt").read_text(), re.MULTILINE)
    return version


def local_torch_folders() -> list[Path]:
    """Wheel folders of pip's find-links on this machine that hold the CPU install's torch."""
    folders = {Path(link.removeprefix("file://")) for link in pip_config().get("find-links", [])}
    return sorted(f for f in folders if f.is_dir() and any(f.glob(f"torch-{torch_version()}*.whl")))


def torch_source() -> tuple[list[Path], str]:
    """(folders to mount into a build, PIP_FIND_LINKS) that give the CPU torch: this machine's wheel
    folders when pip's configuration has one, else PyTorch's CPU index; skips when neither is there."""
    folders = local_torch_folders()
    if folders:
        return folders, " ".join(map(str, folders))
    try:
        urllib.request.urlopen(f"{PYTORCH_CPU_INDEX}/torch/", timeout=15).close()
    except OSError as error:
        pytest.skip(f"no wheel folder in `pip config list` holds torch {torch_version()}, and PyTorch's CPU index "
                    f"({PYTORCH_CPU_INDEX}) is unreachable ({error}): the images' CPU torch has no source here")
    return [], ""


def pip_trust_mounts() -> list[str]:
    """pip's CA bundle on this machine (`pip config`'s cert: a TLS-intercepting proxy's CA, say),
    mounted over the base image's bundle for the build steps only: the images never keep it."""
    certs = [Path(c) for c in pip_config().get("cert", []) if Path(c).is_file()]
    return [f"{certs[-1]}:/etc/ssl/certs/ca-certificates.crt:ro"] if certs else []


@dataclass
class Build:
    image: str  # image id
    seconds: float
    log: str

    def steps(self) -> list[str]:
        """The build's output, one entry per step that builds (its `STEP n/m: ...` line first): every
        Dockerfile instruction but FROM."""
        steps = ["STEP " + part for part in re.split(r"^STEP ", self.log, flags=re.MULTILINE)[1:]]
        return [step for step in steps if not re.match(r"STEP \d+/\d+: FROM ", step)]

    def cached(self) -> list[bool]:
        return ["--> Using cache" in step for step in self.steps()]

    def size_bytes(self) -> int:
        return int(podman("image", "inspect", "--format", "{{.Size}}", self.image).stdout)


def build(tag: str, dockerfile: Path, context: Path, *, args: dict[str, str], mounts=()) -> Build:
    """`podman build` of `dockerfile` as `tag`, with build arguments and read-only folders mounted into
    its RUN steps; this checkout's previous image under `tag`, replaced, is removed."""
    previous = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        iidfile = Path(scratch) / "iid"
        command = ["podman", "build", "--network", "host", "--layers", "-f", str(dockerfile), "-t", tag,
                   "--iidfile", str(iidfile)]  # fmt: skip
        command += [a for key, value in args.items() for a in ("--build-arg", f"{key}={value}")]
        command += [a for mount in [*(f"{m}:{m}:ro" for m in mounts), *pip_trust_mounts()] for a in ("--volume", mount)]
        start = time.monotonic()
        for _attempt in range(2):
            with machine_lock(IMAGE_STORE, shared=True):
                result = subprocess.run([*command, str(context)], env=podman_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, timeout=BUILD_TIMEOUT_S)  # fmt: skip
            if result.returncode == 0 or CACHE_RACE not in result.stdout:
                break
        seconds = time.monotonic() - start
        log = result.stdout
        assert result.returncode == 0, f"building {dockerfile.name} failed:\n" + "\n".join(log.splitlines()[-60:])
        image = iidfile.read_text().strip().removeprefix("sha256:")
    if previous and previous.removeprefix("sha256:") != image:
        remove_image(previous)
    return Build(image, seconds, log)


def image_tag(kind: str) -> str:
    return f"localhost/lynx-sglang-test/{kind}:{CHECKOUT}"


class Container:
    """`podman run -d IMAGE ARGS` with the server's `port` (PORT in the container) published on
    127.0.0.1:<free port>."""

    def __init__(self, image: str, args=(), *, env_file: Path | None = None, port: int = 30000):
        self.name = f"lynx-sglang-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flags = ["--name", self.name, "--label", f"{OWNER}={os.getpid()}", "-p", f"127.0.0.1:{self.port}:{port}", "-e", f"PORT={port}"]
        flags += ["--env-file", str(env_file)] if env_file else []
        podman("run", "-d", *flags, image, *args)

    def state(self) -> dict:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def log_tail(self, lines: int = 40) -> str:
        # Without the nanobind reference-leak report Triton prints at exit (dozens of lines).
        return "\n".join([line for line in self.logs().splitlines() if "leaked" not in line][-lines:])

    def exec(self, *command, check=False) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *command, check=check)

    def wait_healthy(self) -> float:
        """Seconds until GET /health from the host answers 200; fails when the container exits first."""
        start = time.monotonic()
        while time.monotonic() - start < STARTUP_TIMEOUT_S:
            if http_status(self.url + "/health") == 200:
                return time.monotonic() - start
            if not self.state()["Running"]:
                pytest.fail(f"the container exited ({self.state()['ExitCode']}):\n{self.log_tail()}")
            time.sleep(1)
        pytest.fail(f"not healthy after {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def host_pids(self, title: str) -> list[int]:
        """Host PIDs of the container's processes whose command line contains `title`."""
        rows = podman("top", self.name, "hpid", "args").stdout.splitlines()[1:]
        return [int(row.split(None, 1)[0]) for row in rows if title in row]

    def remove(self) -> None:
        podman("rm", "-f", "-v", self.name, check=False, timeout=90)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class Compose:
    """docker-compose 1.29 (Debian's) through podman's Docker-compatible API (`podman system service`,
    on a socket of its own), on deploy/docker-compose.yml as project `project`. An override file
    changes only what this machine needs: the images (built here, no registry) and the names of the
    volumes (the project's own, so that `down -v` removes nothing of a real deployment)."""

    def __init__(self, workdir: Path, images: dict[str, str], variables: dict[str, str]):
        self.project = f"lynxtest{uuid.uuid4().hex[:8]}"
        self.socket = workdir / "podman.sock"
        self.override = workdir / "compose.override.yml"
        volumes = ("model-cache", "prometheus-data", "grafana-data")
        labels = {OWNER: str(os.getpid())}
        override = {"services": {service: {"image": image, "labels": labels} for service, image in images.items()},
                    "volumes": {volume: {"name": f"{self.project}-{volume}"} for volume in volumes}}  # fmt: skip
        self.override.write_text(json.dumps(override))  # JSON is YAML
        self.service_log = open(workdir / "podman-service.log", "wb")
        self.service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
                                        env=podman_env(), stdout=self.service_log, stderr=subprocess.STDOUT,
                                        preexec_fn=die_with_parent)  # fmt: skip
        env = {k: v for k, v in podman_env().items() if not k.startswith(("LYNX_", "PROMETHEUS_", "GRAFANA_", "COMPOSE_"))}
        self.env = dict(env, DOCKER_HOST=f"unix://{self.socket}", **variables)
        deadline = time.monotonic() + 30
        while not self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.socket.exists(), (workdir / "podman-service.log").read_text()

    def __call__(self, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        command = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), "-f", str(self.override), *args]
        result = subprocess.run(command, cwd=DEPLOY, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"`docker-compose {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-3000:]}"
        return result

    def containers(self, service: str | None = None, *, all_states=True) -> list[str]:
        labels = [f"label=com.docker.compose.project={self.project}"]
        labels += [f"label=com.docker.compose.service={service}"] if service else []
        flags = [a for label in labels for a in ("--filter", label)] + (["-a"] if all_states else [])
        return podman("ps", *flags, "--format", "{{.Names}}").stdout.split()

    def close(self) -> None:
        # Whatever a failed test left: containers, the network, the test's own volumes.
        for name in self.containers():
            podman("rm", "-f", "-v", name, check=False, timeout=90)
        podman("network", "rm", "-f", f"{self.project}_default", check=False)
        for volume in podman("volume", "ls", "--format", "{{.Name}}").stdout.split():
            if volume.startswith(f"{self.project}-"):
                podman("volume", "rm", "-f", volume, check=False)
        self.service.terminate()
        self.service.wait(timeout=30)
        self.service_log.close()
