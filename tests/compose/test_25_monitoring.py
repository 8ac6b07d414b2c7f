"""Observability of the compose stack: every Prometheus target is up, a replica out of service alerts end to end,
and every dashboard panel's query returns data. The same rules, scrape jobs and dashboards as the local target."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from infra.alerts import prometheus_url
from infra.compose.deploy import containers
from infra.config import StackConfig
from infra.console import wait_until
from infra.render.dashboards import dashboards, panel_queries
from tests.compose.conftest import ComposeStack
from tests.conftest import create_monitored_workload

pytestmark = pytest.mark.compose

ALERT_TIMEOUT_S = 180
DATA_TIMEOUT_S = 120


def _query(stack: ComposeStack, expr: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=prometheus_url(stack.config), timeout=10, trust_env=False) as client:
        body = client.get("/api/v1/query", params={"query": expr}).json()
    assert body.get("status") == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _targets(stack: ComposeStack) -> list[dict[str, Any]]:
    with httpx.Client(base_url=prometheus_url(stack.config), timeout=10, trust_env=False) as client:
        active: list[dict[str, Any]] = client.get("/api/v1/targets").json()["data"]["activeTargets"]
    return active


def _down(stack: ComposeStack) -> list[str]:
    return [f"{t['labels'].get('component')} ({t['health']}: {t['lastError']})"
            for t in _targets(stack) if t["health"] != "up"]


def test_every_scrape_target_is_up(compose_stack: ComposeStack) -> None:
    wait_until(lambda: bool(_targets(compose_stack)) and not _down(compose_stack), 90, "every scrape target up",
               fix="see invoke status --target compose")
    components = {t["labels"].get("component") for t in _targets(compose_stack)}
    assert components == {"prometheus", "alertmanager", "node", "haproxy", "postgres", "redis", "prefect-exporter",
                          *(f"api-{i}" for i in range(1, compose_stack.config.api.replicas + 1))}


def _firing(stack: ComposeStack, alert: str, server: str) -> bool:
    result = stack.invoke("alerts", "--json")
    assert result.returncode == 0, result.stderr
    return any(a["name"] == alert and a["labels"].get("server") == server for a in json.loads(result.stdout))


def test_a_replica_out_of_service_alerts_and_resolves(compose_stack: ComposeStack) -> None:
    victim = containers(compose_stack.docker, compose_stack.config.compose.project)["api-2"]
    victim.stop(timeout=30)
    try:
        wait_until(lambda: _firing(compose_stack, "PrefectApiReplicaDown", "api-2"), ALERT_TIMEOUT_S,
                   "PrefectApiReplicaDown for api-2 in Alertmanager", fix="invoke logs prometheus --target compose")
    finally:
        victim.start()
    wait_until(lambda: not _firing(compose_stack, "PrefectApiReplicaDown", "api-2"), ALERT_TIMEOUT_S,
               "PrefectApiReplicaDown resolving", fix="invoke logs alertmanager --target compose")
    compose_stack.wait_healthy("after api-2 came back")


@pytest.fixture(scope="module")
def workload(compose_stack: ComposeStack) -> None:
    """What every panel shows data for (as on the local target): a deployment in a work pool with a worker, late,
    running and failed runs, a running task run, traffic through the load balancer, a verified backup."""
    with compose_stack.client() as client:
        create_monitored_workload(client)
    for command in (("backup",), ("backup.verify", "--latest")):
        result = compose_stack.invoke(*command)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _panel_cases() -> list[Any]:
    return [pytest.param(file, index, id=f"{file.removesuffix('.json')}:{title}#{index}")
            for file, model in dashboards(StackConfig()).items()
            for index, (title, _) in enumerate(panel_queries(model))]


@pytest.mark.parametrize(("file", "index"), _panel_cases())
def test_every_dashboard_panel_query_returns_data(compose_stack: ComposeStack, workload: None, file: str,
                                                  index: int) -> None:
    title, expr = panel_queries(dashboards(compose_stack.config)[file])[index]

    def shows_data() -> bool:
        # Rate panels show data only while there is traffic in their window: keep some flowing, as a live stack has.
        with compose_stack.client() as client:
            client.get("/health")
        return bool(_query(compose_stack, expr))

    wait_until(shows_data, DATA_TIMEOUT_S, f"data for panel {title!r} ({expr})",
               fix="check the exporter behind it: invoke status --target compose", interval_s=1)
