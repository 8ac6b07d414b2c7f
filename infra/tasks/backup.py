"""Backup tasks: take, list, verify and prune backups of the Prefect database."""

from __future__ import annotations

import json

from invoke.context import Context
from invoke.tasks import task
from rich.table import Table

from infra import console
from infra.backup.catalog import list_backups
from infra.backup.database import local_database
from infra.backup.logical import run_logical_backup
from infra.backup.storage import BackupStore
from infra.config import load_config
from infra.errors import UserError
from infra.layout import StateLayout
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
    manifest = run_logical_backup(config, secrets, local_database(config), layout.run, console.note)
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
