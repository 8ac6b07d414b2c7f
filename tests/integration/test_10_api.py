"""Using the deployed stack through the load balancer, as Prefect clients do."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest

from infra.kubernetes import migrations
from infra.secrets import load_secrets
from tests.integration.conftest import REPLICAS, Stack


def test_three_replicas_started_together_on_a_fresh_database(stack: Stack) -> None:
    started = [name for name in stack.first_deploy.started if name.startswith("api-")]
    assert len(started) == REPLICAS
    assert stack.first_deploy.migrated


def test_status_reports_every_component_healthy(stack: Stack) -> None:
    result = stack.invoke("status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    status = stack.status()
    names = {c["name"] for c in status["components"]}  # type: ignore[union-attr, index]
    assert status["healthy"] is True
    expected = {"postgres", "pgbouncer", "redis", "s3", "haproxy", "backup-scheduler", "log-pruner", "prometheus",
                "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter", "prefect-exporter"}
    assert names == expected | {f"api-{i}" for i in (1, 2, 3)} | {f"services-{i}" for i in (1, 2)} | {
        "worker-default-1"}


@pytest.mark.parametrize("field", ["name", "healthy", "pid", "port", "version", "state"])
def test_status_json_has_field(stack: Stack, field: str) -> None:
    for component in stack.status()["components"]:  # type: ignore[union-attr]
        assert field in component


def test_create_flow_and_read_it_back(stack: Stack) -> None:
    with stack.client() as client:
        name = f"flow-{uuid.uuid4().hex[:8]}"
        created = client.post("/flows/", json={"name": name})
        assert created.status_code in (200, 201)
        read = client.get(f"/flows/{created.json()['id']}")
        assert read.json()["name"] == name


def test_create_and_read_flow_runs(stack: Stack) -> None:
    with stack.client() as client:
        flow_id = client.post("/flows/", json={"name": "runs-test"}).json()["id"]
        ids = [client.post("/flow_runs/", json={"flow_id": flow_id}).json()["id"] for _ in range(10)]
        listed = client.post("/flow_runs/filter", json={"flows": {"id": {"any_": [flow_id]}}, "limit": 50})
        assert {run["id"] for run in listed.json()} == set(ids)


def test_reads_are_spread_over_replicas(stack: Stack) -> None:
    """Each replica serves traffic: HAProxy's per-server request counters all move. Requests go out several at a
    time: leastconn counts the websockets a worker keeps open, so one client's requests in sequence would all go to
    the replicas holding fewer of them."""
    from concurrent.futures import ThreadPoolExecutor

    from infra.haproxy_runtime import server_stats

    def requests(_: int) -> None:
        with stack.client() as client:
            for _ in range(5):
                client.post("/flows/filter", json={})

    before = {k: int(v["stot"]) for k, v in server_stats(stack.layout.haproxy_socket).items()}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(requests, range(8)))
    after = {k: int(v["stot"]) for k, v in server_stats(stack.layout.haproxy_socket).items()}
    assert all(after[name] > before[name] for name in before)


@pytest.mark.parametrize("auth", [None, ("admin", "wrong-password")], ids=["no-credentials", "wrong-password"])
def test_request_without_valid_credentials_is_refused(stack: Stack, auth: tuple[str, str] | None) -> None:
    response = httpx.post(f"{stack.url}/flows/filter", json={}, auth=auth, timeout=10)
    assert response.status_code == 401


def test_health_endpoint_is_open_for_load_balancers(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200


def test_metrics_endpoint_needs_auth_and_serves_prometheus_text(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/metrics", timeout=10).status_code == 401
    with stack.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE" in response.text


def test_ui_is_served_through_the_load_balancer(stack: Stack) -> None:
    response = httpx.get(stack.url.removesuffix("/api") + "/", timeout=10)
    assert response.status_code == 200
    assert "<html" in response.text.lower()


def test_haproxy_prometheus_endpoint_lists_the_api_servers(stack: Stack) -> None:
    lb = stack.config.load_balancer
    text = httpx.get(f"http://127.0.0.1:{lb.stats_port}/metrics", timeout=10).text
    assert 'proxy="prefect_api",server="api-3"' in text


def test_haproxy_stats_page_needs_its_password(stack: Stack) -> None:
    lb = stack.config.load_balancer
    assert httpx.get(f"http://127.0.0.1:{lb.stats_port}/stats", timeout=10).status_code == 401


def test_a_real_flow_runs_against_the_stack(stack: Stack, tmp_path: Path) -> None:
    script = tmp_path / "hello_flow.py"
    script.write_text(textwrap.dedent("""
        from prefect import flow, task

        @task
        def square(x: int) -> int:
            return x * x

        @flow(name="stack-smoke")
        def smoke() -> int:
            return sum(square.map(range(5)).result())

        if __name__ == "__main__":
            print("result", smoke())
    """))
    user, password = stack.auth
    env = {
        **os.environ, "PREFECT_API_URL": stack.url, "PREFECT_API_AUTH_STRING": f"{user}:{password}",
        "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert "result 30" in result.stdout, result.stderr[-2000:]
    with stack.client() as client:
        flows = client.post("/flows/filter", json={"flows": {"name": {"any_": ["stack-smoke"]}}}).json()
        runs = client.post("/flow_runs/filter", json={"flows": {"id": {"any_": [flows[0]["id"]]}}}).json()
    assert [run["state_type"] for run in runs] == ["COMPLETED"]


EVENTS_ROUND_TRIP = """
import asyncio, sys
from prefect.events import Event
from prefect.events.clients import PrefectEventsClient, PrefectEventSubscriber
from prefect.events.filters import EventFilter, EventNameFilter

