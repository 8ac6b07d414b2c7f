"""The alert rules that read the backup metrics (infra/backup/metrics.py): a backup too old, missing, failed or
failing verification."""

from __future__ import annotations


def backup_alert_rules(max_age_hours: int) -> str:
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
