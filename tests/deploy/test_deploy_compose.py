"""deploy/docker-compose.yml, as a real compose implementation resolves it (no Docker engine needed):
every profile combination, the services each starts, published ports, health checks, restarts, GPU
reservation, volumes, and an admin token that only ever comes from an uncommitted env file."""

import os
import shutil
import subprocess
import tempfile
from fnmatch import fnmatch

import pytest
import yaml
from deploy_testlib import COMPOSE_FILE, DEPLOY, ENV_EXAMPLE, ROOT, SERVER_SERVICES, debian_tool

PROFILE_COMBINATIONS = {
    (): {"lynx-sglang"},
    ("cpu",): {"lynx-sglang", "lynx-sglang-cpu"},
    ("monitoring",): {"lynx-sglang", "prometheus", "grafana"},
    ("cpu", "monitoring"): {"lynx-sglang", "lynx-sglang-cpu", "prometheus", "grafana"},
}


def compose_command() -> list[str]:
    """Compose v2 (the docker CLI plugin) where installed, else Debian's docker-compose."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [debian_tool("docker-compose", "docker-compose")]


def compose_config(profiles=(), **variables) -> dict:
    """`compose [--profile P]... config` with the committed example env file and no user overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LYNX_", "PROMETHEUS_", "GRAFANA_", "COMPOSE_"))}
    env.update(LYNX_ENV_FILE=ENV_EXAMPLE.name, **variables)
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    # An empty --env-file: a local deploy/.env must not change what is checked here, the committed defaults.
    with tempfile.NamedTemporaryFile(suffix=".env") as no_overrides:
        result = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "--env-file", no_overrides.name,
                                 *flags, "config"], cwd=DEPLOY, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"compose config {flags} failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def active_services(config: dict, profiles) -> set[str]:
    # The profile rule of the Compose spec. Compose v2 prints only active services; v1 prints all.
    return {name for name, service in config["services"].items()
            if not service.get("profiles") or set(service["profiles"]) & set(profiles)}


def host_addresses(service: dict) -> list[str]:
    """Host address of each published port, in compose v1 ('IP:HOST:CONTAINER/tcp') or v2 form."""
    addresses = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            addresses.append(port.get("host_ip", ""))
        else:
            parts = str(port).split(":")
            addresses.append(":".join(parts[:-2]) if len(parts) > 2 else "")
    return addresses


@pytest.fixture(scope="module")
def configs():
    return {profiles: compose_config(profiles) for profiles in PROFILE_COMBINATIONS}


@pytest.mark.parametrize("profiles", PROFILE_COMBINATIONS, ids=lambda p: "+".join(p) or "default")
def test_each_profile_combination_validates_and_starts_its_services(configs, profiles):
    assert active_services(configs[profiles], profiles) == PROFILE_COMBINATIONS[profiles]


def test_published_ports_listen_on_loopback_unless_the_user_says_otherwise(configs):
    every = configs[("cpu", "monitoring")]["services"]
    addresses = {name: host_addresses(service) for name, service in every.items()}
    assert all(addresses.values()), f"services without a published port: {addresses}"
    assert {a for found in addresses.values() for a in found} == {"127.0.0.1"}, addresses

    opened = compose_config(("cpu", "monitoring"), LYNX_BIND_ADDRESS="0.0.0.0")["services"]
    assert {a for service in opened.values() for a in host_addresses(service)} == {"0.0.0.0"}


def test_servers_serve_metrics_with_health_checks_and_restarts(configs):
    services = configs[("cpu", "monitoring")]["services"]
    for name in SERVER_SERVICES:
        server = services[name]
        assert "--enable-metrics" in server["command"], name
        assert "/health" in " ".join(server["healthcheck"]["test"]), name
        assert server["init"] is True, name
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_only_the_gpu_server_reserves_gpus(configs):
    services = configs[("cpu",)]["services"]
    [device] = services["lynx-sglang"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] in ("all", -1)  # v2 writes "all" as -1
    assert "deploy" not in services["lynx-sglang-cpu"]
    assert services["lynx-sglang"]["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert services["lynx-sglang-cpu"]["build"]["dockerfile"] == "deploy/Dockerfile"


def mounts(service: dict) -> set[str]:
    """'source:target' of each volume, in compose v1 ('SRC:DST:rw') or v2 (mapping) form."""
    return {":".join(v.split(":")[:2]) if isinstance(v, str) else f"{v['source']}:{v['target']}"
            for v in service.get("volumes", [])}


def test_model_cache_and_metrics_history_are_named_volumes(configs):
    config = configs[("cpu", "monitoring")]
    for name in SERVER_SERVICES:
        assert "model-cache:/models" in mounts(config["services"][name]), name
    assert "prometheus-data:/prometheus" in mounts(config["services"]["prometheus"])
    assert {"model-cache", "prometheus-data"} <= set(config["volumes"])


def test_admin_token_comes_only_from_an_uncommitted_env_file(configs):
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name in SERVER_SERVICES:
        assert raw["services"][name]["env_file"] == "${LYNX_ENV_FILE:-lynx.env}"
        # Resolved from the example, the token is empty: the example holds no secret.
        assert configs[("cpu",)]["services"][name]["environment"].get("LYNX_ADMIN_TOKEN") == ""
    real = (DEPLOY / "lynx.env").relative_to(ROOT).as_posix()
    ignored = subprocess.run(["git", "check-ignore", "-q", real], cwd=ROOT)
    assert ignored.returncode == 0, f"{real} is not git-ignored"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", real], cwd=ROOT, capture_output=True)
    assert tracked.returncode != 0, f"{real} is committed"
    patterns = [p.strip().rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert any(fnmatch(real, p) for p in patterns), f"{real} would be copied into images by `COPY . .`"
