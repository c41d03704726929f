"""deploy/Dockerfile built and run for real with podman, on a base image made from Debian's packages:
the image builds (once per run, its size and build time reported), runs as a non-root user, passes
the compose file's health check, answers over HTTP from the host, switches policy with the env
file's token, lets a stream in flight finish on `podman stop` and exits 0; a change to project code
alone rebuilds without reinstalling SGLang or torch. Then the compose file itself, through
docker-compose and podman's Docker-compatible API: the CPU service by name, Prometheus scraping it
and answering the dashboard's queries, and `down`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from containers_testlib import (
    HERE,
    Compose,
    Container,
    build,
    container_tools,
    debian_base,
    http_status,
    image_tag,
    podman,
    podman_env,
    remove_image,
    report_figure,
    torch_source,
)
from deploy_testlib import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    ROOT,
    as_prometheus_query,
    complete_a_few,
    dashboard_queries,
    prometheus_query,
)
from live_server import free_port, get_json, post

# One module, so that one pytest-xdist worker builds the image once for all of these tests. A first
# build on a fresh machine takes minutes: the timeout covers it.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(2400)]

TOKEN = "container-test-token"
PORT = 30080  # the container's, through PORT: the entrypoint and the health check both read it
# The embedded model's context is 64 tokens: a 7-token prompt and 48 generated fit.
STREAM = {"model": "default", "prompt": "123+45=", "max_tokens": 48, "temperature": 0, "ignore_eos": True,
          "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip


def gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


@pytest.fixture(scope="module")
def cpu_image():
    """The CPU image, as `docker build -f deploy/Dockerfile .` builds it, on the Debian base; torch from
    this machine's wheel folder (mounted into the build) or PyTorch's CPU index."""
    container_tools()
    folders, find_links = torch_source()
    args = {"BASE_IMAGE": debian_base(), "PIP_FIND_LINKS": find_links}
    built = build(image_tag("cpu"), DEPLOY / "Dockerfile", ROOT, args=args, mounts=folders)
    return built, args, folders


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    """The committed example env file with an admin token, as a user's deploy/lynx.env would be."""
    path = tmp_path_factory.mktemp("env") / "lynx.env"
    text = ENV_EXAMPLE.read_text().replace("\nLYNX_ADMIN_TOKEN=\n", f"\nLYNX_ADMIN_TOKEN={TOKEN}\n")
    path.write_text(text + "# the controller's gauges, which the dashboard shows, exist under a latency budget\n"
                    "LYNX_BUDGET=tpot_ms=1000\n")  # fmt: skip
    assert f"LYNX_ADMIN_TOKEN={TOKEN}" in path.read_text()
    return path


@pytest.fixture(scope="module")
def server(cpu_image, env_file):
    """`podman run IMAGE --enable-metrics` (the compose service's arguments) with PORT set."""
    built, _, _ = cpu_image
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["lynx-sglang-cpu"]
    container = Container(built.image, service["command"], env_file=env_file, port=PORT)
    try:
        seconds = container.wait_healthy()
        report_figure(f"CPU image: healthy {seconds:.0f} s after `podman run`")
        yield container
    finally:
        container.remove()


def test_image_builds_here_and_its_size_and_build_time_are_reported(cpu_image):
    built, args, folders = cpu_image
    steps = built.steps()
    [install] = [i for i, step in enumerate(steps) if "make install" in step.splitlines()[0]]
    if not built.cached()[install]:  # this run installed: through the installer, torch from the wheel source
        assert "lynx-sglang: installing the cpu path" in steps[install]
        assert not folders or any(f"Processing {folder}/torch-" in steps[install] for folder in folders)
    size = built.size_bytes()
    assert 1e9 < size < 8e9, gb(size)  # the CPU path installs about 2.8 GB; a CUDA torch would add several
    report_figure(f"CPU image {gb(size)}, built in {built.seconds:.0f} s ({sum(built.cached())} of {len(steps)} "
                  f"steps from podman's layer cache) on {args['BASE_IMAGE']}")


def test_runs_as_a_non_root_user_and_passes_the_compose_health_check(server):
    status = server.exec("cat", "/proc/1/status", check=True).stdout  # PID 1: `lynx-sglang serve` itself
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    assert server.exec("id", "-un", check=True).stdout.strip() == "lynx"
    test = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["lynx-sglang-cpu"]["healthcheck"]["test"]
    kind, *command = test
    command = ["/bin/sh", "-c", *command] if kind == "CMD-SHELL" else command
    check = server.exec(*command)
    assert check.returncode == 0, check.stderr
    # The same check against a port nothing listens on fails: it tests what it says.
    assert server.exec("env", "PORT=1", *command).returncode != 0