async def main(name: str) -> None:
    # Both websockets go through HAProxy; the event crosses replicas through the Redis broker.
    async with PrefectEventSubscriber(filter=EventFilter(event=EventNameFilter(name=[name]))) as subscriber:
        async with PrefectEventsClient() as client:
            await client.emit(Event(event=name, resource={"prefect.resource.id": "prefect-stack.test"}))
        async def first() -> str:
            async for event in subscriber:
                return event.event
            return ""
        print("received", await asyncio.wait_for(first(), 60))

asyncio.run(main(sys.argv[1]))
"""


def test_events_round_trip_over_websockets_through_the_load_balancer(stack: Stack, tmp_path: Path) -> None:
    name = f"prefect-stack.test.{uuid.uuid4().hex[:8]}"
    user, password = stack.auth
    env = {
        **os.environ, "PREFECT_API_URL": stack.url, "PREFECT_API_AUTH_STRING": f"{user}:{password}",
        "PREFECT_HOME": str(tmp_path),
    }
    result = subprocess.run([sys.executable, "-c", EVENTS_ROUND_TRIP, name], env=env, capture_output=True,
                            text=True, timeout=120)
    assert f"received {name}" in result.stdout, result.stderr[-2000:]


def test_invoke_env_lets_the_prefect_cli_work(stack: Stack, tmp_path: Path) -> None:
    exports = stack.invoke("env", check=True).stdout
    command = f'{exports}\nexport PREFECT_HOME={tmp_path}\n"{Path(sys.executable).parent}/prefect" flow-run ls'
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_kubernetes_schema_check_sees_the_migrated_database_as_current(stack: Stack) -> None:
    """The API pods' init container on Kubernetes (infra.kubernetes.migrations), against this real migrated
    database through PgBouncer's transaction pool, as the pods reach theirs."""
    config = stack.config
    password = load_secrets(stack.layout.secrets).get("postgres_prefect")
    base = f"postgresql://{config.postgres.user}:{password}@127.0.0.1:{config.pgbouncer.port}"
    head = migrations.head_revision()
    assert migrations.current_revision(f"{base}/{config.postgres.database}?sslmode=disable") == head
    # No database (or no schema yet): nothing to compare, the pods keep waiting.
    assert migrations.current_revision(f"{base}/no_such_database?sslmode=disable") is None
