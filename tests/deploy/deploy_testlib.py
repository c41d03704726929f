"""Shared by the deploy tests: the files under deploy/, the tools that validate them, PromQL names."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from live_server import post

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "lynx.env.example"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lynx-sglang.json"
PROMETHEUS_DIR = DEPLOY / "prometheus"
SERVER_SERVICES = ("lynx-sglang", "lynx-sglang-cpu")
APT_TIMEOUT_S = 300


@functools.cache
def debian_tool(command: str, package: str) -> str:
    """Path of `command`; installs Debian's `package` for it when missing (root only), else skips."""
    found = shutil.which(command)
    if not found:
        apt_install([package], f"{command} is not installed", recommends=False)
        found = shutil.which(command)
    if not found:
        pytest.skip(f"Debian's {package} installed no {command}")
    return found


def apt_install(packages: list[str], why: str, *, recommends: bool) -> None:
    """`apt-get install` of Debian's `packages` (root only, `apt-get update` first if that fails), or skip
    saying `why` they were wanted and what went wrong."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{why}, and installing Debian's {' '.join(packages)} needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", *([] if recommends else ["--no-install-recommends"]), *packages]

    def apt(args):  # an unreachable mirror hangs rather than fails: bound it, and skip
        try:
            return subprocess.run(args, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{why}; `{' '.join(args[:2])}` ran past {APT_TIMEOUT_S} s")

    # Test workers running in parallel (pytest -n) would otherwise fight over dpkg's lock.
    with open(Path(tempfile.gettempdir()) / "lynx-sglang-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if apt(install).returncode != 0:
            apt(["apt-get", "update"])
            result = apt(install)
            if result.returncode != 0:
                pytest.skip(f"{why}; `apt-get install {' '.join(packages)}` failed: {result.stderr.strip()[-300:]}")


# ---- PromQL ----------------------------------------------------------------------------------------

# Words that can stand where a metric name would, but are not one.
_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                    "and", "or", "unless", "inf", "nan", "atan2"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, labels,
    strings, durations or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # label values, regexes
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery windows
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", expr):
        followed_by = expr[match.end():].lstrip()[:1]
        if followed_by != "(" and match.group() not in _PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def as_prometheus_query(expr: str) -> str:
    """A Grafana panel expression as Prometheus itself would run it (all instances, a fixed window)."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variable queries."""
    queries = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        # label_values(<selector>, <label>) names a metric the way a panel query does.
        queries.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))
    return queries


def dashboard_metric_names() -> set[str]:
    return set().union(*(promql_metric_names(q) for q in dashboard_queries()))


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file, as compose reads them (no quotes, no expansion)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value for key, value in pairs}


# ---- a running server and Prometheus over HTTP ---------------------------------------------------


def complete_a_few(url, count=8):
    """Concurrent requests, so decode batches hold several tokens for the policy to prune."""
    body = {"model": "default", "prompt": "123+45=", "max_tokens": 8, "temperature": 0}
    with ThreadPoolExecutor(count) as pool:
        for status, answer in pool.map(lambda _: post(url + "/v1/completions", body), range(count)):
            assert status == 200, answer


def prometheus_query(url, query) -> list:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=10) as r:
        answer = json.loads(r.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]
