"""The nightly schedule, the metrics file every run leaves, and the alert rules that read it (with promtool)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.backup import metrics
from infra.backup.scheduler import next_run
from infra.render.backup_alerts import backup_alert_rules


@pytest.mark.parametrize(
    ("schedule", "now", "expected"),
    [
        ("02:30", datetime(2026, 11, 23, 1, 0, tzinfo=UTC), datetime(2026, 11, 23, 2, 30, tzinfo=UTC)),
        ("02:30", datetime(2026, 11, 23, 2, 30, tzinfo=UTC), datetime(2026, 11, 24, 2, 30, tzinfo=UTC)),
        ("02:30", datetime(2026, 11, 23, 23, 59, tzinfo=UTC), datetime(2026, 11, 24, 2, 30, tzinfo=UTC)),
        ("00:00", datetime(2026, 12, 31, 12, 0, tzinfo=UTC), datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
    ],
)
def test_next_run(schedule: str, now: datetime, expected: datetime) -> None:
    assert next_run(schedule, now) == expected


def test_metrics_round_trip_keeps_timestamp_precision(tmp_path: Path) -> None:
    metrics.record(tmp_path, {"last_success_timestamp_seconds": 1795463463.25, "last_size_bytes": 12345})
    assert metrics.read_metrics(tmp_path)["prefect_backup_last_success_timestamp_seconds"] == 1795463463.25


def test_metrics_updates_merge(tmp_path: Path) -> None:
    metrics.record(tmp_path, {"last_size_bytes": 1})
    metrics.record(tmp_path, {"last_attempt_success": 0})
    expected = {"prefect_backup_last_size_bytes", "prefect_backup_last_attempt_success"}
    assert set(metrics.read_metrics(tmp_path)) == expected


def test_unknown_metric_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        metrics.record(tmp_path, {"last_sise_bytes": 1})


def test_metrics_file_is_world_readable_for_the_exporter(tmp_path: Path) -> None:
    metrics.record(tmp_path, {"last_size_bytes": 1})
    assert (tmp_path / metrics.FILE_NAME).stat().st_mode & 0o777 == 0o644


promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (bootstrap --dev)")


@promtool
def test_alert_rules_are_valid(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(backup_alert_rules(26))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@promtool
def test_too_old_backup_alert_fires_only_after_max_age(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(backup_alert_rules(26))
    # promtool's clock starts at 0: a backup verified at t=0 is 25h old at 25h and 27h old at 27h.
    (tmp_path / "test.yml").write_text(textwrap.dedent("""\
        rule_files: [rules.yml]
        evaluation_interval: 1m
        tests:
          - interval: 1m  # samples further apart than Prometheus' 5m lookback would go stale
            input_series:
              - series: 'prefect_backup_last_verified_backup_timestamp_seconds{method="logical"}'
                values: '0+0x1700'
              - series: 'prefect_backup_last_attempt_success{method="logical"}'
                values: '1+0x1700'
              - series: 'prefect_backup_last_verification_success{method="logical"}'
                values: '1+0x1700'
            alert_rule_test:
              - eval_time: 25h
                alertname: PrefectBackupTooOld
                exp_alerts: []
              - eval_time: 27h
                alertname: PrefectBackupTooOld
                exp_alerts:
                  - exp_labels: {severity: critical}
                    exp_annotations:
                      summary: The newest verified Prefect backup is older than 26h
                      description: >-
                        No backup has been taken and verified for 1d 3h 0m 0s.
                        Check invoke backup.list and the backup-scheduler log (invoke logs backup-scheduler).
              - eval_time: 27h
                alertname: PrefectBackupFailed
                exp_alerts: []
          - interval: 1m
            input_series:
              - series: 'prefect_backup_last_verification_success{method="logical"}'
                values: '0+0x20'
            alert_rule_test:
              - eval_time: 10m
                alertname: PrefectBackupVerificationFailed
                exp_alerts:
                  - exp_labels: {severity: critical}
                    exp_annotations:
                      summary: The last Prefect backup FAILED verification; do not rely on it
                      description: >-
                        invoke backup.list shows the verdict and what failed (checksums, restore, amcheck, row counts).
                        Take and verify a new backup now (invoke backup, then invoke backup.verify --latest); keep the
                        failed one for analysis.
    """))
    result = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
