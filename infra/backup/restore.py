"""A logical restore, whatever the target: the data steps, and the one order they run in around the downtime.

The backup is checked and restored into a side database while the server keeps serving; only then does the
downtime begin (Prefect stopped), the databases are swapped by renaming (a second), the schema is migrated if the
backup predates the installed Prefect, and Prefect is started again. Downtime is the swap plus start-up, not the
restore, and a backup that fails any check never touches the running database.

Two small interfaces keep the targets apart:

- ``RestoreData``: the data steps. ``DatabaseRestore`` runs them in this process, next to the database (the local
  target's host, or a compose project container); the compose target's host runs the same steps in its
  backup container through ``python -m infra.backup.restore STAGE`` (``infra.compose.backups``).
- ``Downtime``: stopping and starting Prefect, and the load balancer: supervisord and HAProxy's socket locally
  (``infra.local.restore``), Compose and the load balancer's container on compose (``infra.compose.backups``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql

from infra.backup.catalog import BackupEntry, find_backup
from infra.backup.database import DatabaseAccess, alembic_revision, database_access, table_row_counts
from infra.backup.fetch import check_objects, count_mismatches, create_database, drop_database, fetch_dump, pg_restore
from infra.backup.logical import backup_lock, run_logical_backup
from infra.backup.storage import BackupStore
from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.layout import StateLayout
from infra.progress import Progress
from infra.secrets import Secrets, load_secrets

# checksums, safety backup, restore beside the live database, stop Prefect, swap and start, load balancer serving
RESTORE_STEPS = 6


@dataclass
class RestoreReport:
    backup_id: str
    safety_backup_id: str | None
    migrated: bool
    downtime_s: float
    total_s: float
    row_counts: dict[str, int] = field(default_factory=dict)
    previous_database: str | None = None


@dataclass(frozen=True)
class Swapped:
    """What the swap found: the restored schema's revision and the replaced database's (None: there was none)."""

    previous: str
    restored_revision: str
    replaced_revision: str | None


class RestoreData(Protocol):
    """The data steps of a restore, in the order ``restore_with_downtime`` calls them."""

    def check(self) -> int:
        """Refuse a damaged backup: every object's checksum against the manifest. Returns the object count."""

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Held from the safety backup to the end: no backup or other restore meanwhile."""

    def safety_backup(self) -> str | None:
        """A backup of the live database (None when there is none), so the restore itself can be undone."""

    def restore_beside(self) -> str:
        """Restore into a side database and prove its row counts; returns its name."""

    def swap(self, side: str, previous: str) -> Swapped:
        """Rename the live database to ``previous`` and the side database to the live name."""

    def finish(self, previous: str, keep_previous: bool) -> dict[str, int]:
        """Drop the replaced database unless kept; the restored database's row counts."""


class Downtime(Protocol):
    """Prefect's processes and the load balancer around the swap."""

    def stop(self) -> None:
        """Load balancer in maintenance for every replica (clients get a clean 503), API replicas and services
        stopped."""

    def migrate_if_needed(self, swapped: Swapped) -> bool:
        """Bring the restored schema to the installed Prefect's if it differs; True when a migration ran."""

    def start(self) -> None:
        """API replicas and services started and ready, the load balancer routing to every replica again."""


def side_database(config: StackConfig, backup_id: str) -> str:
    return f"{config.postgres.database}_restore_{backup_id.lower()}"


def previous_database(config: StackConfig, now: datetime | None = None) -> str:
    return f"{config.postgres.database}_before_{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}".lower()


def restore_with_downtime(
    manifest_id: str, object_count: int, data: RestoreData, downtime: Downtime, progress: Progress,
    previous: str, keep_previous: bool = False,
) -> RestoreReport:
    """The one order of a restore, on every target (see the module's docstring)."""
    started = time.monotonic()
    with progress.steps(f"restoring backup {manifest_id}", RESTORE_STEPS) as steps:
        data.check()
        steps.step(f"checksums of {object_count} objects match the manifest")
        with data.locked():
            safety_id = data.safety_backup()
            steps.step(f"safety backup {safety_id} taken" if safety_id
                       else "no safety backup: the live database does not exist")
            side = data.restore_beside()
            steps.step(f"restored into {side}; row counts match the manifest")
            down_at = time.monotonic()
            steps.step("downtime begins: stopping the API replicas and services (clients get a 503)")
            downtime.stop()
            swapped = data.swap(side, previous)
            migrated = downtime.migrate_if_needed(swapped)
            steps.step(f"databases swapped (previous one: {previous}); starting the API replicas and services")
            downtime.start()
            steps.step("every replica serves through the load balancer: downtime over")
            downtime_s = time.monotonic() - down_at
            counts = data.finish(previous, keep_previous)
    return RestoreReport(
        backup_id=manifest_id, safety_backup_id=safety_id, migrated=migrated, downtime_s=downtime_s,
        total_s=time.monotonic() - started, row_counts=counts, previous_database=previous if keep_previous else None,
    )