def test_a_completion_over_http_from_the_host_gives_the_embedded_models_answer(server):
    body = {"model": "default", "prompt": "123+45=", "max_tokens": 8, "temperature": 0}
    status, answer = post(server.url + "/v1/completions", body)
    assert status == 200, answer
    assert answer["choices"][0]["text"].strip() == "168", answer
    # The CPU routing op was compiled on first use, by the non-root user, under its home.
    built = server.exec("sh", "-c", "ls ~/.cache/lynx_sglang/routing_cpu-*.so")
    assert built.returncode == 0, built.stderr + server.log_tail()


def test_stats_and_metrics_answer(server):
    complete_a_few(server.url)
    stats = get_json(server.url + "/lynx/stats")
    assert stats["policy"] == "lynx" and stats["decode_steps"] > 0, stats  # LYNX_POLICY from the env file
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        metrics = response.read().decode()
    assert "lynx_decode_steps_total" in metrics and "sglang:" in metrics, metrics[:2000]


def test_the_env_files_token_switches_the_policy(server):
    switch = {"policy": "budget", "budget": "fraction=0.5"}
    status, answer = post(server.url + "/lynx/policy", switch)
    assert status in (401, 403), answer  # no token, no switch
    assert get_json(server.url + "/lynx/policy")["policy"] == "lynx"
    status, answer = post(server.url + "/lynx/policy", switch, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, answer
    policy = get_json(server.url + "/lynx/policy")
    assert (policy["policy"], policy["budget"]) == ("budget", "fraction=0.5"), policy


def stream_chunks(url: str, on_first_chunk) -> list[dict]:
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps(STREAM).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    chunks = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: "):]))
                if len(chunks) == 1:
                    on_first_chunk()
    return chunks


def test_podman_stop_lets_a_stream_in_flight_finish_and_the_container_exits_0(server):
    # 48 tokens take a fraction of a second: SGLang's scheduler is held (SIGSTOP) from the first
    # chunk until the server has logged the SIGTERM, so the stream is certainly in flight then.
    [scheduler] = server.host_pids("sglang::scheduler")
    stop = {}

    def stop_while_held():
        os.kill(scheduler, signal.SIGSTOP)
        try:
            stop["start"] = time.monotonic()
            stop["process"] = subprocess.Popen(["podman", "stop", "-t", "30", server.name], env=podman_env(),
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
            while "stopping SGLang once the requests in flight finish" not in server.logs():
                assert time.monotonic() - stop["start"] < 30, "the server never logged the SIGTERM"
                time.sleep(0.2)
        finally:
            os.kill(scheduler, signal.SIGCONT)

    chunks = stream_chunks(server.url, stop_while_held)
    assert stop["process"].wait(timeout=60) == 0, stop["process"].stderr.read()
    seconds = time.monotonic() - stop["start"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    # The whole answer: every token, counted by the server (a loaded machine merges tokens into fewer chunks).
    generated = [c["usage"]["completion_tokens"] for c in chunks if c.get("usage")]
    assert finish == ["length"] and generated == [48] and len(chunks) > 2, (finish, generated, len(chunks))
    state = server.state()
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), server.log_tail()
    assert seconds < 30, f"{seconds:.0f} s: podman's SIGKILL, not the server, ended it"
    report_figure(f"CPU image: `podman stop` with a stream in flight took {seconds:.1f} s, exit 0")


def test_a_change_to_project_code_only_rebuilds_without_reinstalling(cpu_image, tmp_path):
    """The build context as the checkout's (tracked and untracked files git does not ignore), with one
    module of the project changed; every step before `COPY . .` must come from the layer cache."""
    built, args, folders = cpu_image
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    context = tmp_path / "context"
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
    # A module of the project that the install step does not read (not an __init__.py).
    changed = min(context.glob("lynx_sglang/[!_]*.py")).relative_to(context)
    marker = f"# rebuild check {uuid.uuid4().hex}"
    with open(context / changed, "a") as module:
        module.write(marker + "\n")
    tag = image_tag("cpu-rebuild")
    rebuilt = build(tag, DEPLOY / "Dockerfile", context, args=args, mounts=folders)
    try:
        steps, cached = rebuilt.steps(), rebuilt.cached()
        [code] = [i for i, step in enumerate(steps) if step.splitlines()[0].endswith("COPY . .")]
        install = next(i for i, step in enumerate(steps) if "make install" in step.splitlines()[0])
        assert install < code and all(cached[:code]), [s.splitlines()[0] for s, c in zip(steps, cached) if not c]
        assert not cached[code]  # the change itself is in the new image
        shown = podman("run", "--rm", "--entrypoint", "tail", rebuilt.image, "-n", "1", f"/opt/lynx-sglang/{changed}")
        assert shown.stdout.strip() == marker
        report_figure(f"CPU image rebuilt after a change to {changed} in {rebuilt.seconds:.0f} s "
                      f"({sum(cached)} of {len(steps)} steps from the layer cache)")
    finally:
        remove_image(tag)


# ---- the compose file, through docker-compose and podman's Docker-compatible API -----------------


@pytest.fixture(scope="module")
def stack(cpu_image, env_file, tmp_path_factory):
    """`docker-compose --profile cpu up -d lynx-sglang-cpu`, with this run's images and free host ports."""
    built, args, _ = cpu_image
    prometheus = build(image_tag("prometheus"), HERE / "prometheus.Containerfile", HERE,
                       args={"BASE_IMAGE": args["BASE_IMAGE"]})  # fmt: skip
    ports = {name: str(free_port()) for name in ("LYNX_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT")}
    images = {"lynx-sglang-cpu": image_tag("cpu"), "prometheus": image_tag("prometheus")}
    assert podman("image", "inspect", "--format", "{{.Id}}", images["prometheus"]).stdout.strip().endswith(prometheus.image)
    compose = Compose(tmp_path_factory.mktemp("compose"), images, {"LYNX_ENV_FILE": str(env_file), **ports})
    try:
        compose("--profile", "cpu", "up", "-d", "--no-build", "lynx-sglang-cpu")
        compose.urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        yield compose
    finally:
        compose.close()


def wait_for_health_check(container: str, timeout: float = 300) -> float:
    """Seconds until `podman healthcheck run` (the compose file's check, as compose set it) passes."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if podman("healthcheck", "run", container, check=False).returncode == 0:
            return time.monotonic() - start
        time.sleep(2)
    health = podman("inspect", "--format", "{{json .State.Health}}", container).stdout
    pytest.fail(f"{container}: health check still failing after {timeout:.0f} s: {health[-1500:]}")


def test_compose_starts_the_cpu_service_by_name_and_its_health_check_passes(stack):
    assert stack.containers() == stack.containers("lynx-sglang-cpu", all_states=False)  # alone: not the GPU one
    [server] = stack.containers("lynx-sglang-cpu")
    seconds = wait_for_health_check(server)
    # init: true put an init (podman's catatonit, mounted as podman-init) before the entrypoint as PID 1.
    init, *args = podman("exec", server, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert init.endswith("-init") and "/opt/lynx-sglang/deploy/entrypoint.sh" in args, (init, args)
    status, answer = post(stack.urls["LYNX_PORT"] + "/v1/completions",
                          {"model": "default", "prompt": "123+45=", "max_tokens": 8, "temperature": 0})  # fmt: skip
    assert status == 200 and answer["choices"][0]["text"].strip() == "168", answer
    report_figure(f"compose: lynx-sglang-cpu healthy {seconds:.0f} s after `up`")


def test_prometheus_scrapes_the_service_and_answers_the_dashboards_queries(stack):
    stack("--profile", "cpu", "--profile", "monitoring", "up", "-d", "--no-build", "prometheus")
    assert set(stack.containers(all_states=False)) == {*stack.containers("lynx-sglang-cpu"), *stack.containers("prometheus")}
    [prometheus] = stack.containers("prometheus")
    wait_for_health_check(prometheus, timeout=120)
    url = stack.urls["PROMETHEUS_PORT"]
    deadline = time.monotonic() + 90
    while not (http_status(url + "/-/ready") == 200 and prometheus_query(url, 'up{job="lynx-sglang"} == 1')):
        assert time.monotonic() < deadline, f"Prometheus never scraped lynx-server:30000:\n{podman('logs', prometheus).stderr[-2000:]}"
        time.sleep(2)
    complete_a_few(stack.urls["LYNX_PORT"])  # inside the 1 m windows of the rate() panels
    deadline = time.monotonic() + 90  # two 5 s scrapes after the requests, for rate() and the quantiles
    while empty := [q for q in dashboard_queries() if not prometheus_query(url, as_prometheus_query(q))]:
        assert time.monotonic() < deadline, f"dashboard queries with no data: {empty}"
        time.sleep(5)


def test_compose_down_removes_the_containers_network_and_volumes(stack):
    stack("--profile", "cpu", "--profile", "monitoring", "down", "-v", timeout=180)
    assert stack.containers() == []
    assert podman("network", "exists", f"{stack.project}_default", check=False).returncode != 0
    volumes = podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [v for v in volumes if v.startswith(stack.project)], volumes
