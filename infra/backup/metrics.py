"""What every backup and verification leaves for Prometheus, and the alert rules that read it.

Metrics go to a node_exporter textfile (``<state>/metrics/prefect_backup.prom``), rewritten atomically after
each run, scheduled or manual, so an alert fires when the last good backup is too old, whoever took it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

FILE_NAME = "prefect_backup.prom"

_HELP = {
    "prefect_backup_last_success_timestamp_seconds": "Unix time the last successful backup finished.",
    "prefect_backup_last_attempt_timestamp_seconds": "Unix time the last backup attempt ended.",
    "prefect_backup_last_attempt_success": "1 if the last backup attempt succeeded, else 0.",
    "prefect_backup_last_duration_seconds": "Duration of the last successful backup.",
    "prefect_backup_last_size_bytes": "Stored size of the last successful backup.",
    "prefect_backup_last_verification_success": "1 if the last verification passed, else 0.",
    "prefect_backup_last_verification_timestamp_seconds": "Unix time of the last verification.",
    "prefect_backup_last_verified_backup_timestamp_seconds": "Unix time the newest verified backup was taken.",
}
_LINE = re.compile(r"^(\w+)\{method=\"(\w+)\"\} (\S+)$")


def read_metrics(directory: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    try:
        text = (directory / FILE_NAME).read_text()
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            values[match.group(1)] = float(match.group(3))
    return values


def record(directory: Path, updates: dict[str, float], method: str = "logical") -> None:
    """Merge ``updates`` into the metrics file and rewrite it atomically (readers never see half a file)."""
    unknown = set(updates) - {name.removeprefix("prefect_backup_") for name in _HELP}
    if unknown:
        raise ValueError(f"unknown backup metrics: {sorted(unknown)}")
    directory.mkdir(parents=True, exist_ok=True)
    values = read_metrics(directory)
    values.update({f"prefect_backup_{k}": v for k, v in updates.items()})
    lines = []
    for name, help_text in _HELP.items():
        if name in values:
            sample = f'{name}{{method="{method}"}} {values[name]:.17g}'
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", sample]
    tmp = directory / f".{FILE_NAME}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, directory / FILE_NAME)


def now() -> float:
    return time.time()


def alert_rules(max_age_hours: int) -> str:
    """Prometheus alerting rules for backups (rendered into <state>/etc; tested with promtool)."""
    max_age_s = max_age_hours * 3600
    return f"""\
# Rendered by prefect-stack from the configuration model (backups.max_age_hours = {max_age_hours}).
groups:
  - name: prefect-backups
    rules:
      - alert: PrefectBackupTooOld
        expr: time() - max(prefect_backup_last_verified_backup_timestamp_seconds) > {max_age_s}
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: The newest verified Prefect backup is older than {max_age_hours}h
          description: >-
            No backup has been taken and verified for {{{{ $value | humanizeDuration }}}}.
            Check invoke backup.list and the backup-scheduler log (invoke logs backup-scheduler).
      - alert: PrefectBackupMissing
        expr: absent(prefect_backup_last_verified_backup_timestamp_seconds)
        for: {max_age_hours}h
        labels:
          severity: critical
        annotations:
          summary: No verified Prefect backup has ever been recorded
          description: >-
            The backup scheduler has not completed a backup and its verification yet. Check it runs
            (invoke status, invoke logs backup-scheduler); take one now with invoke backup and
            invoke backup.verify --latest.
      - alert: PrefectBackupFailed
        expr: max(prefect_backup_last_attempt_success) == 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: The last Prefect backup attempt failed
          description: >-
            Read the reason in invoke logs backup-scheduler (S3 unreachable, credentials, scratch disk full), fix it,
            then run invoke backup to confirm before the next night.
      - alert: PrefectBackupVerificationFailed
        expr: max(prefect_backup_last_verification_success) == 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: The last Prefect backup FAILED verification; do not rely on it
          description: >-
            invoke backup.list shows the verdict and what failed (checksums, restore, amcheck, row counts).
            Take and verify a new backup now (invoke backup, then invoke backup.verify --latest); keep the
            failed one for analysis.
"""
