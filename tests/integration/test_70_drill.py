"""The nightly job and the disaster drill, on the real stack."""

from __future__ import annotations

import json

from infra.backup import metrics
from infra.backup.scheduler import run_once
from infra.config import load_config
from tests.integration.conftest import Stack


def test_deploy_installs_the_backup_scheduler(stack: Stack) -> None:
    components = stack.status()["components"]
    scheduler = next(c for c in components if c["name"] == "backup-scheduler")  # type: ignore[union-attr, index]
    assert scheduler["healthy"] is True


def test_scheduled_run_backs_up_verifies_and_leaves_metrics(stack: Stack) -> None:
    assert run_once(load_config()) is True
    values = metrics.read_metrics(stack.layout.metrics)
    assert values["prefect_backup_last_attempt_success"] == 1
    assert values["prefect_backup_last_verification_success"] == 1
    assert values["prefect_backup_last_verified_backup_timestamp_seconds"] > metrics.now() - 600
    assert values["prefect_backup_last_size_bytes"] > 0


def test_drill_refuses_without_yes(stack: Stack) -> None:
    result = stack.invoke("drill")
    assert result.returncode == 1
    assert "--yes" in result.stderr


def test_drill_destroys_restores_and_proves_nothing_was_lost(stack: Stack) -> None:
    result = stack.invoke("drill", "--yes", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["identical"] is True
    assert report["flow_runs_recovered"] == report["flow_runs_written"] == 20
    assert report["logs_recovered"] == report["logs_written"] == 20
    assert report["row_counts_match"] is True
    assert 0 < report["recovery_time_s"] < 300
    assert report["data_loss_window_s"] > 0
    assert stack.invoke("status").returncode == 0
