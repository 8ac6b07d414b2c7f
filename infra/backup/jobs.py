"""One backup or verification run as the scheduler and the tasks both do it: the work, then its metrics."""

from __future__ import annotations

from infra.backup import metrics
from infra.backup.catalog import BackupEntry, find_backup
from infra.backup.database import database_access
from infra.backup.logical import backup_lock, run_logical_backup
from infra.backup.manifest import Manifest, Verification
from infra.backup.storage import BackupStore
from infra.backup.verify import verify_backup
from infra.config import StackConfig
from infra.layout import StateLayout
from infra.progress import Progress
from infra.secrets import Secrets


def backup_job(config: StackConfig, secrets: Secrets, progress: Progress) -> Manifest:
    layout = StateLayout(config.state_dir)
    try:
        manifest = run_logical_backup(config, secrets, database_access(config, secrets), layout.run, progress)
    except BaseException:
        metrics.record(layout.metrics, {"last_attempt_timestamp_seconds": metrics.now(), "last_attempt_success": 0})
        raise
    metrics.record(layout.metrics, {
        "last_attempt_timestamp_seconds": metrics.now(), "last_attempt_success": 1,
        "last_success_timestamp_seconds": manifest.finished_at.timestamp(),
        "last_duration_seconds": manifest.duration_s, "last_size_bytes": manifest.size,
    })
    return manifest


def verify_job(
    config: StackConfig, secrets: Secrets, backup_id: str | None, progress: Progress
) -> tuple[BackupEntry, Verification]:
    layout = StateLayout(config.state_dir)
    store = BackupStore.from_config(config, secrets)
    entry = find_backup(store, backup_id, latest=backup_id is None)
    with backup_lock(layout.run):
        verdict = verify_backup(config, secrets, store, entry, progress)
    updates = {"last_verification_success": 1.0 if verdict.ok else 0.0,
               "last_verification_timestamp_seconds": verdict.verified_at.timestamp()}
    if verdict.ok:
        previous = metrics.read_metrics(layout.metrics).get("prefect_backup_last_verified_backup_timestamp_seconds", 0)
        updates["last_verified_backup_timestamp_seconds"] = max(previous, entry.manifest.finished_at.timestamp())
    metrics.record(layout.metrics, updates)
    return entry, verdict
