"""Backup tasks: take, list, verify and prune backups of the Prefect database."""

from __future__ import annotations

import json

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.table import Table

from infra import console
from infra.backup.catalog import find_backup, list_backups
from infra.backup.jobs import backup_job, verify_job
from infra.backup.storage import BackupStore
from infra.config import load_config
from infra.errors import UserError
from infra.layout import StateLayout
from infra.local.restore import restore_backup
from infra.secrets import load_secrets
from infra.tasks import reports_user_errors


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


@task(default=True, help={
    "method": "logical (pg_dump, the default) or physical (pgBackRest, with point-in-time recovery).",
    "json": "Print the result as JSON ({\"id\": ..., ...}).",
})
@reports_user_errors
def backup(c: Context, method: str = "logical", json_: bool = False) -> None:
    """Back up the Prefect database to S3 now; prints the backup id."""
    config = load_config()
    layout = StateLayout(config.state_dir)
    secrets = load_secrets(layout.secrets)
    if method != "logical":
        raise UserError(f"unknown backup method {method!r}", fix="use --method logical")
    manifest = backup_job(config, secrets, console.note)
    result = {
        "id": manifest.id, "method": manifest.method, "location": manifest.location,
        "size": manifest.size, "raw_size": manifest.raw_size, "objects": len(manifest.objects),
        "duration_s": round(manifest.duration_s, 2), "rows": sum(manifest.row_counts.values()),
    }
    if json_:
        print(json.dumps(result))
    else:
        console.step(
            f"backup {manifest.id} complete: {human_size(manifest.size)} stored "
            f"({human_size(manifest.raw_size)} dumped), {result['rows']} rows, {manifest.duration_s:.1f}s"
        )
        print(manifest.id)


@task(name="list", help={"json": "Print JSON: a list of {id, method, time, size, verified, location, ...}."})
@reports_user_errors
def list_(c: Context, json_: bool = False) -> None:
    """List complete backups (those with a manifest), oldest first, with their verification state."""
    config = load_config()
    store = BackupStore.from_config(config, load_secrets(StateLayout(config.state_dir).secrets))
    entries = list_backups(store)
    rows = [e.as_dict(store.location) for e in entries]
    if json_:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None, pad_edge=False, title=f"backups in {store.location}")
    for column in ("id", "method", "finished", "size", "took", "verified"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["method"], row["time"][:19], human_size(row["size"]),
                      f"{row['duration_s']}s", row["verified"])
    console.out.print(table if rows else f"no backups in {store.location}")


@task(help={"id": "The backup to verify (see invoke backup.list).", "latest": "Verify the newest backup."})
@reports_user_errors
def verify(c: Context, id: str | None = None, latest: bool = False) -> None:
    """Prove a backup restores: checksums, pg_restore, pg_amcheck, row counts, a Prefect API on the copy."""
    config = load_config()
    layout = StateLayout(config.state_dir)
    secrets = load_secrets(layout.secrets)
    console.step(f"verifying backup {id or 'latest'}")
    entry, verdict = verify_job(config, secrets, id, console.note)
    if not verdict.ok:
        raise Exit(f"error: backup {entry.manifest.id} FAILED verification: {verdict.detail}\n"
                   "  fix: do not rely on this backup; take a new one (invoke backup) and verify it", code=1)
    console.step(f"backup {entry.manifest.id} verified in {verdict.duration_s:.1f}s: {verdict.detail}")


@task(help={
    "id": "The backup to restore (see invoke backup.list).",
    "latest": "Restore the newest backup.",
    "yes": "Confirm: replace the live Prefect database (a safety backup is taken first).",
    "keep_previous": "Keep the replaced database (renamed prefect_before_<time>) instead of dropping it.",
    "json": "Print the result as JSON.",
})
@reports_user_errors
def restore(c: Context, id: str | None = None, latest: bool = False, yes: bool = False,
            keep_previous: bool = False, json_: bool = False) -> None:
    """Restore the Prefect database from a backup, with a safety backup first and row counts checked after."""
    config = load_config()
    layout = StateLayout(config.state_dir)
    secrets = load_secrets(layout.secrets)
    store = BackupStore.from_config(config, secrets)
    entry = find_backup(store, id, latest)
    if not yes:
        raise Exit(f"error: this replaces the live Prefect database with backup {entry.manifest.id} "
                   f"({entry.manifest.finished_at:%Y-%m-%d %H:%M:%S} UTC)\n"
                   f"  fix: run again with --yes (a safety backup of the current database is taken first)", code=1)
    console.step(f"restoring backup {entry.manifest.id} from {store.location}")
    report = restore_backup(config, secrets, store, entry, console.note, keep_previous)
    expected = entry.manifest.row_counts
    lost = {t: (n, report.row_counts.get(t, 0)) for t, n in expected.items() if report.row_counts.get(t, 0) < n}
    result = {
        "id": report.backup_id, "safety_backup_id": report.safety_backup_id, "migrated": report.migrated,
        "downtime_s": round(report.downtime_s, 2), "recovery_time_s": round(report.total_s, 2),
        "rows_expected": sum(expected.values()), "rows_found": sum(report.row_counts.get(t, 0) for t in expected),
        "tables_short": sorted(lost),
    }
    if json_:
        print(json.dumps(result))
    else:
        table = Table(box=None, pad_edge=False, title="row counts: backup manifest vs restored database")
        for column in ("table", "in backup", "restored"):
            table.add_column(column)
        for name in sorted(expected):
            if expected[name]:
                table.add_row(name, str(expected[name]), str(report.row_counts.get(name, 0)))
        console.out.print(table)
        console.step(
            f"restored {report.backup_id} in {report.total_s:.1f}s (API down {report.downtime_s:.1f}s); "
            f"safety backup: {report.safety_backup_id or 'none'}"
        )
    if lost:
        raise Exit(f"error: rows missing after restore in {sorted(lost)}", code=1)
