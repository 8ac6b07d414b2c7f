"""Physical backups (pgBackRest: WAL archiving + full/incremental) and point-in-time recovery. Runs last."""

from __future__ import annotations

import json

import pytest

from infra.backup.database import local_database
from tests.conftest import free_ports
from tests.integration.conftest import Stack


@pytest.fixture(scope="module")
def physical(stack: Stack) -> Stack:
    stack.env["PREFECT_STACK_BACKUPS__PHYSICAL__ENABLED"] = "true"
    stack.env["PREFECT_STACK_BACKUPS__PHYSICAL__TLS_PORT"] = str(free_ports(1)[0])
    result = stack.invoke("deploy")
    assert result.returncode == 0, result.stderr[-3000:]
    return stack


def _runs(stack: Stack, name: str, count: int) -> list[str]:
    with stack.client() as client:
        flow_id = client.post("/flows/", json={"name": f"pitr-{name}"}).json()["id"]
        runs = [client.post("/flow_runs/", json={"flow_id": flow_id, "name": name}) for _ in range(count)]
        return [run.json()["id"] for run in runs]


def _exists(stack: Stack, run_id: str) -> bool:
    with stack.client() as client:
        return client.get(f"/flow_runs/{run_id}").status_code == 200


def test_physical_method_is_refused_while_disabled(stack: Stack) -> None:
    if stack.env.get("PREFECT_STACK_BACKUPS__PHYSICAL__ENABLED") == "true":
        pytest.skip("physical backups already enabled on this stack")
    result = stack.invoke("backup", "--method", "physical")
    assert result.returncode == 1
    assert "backups.physical.enabled" in result.stderr


def test_full_and_incremental_backups_are_listed(physical: Stack) -> None:
    full_run = physical.invoke("backup", "--method", "physical", "--type", "full", "--json", check=True)
    full = json.loads(full_run.stdout)
    incr = json.loads(physical.invoke("backup", "--method", "physical", "--json", check=True).stdout)
    assert full["type"] == "full" and incr["type"] == "incr"
    listed = {b["id"]: b for b in json.loads(physical.invoke("backup.list", "--json", check=True).stdout)}
    assert listed[full["id"]]["method"] == "physical"
    assert listed[incr["id"]]["location"].endswith("/physical")


def test_point_in_time_recovery_keeps_what_came_before_and_drops_what_came_after(physical: Stack) -> None:
    physical.invoke("backup", "--method", "physical", "--type", "full", check=True)
    before = _runs(physical, "before", 3)
    # The recovery target is read from the database's own clock once the "before" runs are committed: every
    # later commit is after it, so no sleep is needed to separate the two batches.
    with local_database(physical.current_config()).connect() as conn:
        row = conn.execute(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
        ).fetchone()
    assert row is not None
    target = str(row[0])
    after = _runs(physical, "after", 3)
    with local_database(physical.current_config()).connect() as conn:
        conn.execute("SELECT pg_switch_wal()")  # archive the segment holding both batches now

    result = physical.invoke("restore", "--to-time", target, "--yes", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(_exists(physical, run) for run in before)
    assert not any(_exists(physical, run) for run in after)
    assert json.loads(result.stdout)["safety_backup_id"]
    assert physical.invoke("status").returncode == 0
