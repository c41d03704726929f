"""The real server, launched as the CPU container launches it (deploy/entrypoint.sh, the compose
service's arguments, the example env file), exports every metric the Grafana dashboard and the
alert rules query, in valid Prometheus text format; a real Prometheus scraping it answers every
dashboard query with data. One server for the module."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_testlib import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    PROMETHEUS_DIR,
    as_prometheus_query,
    complete_a_few,
    dashboard_metric_names,
    dashboard_queries,
    debian_tool,
    env_file,
    prometheus_query,
    promql_metric_names,
)
from live_server import RunningServer, free_port
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

# The controller's lynx_controller_* gauges exist only under a latency budget; the dashboard shows them.
LATENCY_BUDGET = {"LYNX_BUDGET": "tpot_ms=1000"}


def scrape(url) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["lynx-sglang-cpu"]
    srv = RunningServer(
        [], tmp_path_factory.mktemp("deploy") / "server.log",
        # The container's command line; then a test host and port (the last flag wins).
        command=["sh", str(DEPLOY / "entrypoint.sh"), *service["command"], "--host", "127.0.0.1", "--port", "{port}"],
        env={**env_file(ENV_EXAMPLE), **LATENCY_BUDGET,
             "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])},
    )
    try:
        srv.wait_healthy()
        complete_a_few(srv.url)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def exported(server) -> set[str]:
    """Sample names of one scrape, parsed by prometheus_client's text-format parser."""
    families = list(text_string_to_metric_families(scrape(server.url)))
    return {sample.name for family in families for sample in family.samples}


def test_metrics_parse_and_carry_both_sglang_and_lynx_figures(exported):
    assert any(n.startswith("sglang:") for n in exported) and any(n.startswith("lynx_") for n in exported)


def test_every_metric_the_dashboard_queries_is_exported(exported):
    wanted = dashboard_metric_names()
    # The names come from the dashboard's PromQL; make sure the parsing found the panels' metrics.
    assert {"lynx_layer_distinct_experts_before", "sglang:request_time_per_output_token_seconds_bucket",
            "lynx_policy_info"} <= wanted
    assert wanted <= exported, f"queried by the dashboard but not exported: {sorted(wanted - exported)}"


def test_every_metric_the_alerts_query_is_exported(exported):
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    wanted = set().union(*(promql_metric_names(rule["expr"]) for rule in rules)) - {"up"}  # `up` is Prometheus' own
    assert wanted and wanted <= exported, f"queried by an alert but not exported: {sorted(wanted - exported)}"


def test_prometheus_answers_every_dashboard_query_with_data(server, tmp_path):
    prometheus = debian_tool("prometheus", "prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [server.url.removeprefix("http://")]}]
    job["scrape_interval"] = "1s"  # enough samples for rate() within seconds
    config.pop("rule_files")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = open(tmp_path / "prometheus.log", "wb")
    process = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={url[7:]}"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if prometheus_query(url, 'up{job="lynx-sglang"} == 1'):
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"Prometheus never scraped the server:\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}")
        complete_a_few(server.url)  # requests inside Prometheus' window, for the rate() and TPOT panels
        time.sleep(4)
        empty = [q for q in dashboard_queries() if not prometheus_query(url, as_prometheus_query(q))]
        assert not empty, f"dashboard queries with no data: {empty}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
