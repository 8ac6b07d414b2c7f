"""The observability layer on the deployed stack: every target is scraped, an alert fires and resolves end to
end (Prometheus -> Alertmanager -> invoke alerts), and every dashboard panel's query returns data."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from infra.alerts import prometheus_url
from infra.config import StackConfig
from infra.console import wait_until
from infra.local.supervisor import Supervisor
from infra.render.dashboards import dashboards, panel_queries
from infra.render.prometheus import SCRAPE_PASSWORD_FILE
from infra.secrets import load_secrets
from tests.conftest import create_monitored_workload
from tests.integration.conftest import Stack

ALERT_TIMEOUT_S = 120  # scrape 1 s + for 2 s + evaluation 1 s + Alertmanager; generous for a busy machine
DATA_TIMEOUT_S = 90
MONITORING_COMPONENTS = ["prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter",
                         "prefect-exporter"]


def _prometheus(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=prometheus_url(stack.current_config()), timeout=10, trust_env=False)


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    with _prometheus(stack) as client:
        response = client.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert body.get("status") == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _targets(stack: Stack) -> list[dict[str, Any]]:
    with _prometheus(stack) as client:
        active: list[dict[str, Any]] = client.get("/api/v1/targets").json()["data"]["activeTargets"]
    return active


def _down_targets(stack: Stack) -> list[str]:
    return [f"{t['labels'].get('component')} ({t['health']}: {t['lastError']})"
            for t in _targets(stack) if t["health"] != "up"]


@pytest.mark.parametrize("name", MONITORING_COMPONENTS)
def test_status_shows_the_monitoring_component_healthy(stack: Stack, name: str) -> None:
    components = {c["name"]: c for c in stack.status()["components"]}  # type: ignore[union-attr, index]
    assert components[name]["healthy"], components[name]


def test_every_scrape_target_is_up(stack: Stack) -> None:
    wait_until(lambda: _targets(stack) and not _down_targets(stack), 60, "every scrape target",
               fix="see the targets below")
    components = {t["labels"].get("component") for t in _targets(stack)}
    replicas = stack.current_config().api.replicas
    expected = {"prometheus", "alertmanager", "node", "haproxy", "postgres", "redis", "prefect-exporter",
                *(f"api-{i}" for i in range(1, replicas + 1))}
    assert components == expected
    assert _down_targets(stack) == []


def test_prometheus_scrapes_each_replica_through_the_metrics_listener(stack: Stack) -> None:
    config = stack.current_config()
    listener = f"127.0.0.1:{config.monitoring.api_metrics_port}"
    wait_until(lambda: all(t["health"] == "up" for t in _targets(stack) if t["labels"]["job"] == "prefect-api"), 60,
               "the prefect-api targets up", fix="read invoke logs haproxy and prometheus")
    api = {t["labels"]["component"]: t for t in _targets(stack) if t["labels"]["job"] == "prefect-api"}
    replicas = range(1, config.api.replicas + 1)
    assert {name: (t["scrapeUrl"], t["health"]) for name, t in api.items()} == {
        f"api-{i}": (f"http://{listener}/api-{i}/metrics", "up") for i in replicas}
    # What the replica served: Prefect's process metrics, one series per replica.
    memory = _query(stack, 'process_resident_memory_bytes{job="prefect-api"}')
    assert sorted(r["metric"]["component"] for r in memory) == [f"api-{i}" for i in replicas]


def test_prometheus_holds_only_its_own_credential(stack: Stack) -> None:
    secrets = load_secrets(stack.layout.secrets)
    admin_password = secrets.get("prefect_auth").partition(":")[2]
    files = [stack.layout.etc / "prometheus.yml", stack.layout.etc / SCRAPE_PASSWORD_FILE]
    assert [f.name for f in files if admin_password in f.read_text()] == []
    assert (stack.layout.etc / SCRAPE_PASSWORD_FILE).read_text() == secrets.get("prometheus_scrape")


def _metrics_listener(stack: Stack) -> httpx.Client:
    config = stack.current_config()
    return httpx.Client(base_url=f"http://127.0.0.1:{config.monitoring.api_metrics_port}", timeout=10,
                        trust_env=False)


def _scrape_auth(stack: Stack) -> tuple[str, str]:
    return "prometheus", load_secrets(stack.layout.secrets).get("prometheus_scrape")


def test_metrics_listener_serves_a_replicas_metrics_to_prometheus(stack: Stack) -> None:
    with _metrics_listener(stack) as client:
        response = client.get("/api-2/metrics", auth=_scrape_auth(stack))
    assert response.status_code == 200 and "process_resident_memory_bytes" in response.text


@pytest.mark.parametrize(("method", "path", "credential", "status"), [
    ("POST", "/api-1/metrics", "prometheus", 405),
    ("PUT", "/api-1/metrics", "prometheus", 405),
    ("GET", "/api/metrics", "prometheus", 404),
    ("GET", "/api-1/flows/", "prometheus", 404),
    ("GET", "/api/health", "prometheus", 404),
    ("GET", "/api-1/metrics", "wrong", 401),
    ("GET", "/api-1/metrics", "admin", 401),
    ("GET", "/api-1/metrics", "none", 401),
    ("POST", "/api/flows/filter", "admin", 401),
], ids=["post", "put", "api-path", "other-api-path", "health", "wrong-password", "api-admin", "no-credential",
        "admin-post"])
def test_metrics_listener_refuses(stack: Stack, method: str, path: str, credential: str, status: int) -> None:
    secrets = load_secrets(stack.layout.secrets)
    auth = {"prometheus": _scrape_auth(stack), "wrong": ("prometheus", "not-the-password"),
            "admin": tuple(secrets.get("prefect_auth").split(":", 1)), "none": None}[credential]
    with _metrics_listener(stack) as client:
        response = client.request(method, path, auth=auth)  # type: ignore[arg-type]
    assert response.status_code == status, response.text[:200]


def _firing(stack: Stack, alert: str, server: str) -> bool:
    result = stack.invoke("alerts", "--json")
    assert result.returncode == 0, result.stderr
    return any(a["name"] == alert and a["labels"].get("server") == server for a in json.loads(result.stdout))


def test_a_replica_out_of_service_alerts_and_resolves(stack: Stack) -> None:
    supervisor = Supervisor(stack.layout)
    supervisor.stop("api-2")
    try:
        wait_until(lambda: _firing(stack, "PrefectApiReplicaDown", "api-2"), ALERT_TIMEOUT_S,
                   "PrefectApiReplicaDown for api-2 in Alertmanager", fix="read invoke logs prometheus/alertmanager")
        shown = stack.invoke("alerts")
        assert shown.returncode == 0
        assert "PrefectApiReplicaDown api-2" in shown.stdout
        assert "runbook: docs/runbooks.md#prefectapireplicadown" in shown.stdout
    finally:
        supervisor.start("api-2")
    wait_until(lambda: not _firing(stack, "PrefectApiReplicaDown", "api-2"), ALERT_TIMEOUT_S,
               "PrefectApiReplicaDown resolving", fix="read invoke logs alertmanager")


def test_alerts_without_alertmanager_name_the_problem(stack: Stack) -> None:
    supervisor = Supervisor(stack.layout)
    supervisor.stop("alertmanager")
    try:
        result = stack.invoke("alerts")
    finally:
        supervisor.start("alertmanager")
    assert result.returncode == 1
    assert "Alertmanager" in result.stderr and "fix:" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def workload(stack: Stack) -> None:
    """What every panel shows data for: a deployment in a work pool with a worker, late, running and failed flow
    runs, a running task run, traffic through the load balancer, and a verified backup's metrics."""
    with stack.client() as client:
        create_monitored_workload(client)
    for command in (("backup",), ("backup.verify", "--latest")):
        result = stack.invoke(*command)
        assert result.returncode == 0, result.stderr[-2000:]


def _panel_cases() -> list[Any]:
    cases = []
    for file, model in dashboards(StackConfig()).items():
        for index, (title, _) in enumerate(panel_queries(model)):
            cases.append(pytest.param(file, index, id=f"{file.removesuffix('.json')}:{title}#{index}"))
    return cases


@pytest.mark.parametrize(("file", "index"), _panel_cases())
def test_every_dashboard_panel_query_returns_data(stack: Stack, workload: None, file: str, index: int) -> None:
    title, expr = panel_queries(dashboards(stack.current_config())[file])[index]
    wait_until(lambda: bool(_query(stack, expr)), DATA_TIMEOUT_S, f"data for panel {title!r} ({expr})",
               fix="check the exporter behind it: invoke status")
