"""The backup family on the compose target, by the real CLI against the session's compose stack: the same tasks as
on the local target (tests/integration/test_50_backup.py), run in the project's backup-scheduler container."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.compose.conftest import ComposeStack

pytestmark = pytest.mark.compose

RUNS = 6
METRIC = "prefect_backup_last_success_timestamp_seconds"


def _document(result: Any) -> Any:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout)


def _flow_with_runs(compose_stack: ComposeStack, label: str, count: int) -> dict[str, Any]:
    with compose_stack.client() as client:
        flow_id = client.post("/flows/", json={"name": f"backup-{label}"}).raise_for_status().json()["id"]
        runs = [client.post("/flow_runs/", json={"flow_id": flow_id, "name": f"{label}-{i}"}).raise_for_status()
                .json()["id"] for i in range(count)]
    return {"flow_id": flow_id, "runs": runs}


def _runs_of(compose_stack: ComposeStack, flow_id: str) -> int:
    with compose_stack.client() as client:
        return int(client.post("/flow_runs/count", json={"flows": {"id": {"any_": [flow_id]}}}).json())


def _flow_exists(compose_stack: ComposeStack, flow_id: str) -> bool:
    with compose_stack.client() as client:
        return client.get(f"/flows/{flow_id}").status_code == 200


@pytest.fixture(scope="module")
def written(compose_stack: ComposeStack) -> dict[str, Any]:
    return _flow_with_runs(compose_stack, f"kept-{uuid.uuid4().hex[:6]}", RUNS)


@pytest.fixture(scope="module")
def first_backup(compose_stack: ComposeStack, written: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = _document(compose_stack.invoke("backup", "--json"))
    return document


def test_the_backup_scheduler_is_a_healthy_service(compose_stack: ComposeStack) -> None:
    status = json.loads(compose_stack.invoke("status", "--json").stdout)
    assert {c["name"]: c["healthy"] for c in status["components"]}.get("backup-scheduler") is True


def test_backup_prints_its_id(first_backup: dict[str, Any]) -> None:
    assert first_backup["id"] and first_backup["objects"] > 1 and first_backup["rows"] >= RUNS


def test_backup_is_listed_with_its_location(compose_stack: ComposeStack, first_backup: dict[str, Any]) -> None:
    listed = _document(compose_stack.invoke("backup.list", "--json"))
    entry = next(b for b in listed if b["id"] == first_backup["id"])
    s3 = compose_stack.config.backups.s3
    assert entry["method"] == "logical" and entry["location"] == f"s3://{s3.bucket}/{s3.prefix}"


def test_verify_restores_the_backup_and_records_the_verdict(compose_stack: ComposeStack,
                                                             first_backup: dict[str, Any]) -> None:
    result = compose_stack.invoke("backup.verify", "--id", first_backup["id"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # In the backup container's own temporary server (read-only root, no capabilities), not the postgres service.
    for check in ("checksums", "temporary PostgreSQL server", "pg_amcheck", "row counts", "Prefect API"):
        assert check in result.stderr
    listed = _document(compose_stack.invoke("backup.list", "--json"))
    assert next(b for b in listed if b["id"] == first_backup["id"])["verified"] == "verified"


def test_the_backup_metrics_reach_prometheus_through_node_exporter(compose_stack: ComposeStack,
                                                                   first_backup: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{compose_stack.config.monitoring.prometheus_port}/api/v1/query"
    deadline = time.monotonic() + 90
    while True:
        found = httpx.get(url, params={"query": METRIC}, timeout=10).json()["data"]["result"]
        if found:
            break
        assert time.monotonic() < deadline, f"{METRIC} never reached Prometheus"
        time.sleep(2)
    assert float(found[0]["value"][1]) >= time.time() - 3600


def test_physical_backups_are_refused_with_the_fix(compose_stack: ComposeStack) -> None:
    result = compose_stack.invoke("backup", "--method", "physical")
    assert result.returncode == 1
    assert "not supported on the compose target" in result.stderr and "Traceback" not in result.stderr


def test_restore_without_yes_is_refused(compose_stack: ComposeStack, first_backup: dict[str, Any]) -> None:
    result = compose_stack.invoke("restore", "--id", first_backup["id"])
    assert result.returncode == 1 and "--yes" in result.stderr


def test_restore_of_an_unknown_id_names_the_problem(compose_stack: ComposeStack) -> None:
    result = compose_stack.invoke("restore", "--id", "20000101T000000Z", "--yes")
    assert result.returncode == 1
    assert "no backup with id" in result.stderr and "Traceback" not in result.stderr


def test_restore_brings_back_exactly_the_backed_up_data(compose_stack: ComposeStack, written: dict[str, Any],
                                                        first_backup: dict[str, Any]) -> None:
    lost = _flow_with_runs(compose_stack, f"after-{uuid.uuid4().hex[:6]}", 2)
    with compose_stack.client() as client:  # the accident: the flow and its runs are deleted
        assert client.delete(f"/flows/{written['flow_id']}").status_code == 204
    assert not _flow_exists(compose_stack, written["flow_id"])

    result = compose_stack.invoke("restore", "--id", first_backup["id"], "--yes", "--json")
    report = _document(result)
    assert report["tables_short"] == [] and report["rows_found"] >= report["rows_expected"]
    assert report["safety_backup_id"]
    compose_stack.wait_healthy("after the restore")
    assert _flow_exists(compose_stack, written["flow_id"])
    assert _runs_of(compose_stack, written["flow_id"]) == RUNS
    assert not _flow_exists(compose_stack, lost["flow_id"])  # written after the backup: not in it
    assert compose_stack.invoke("status").returncode == 0


def test_prune_is_a_dry_run_by_default(compose_stack: ComposeStack, first_backup: dict[str, Any]) -> None:
    document = _document(compose_stack.invoke("backup.prune", "--json"))
    assert document["dry_run"] is True and first_backup["id"] in document["keep"]


def test_the_disaster_drill_recovers_everything_written_before_its_backup(compose_stack: ComposeStack) -> None:
    result = compose_stack.invoke("drill", "--yes", "--json", timeout=1200)
    report = _document(result)
    assert report["identical"] is True and report["row_counts_match"] is True, report
    assert report["flow_runs_recovered"] == report["flow_runs_written"] > 0
    compose_stack.wait_healthy("after the drill")