@dataclass
class DatabaseRestore:
    """The data steps in this process, next to the database (``database_access`` picks the way in)."""

    config: StackConfig
    secrets: Secrets
    store: BackupStore
    entry: BackupEntry
    progress: Progress

    @property
    def _database(self) -> DatabaseAccess:
        return database_access(self.config, self.secrets)

    def check(self) -> int:
        check_objects(self.store, self.entry.manifest, self.progress)
        return len(self.entry.manifest.objects)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return backup_lock(StateLayout(self.config.state_dir).run)

    def live_database_exists(self) -> bool:
        try:
            with self._database.connect("postgres") as conn:
                row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                   (self.config.postgres.database,)).fetchone()
            return row is not None
        except psycopg.OperationalError:
            return False

    def safety_backup(self) -> str | None:
        if not self.live_database_exists():
            return None
        self.progress("taking a safety backup of the current database")
        return run_logical_backup(self.config, self.secrets, self._database, None, self.progress).id

    def restore_beside(self) -> str:
        manifest, config, database = self.entry.manifest, self.config, self._database
        side = side_database(config, manifest.id)
        config.scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"restore-{manifest.id}-", dir=config.scratch_dir))
        try:
            fetch_dump(self.store, manifest, self.secrets, scratch / "dump", self.progress)
            create_database(database, side, config.postgres.user)
            pg_restore(database, side, scratch / "dump", config.backups.jobs)
            mismatches = count_mismatches(database, side, manifest)
            if mismatches:
                raise UserError(f"restored row counts differ from the manifest: {mismatches}",
                                fix="the backup is inconsistent; verify it (invoke backup.verify) and pick another")
        except BaseException:
            drop_database(database, side)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return side

    def swap(self, side: str, previous: str) -> Swapped:
        return swap_databases(self.config, self.secrets, side, previous)

    def finish(self, previous: str, keep_previous: bool) -> dict[str, int]:
        return finish_restore(self.config, self.secrets, previous, keep_previous)


def finish_restore(config: StackConfig, secrets: Secrets, previous: str, keep_previous: bool) -> dict[str, int]:
    database = database_access(config, secrets)
    if not keep_previous:
        drop_database(database, previous)
    with database.connect() as conn:
        return table_row_counts(conn)


def swap_databases(config: StackConfig, secrets: Secrets, restored: str, keep_as: str) -> Swapped:
    database = database_access(config, secrets)
    live = config.postgres.database
    replaced_revision = None
    with database.connect("postgres") as conn:
        # Nothing may hold the live database open while it is renamed: PgBouncer's idle server connections
        # are terminated too (PgBouncer reconnects by name, to the restored database).
        for name in (live, restored):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (live,)).fetchone():
            with database.connect(live) as old:
                replaced_revision = alembic_revision(old)
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (live,))
            conn.execute(rename.format(sql.Identifier(live), sql.Identifier(keep_as)))
        conn.execute(rename.format(sql.Identifier(restored), sql.Identifier(live)))
    with database.connect() as conn:
        restored_revision = alembic_revision(conn)
    return Swapped(keep_as, restored_revision, replaced_revision)


# --- The stages, run in a compose project container by the host's `invoke restore --target compose`. ---------


def _stage_output(document: object) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _reports_errors() -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(1) from None


def main(argv: list[str]) -> int:
    """``python -m infra.backup.restore STAGE ...``: one data step, its result as one JSON line on stdout.

    ``prepare`` runs the steps before the downtime (checks, safety backup, restore beside), under the backup lock;
    ``swap`` and ``finish`` the ones inside and after it. The host drives the downtime in between. ``describe``
    names the backup a restore would use; ``destroy`` drops the live database (the disaster drill's disaster).
    """
    from infra import console

    parser = argparse.ArgumentParser(prog="python -m infra.backup.restore")
    parser.add_argument("stage", choices=("describe", "prepare", "swap", "finish", "destroy"))
    parser.add_argument("--id")
    parser.add_argument("--latest", action="store_true")
    parser.add_argument("--side")
    parser.add_argument("--previous")
    parser.add_argument("--keep-previous", action="store_true")
    args = parser.parse_args(argv)
    with _reports_errors():
        config = load_config()
        secrets = load_secrets(StateLayout(config.state_dir).secrets)
        progress = console.progress()
        if args.stage == "swap":
            _stage_output(asdict(swap_databases(config, secrets, args.side, args.previous)))
            return 0
        if args.stage == "destroy":
            with database_access(config, secrets).connect("postgres") as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(config.postgres.database)))
            _stage_output({"destroyed": config.postgres.database})
            return 0
        if args.stage == "finish":
            _stage_output({"row_counts": finish_restore(config, secrets, args.previous, args.keep_previous)})
            return 0
        store = BackupStore.from_config(config, secrets)
        entry = find_backup(store, args.id, args.latest)
        manifest = entry.manifest
        described = {"id": manifest.id, "started_at": manifest.started_at.isoformat(),
                     "finished_at": manifest.finished_at.isoformat(), "location": store.location,
                     "objects": len(manifest.objects), "row_counts": manifest.row_counts}
        if args.stage == "describe":
            _stage_output(described)
            return 0
        data = DatabaseRestore(config, secrets, store, entry, progress)
        data.check()
        with data.locked():
            safety_id = data.safety_backup()
            side = data.restore_beside()
        _stage_output({**described, "safety_backup_id": safety_id, "side": side})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
