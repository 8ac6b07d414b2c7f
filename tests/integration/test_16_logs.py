"""``invoke logs`` over the deployed local stack: every component's records merged in time order, one request
found in the load balancer's and an API replica's lines."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.integration.conftest import Stack


@pytest.fixture(scope="module")
def request_id(stack: Stack) -> str:
    """A request through the load balancer whose path carries an id of its own (an unknown flow run: 404)."""
    marker = str(uuid.uuid4())
    with stack.client() as client:
        assert client.get(f"/flow_runs/{marker}").status_code == 404
    return marker


@pytest.fixture(scope="module")
def recent(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    result = stack.invoke("logs", "all", "--since", "5m", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_recent_records_are_in_time_order(recent: list[dict[str, Any]]) -> None:
    times = [record["time"] for record in recent]
    assert times == sorted(times)


def test_recent_records_come_from_several_components(recent: list[dict[str, Any]]) -> None:
    components = {record["component"] for record in recent}
    assert {"haproxy", "pgbouncer"} <= components and any(c.startswith("api-") for c in components), components


@pytest.mark.parametrize("field", ["time", "level", "component", "message"])
def test_every_record_has_the_common_field(recent: list[dict[str, Any]], field: str) -> None:
    assert all(field in record for record in recent)


def test_grep_finds_the_request_at_the_load_balancer_and_a_replica(stack: Stack, request_id: str) -> None:
    result = stack.invoke("logs", "all", "--grep", request_id, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    components = {json.loads(line)["component"] for line in result.stdout.splitlines()}
    assert "haproxy" in components and any(c.startswith("api-") for c in components), components


def test_postgres_writes_jsonlog_files_that_logs_reads(stack: Stack) -> None:
    files = sorted(stack.layout.postgres_logs.glob("postgresql-*.json"))
    assert files, f"no jsonlog file in {stack.layout.postgres_logs}"
    first = json.loads(files[0].read_text().splitlines()[0])
    assert {"timestamp", "error_severity", "message"} <= set(first)
    result = stack.invoke("logs", "postgres", "--json", "--lines", "20")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records and all(record["component"] == "postgres" for record in records)


def test_the_log_pruner_runs_with_the_models_limits(stack: Stack) -> None:
    status = {c["name"]: c for c in stack.status()["components"]}  # type: ignore[index, union-attr]
    assert status["log-pruner"]["healthy"], status["log-pruner"]
    result = stack.invoke("logs", "log-pruner", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "older than 14 days" in result.stdout
