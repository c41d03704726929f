"""Prometheus and Grafana configuration under deploy/: promtool validates the config, the alert rules
and every dashboard query; the pieces name each other consistently (scrape target, data source,
dashboard folder); Grafana's provisioning files hold only what Grafana's source reads."""

import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from deploy_testlib import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_DIR,
    SERVER_SERVICES,
    as_prometheus_query,
    dashboard,
    dashboard_queries,
    debian_tool,
    promql_metric_names,
)

GRAFANA = DEPLOY / "grafana" / "provisioning"


@pytest.fixture(scope="module")
def promtool():
    return debian_tool("promtool", "prometheus")


def run_promtool(promtool, *args, cwd=PROMETHEUS_DIR):
    result = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_prometheus_config_validates(promtool):
    assert "SUCCESS" in run_promtool(promtool, "check", "config", "prometheus.yml")


def test_alert_rules_validate_and_fire_as_intended(promtool):
    assert "SUCCESS: 4 rules found" in run_promtool(promtool, "check", "rules", "alerts.yml")
    tests = Path(__file__).with_name("alerts_test.yml")
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", tests.name, cwd=tests.parent)


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    # Prometheus' own parser checks each query, as the expression of a recording rule.
    rules = [{"record": f"dashboard:query_{i}", "expr": as_prometheus_query(q)} for i, q in enumerate(dashboard_queries())]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool(promtool, "check", "rules", "queries.yml", cwd=tmp_path)


def collector_sample_names() -> set[str]:
    """Sample names lynx-sglang's /metrics collector writes for a stats snapshot under a latency budget:
    the fast check; tests/deploy/test_deploy_metrics_live.py scrapes a real server."""
    import torch
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from lynx_sglang.kernels.bookkeeping import bookkeeping_named
    from lynx_sglang.scheduler.stats import MoeLayerInfo, RoutingStats
    from lynx_sglang.server.metrics import LynxCollector

    layer = MoeLayerInfo(layer_id=1, num_experts=8, top_k=2, expert_bytes=1024)
    figures = RoutingStats([layer], torch.device("cpu"), bookkeeping_named("torch")).snapshot()
    collector = LynxCollector()
    collector.snapshot = {
        "policy": "lynx", "params": {}, "budget": "tpot_ms=50", "budget_experts": 4, "kernel": "auto",
        "decode_steps": 3, "pruned_steps": 3, "passthrough_steps": 1, "policy_failures": 0,
        "controller": {"target_tpot_ms": 50.0, "measured_tpot_ms": 40.0}, **figures,
    }  # fmt: skip
    registry = CollectorRegistry()
    registry.register(collector)
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {sample.name for family in families for sample in family.samples}


def test_every_lynx_metric_the_dashboard_and_alerts_query_is_one_lynx_sglang_exports():
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    queried = set().union(*(promql_metric_names(q) for q in [*dashboard_queries(), *(r["expr"] for r in rules)]))
    lynx = {name for name in queried if name.startswith("lynx_")}
    assert lynx and lynx <= collector_sample_names(), sorted(lynx - collector_sample_names())


def test_promql_names_are_found_in_every_position():
    expr = ('histogram_quantile(0.9, sum by (le) (rate(sglang:x_bucket{instance=~"$instance", a="b(c)"}'
            '[$__rate_interval]))) / on(instance) group_left(policy) lynx_y offset 5m > bool 1e-3')
    assert promql_metric_names(expr) == {"sglang:x_bucket", "lynx_y"}


def test_prometheus_scrapes_the_servers_network_alias():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    [job] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    [target] = [t for group in job["static_configs"] for t in group["targets"]]
    host, port = target.split(":")
    for name in SERVER_SERVICES:
        server = compose["services"][name]
        assert host in server["networks"]["default"]["aliases"], name
        assert any(p.endswith(f":{port}") for p in server["ports"]), name  # the port the container serves
    assert job["metrics_path"] == "/metrics"


def test_grafana_reads_the_provisioned_prometheus_and_dashboard():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    [source] = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlparse(source["url"])
    assert url.hostname in compose["services"] and url.port == 9090

    [provider] = yaml.safe_load((GRAFANA / "dashboards" / "lynx-sglang.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts[f"./{DASHBOARD.parent.relative_to(DEPLOY)}"] == provider["options"]["path"]

    panels = dashboard()["panels"]
    assert len(panels) >= 10
    for panel in panels:
        uids = {panel["datasource"]["uid"]} | {t["datasource"]["uid"] for t in panel["targets"]}
        assert uids == {source["uid"]}, panel["title"]


# What Grafana 12's provisioning reads (apiVersion 1), from its source: the yaml tags of
# upsertDataSourceFromConfigV1 in pkg/services/provisioning/datasources/types.go and of `configs` in
# pkg/services/provisioning/dashboards/types.go. Grafana ignores any other key without a word, so a
# misspelt one would silently do nothing. Grafana is not packaged by Debian and no registry is
# reachable here: these files are checked against its source, not loaded by a running Grafana.
GRAFANA_DATASOURCE_KEYS = {
    "orgId": int, "orgName": str, "version": int, "name": str, "type": str, "access": str, "url": str, "user": str,
    "database": str, "basicAuth": bool, "basicAuthUser": str, "withCredentials": bool, "isDefault": bool,
    "correlations": list, "jsonData": dict, "secureJsonData": dict, "editable": bool, "uid": str,
}  # fmt: skip
GRAFANA_PROVIDER_KEYS = {
    "name": str, "type": str, "orgId": int, "folder": str, "folderUid": str, "editable": bool, "options": dict,
    "disableDeletion": bool, "updateIntervalSeconds": int, "allowUiUpdates": bool,
}  # fmt: skip
# Panels Grafana ships (public/app/plugins/panel/) that the dashboard uses; no plugin to install.
GRAFANA_BUILTIN_PANELS = {"timeseries", "stat", "bargauge", "gauge", "table", "text", "barchart", "heatmap"}


def check_keys(entry: dict, known: dict[str, type], where: str) -> None:
    unknown = set(entry) - set(known)
    assert not unknown, f"{where}: keys Grafana does not read: {sorted(unknown)}"
    for key, value in entry.items():
        assert isinstance(value, known[key]), f"{where}: {key} should be {known[key].__name__}, is {value!r}"


def test_grafana_provisioning_files_hold_only_what_grafana_reads():
    sources = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text())
    assert sources["apiVersion"] == 1 and set(sources) == {"apiVersion", "datasources"}
    for source in sources["datasources"]:
        check_keys(source, GRAFANA_DATASOURCE_KEYS, f"data source {source.get('name')}")
        assert source["type"] == "prometheus" and source["access"] in ("proxy", "direct")
    providers = yaml.safe_load((GRAFANA / "dashboards" / "lynx-sglang.yml").read_text())
    assert providers["apiVersion"] == 1 and set(providers) == {"apiVersion", "providers"}
    for provider in providers["providers"]:
        check_keys(provider, GRAFANA_PROVIDER_KEYS, f"dashboard provider {provider.get('name')}")
        assert provider["type"] == "file" and set(provider["options"]) <= {"path", "foldersFromFilesStructure"}
    # The file provider loads every *.json under options.path; a dashboard needs a title (Grafana
    # refuses one without) and a uid of at most 40 characters from [a-zA-Z0-9-_].
    board = dashboard()
    assert DASHBOARD.suffix == ".json" and board["title"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"]), board["uid"]
    assert {panel["type"] for panel in board["panels"]} <= GRAFANA_BUILTIN_PANELS
