"""`invoke restore` on the local target: the Prefect server back from a backup, with proof nothing was lost.

The backup is checked and restored into a side database while the server keeps serving; only then are the
API replicas and services stopped, the databases swapped by renaming (a second), the schema migrated if the
backup predates the installed Prefect, and everything started again. Downtime is the swap plus start-up,
not the restore, and a backup that fails any check never touches the running database.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from infra import console
from infra.backup.catalog import BackupEntry
from infra.backup.database import alembic_revision, local_database, table_row_counts
from infra.backup.fetch import check_objects, count_mismatches, create_database, drop_database, fetch_dump, pg_restore
from infra.backup.logical import backup_lock, run_logical_backup
from infra.backup.storage import BackupStore
from infra.config import StackConfig
from infra.errors import UserError
from infra.layout import StateLayout
from infra.local import haproxy_runtime
from infra.local.health import api_ready, wait_for_load_balancer
from infra.local.plan import build_plan
from infra.local.postgres_admin import run_as_ids
from infra.local.supervisor import Supervisor
from infra.progress import Progress
from infra.secrets import Secrets


@dataclass
class RestoreReport:
    backup_id: str
    safety_backup_id: str | None
    migrated: bool
    downtime_s: float
    total_s: float
    row_counts: dict[str, int] = field(default_factory=dict)
    previous_database: str | None = None


def _swap_databases(config: StackConfig, restored: str, keep_as: str) -> None:
    database = local_database(config)
    live = config.postgres.database
    with database.connect("postgres") as conn:
        # Nothing may hold the live database open while it is renamed: PgBouncer's idle server connections
        # are terminated too (PgBouncer reconnects by name, to the restored database).
        for name in (live, restored):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (live,)).fetchone():
            conn.execute(rename.format(sql.Identifier(live), sql.Identifier(keep_as)))
        conn.execute(rename.format(sql.Identifier(restored), sql.Identifier(live)))


def _live_database_exists(config: StackConfig) -> bool:
    try:
        with local_database(config).connect("postgres") as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (config.postgres.database,)).fetchone()
        return row is not None
    except psycopg.OperationalError:
        return False


def _migrate(config: StackConfig, secrets: Secrets) -> None:
    plan = build_plan(config, secrets)
    uid, gid = run_as_ids(plan.run_as)
    result = subprocess.run(
        [sys.executable, "-m", "infra.local.migrate"],
        env={**plan.migration_env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
             "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True, text=True, check=False, cwd="/", user=uid, group=gid,
        extra_groups=[] if uid is not None else None,
    )
    if result.returncode != 0:
        raise UserError(f"migrating the restored database failed: {result.stderr.strip()[-800:]}",
                        fix="the backup may come from a newer Prefect than the one installed")


# checksums, safety backup, restore beside the live database, stop Prefect, swap and start, load balancer serving
RESTORE_STEPS = 6


def restore_backup(
    config: StackConfig, secrets: Secrets, store: BackupStore, entry: BackupEntry, progress: Progress,
    keep_previous: bool = False,
) -> RestoreReport:
    started = time.monotonic()
    layout = StateLayout(config.state_dir)
    manifest = entry.manifest
    database = local_database(config)
    supervisor = Supervisor(layout)
    if not supervisor.is_running():
        raise UserError("the stack is not running", fix="start it first with invoke deploy (an empty database is fine)")
    with progress.steps(f"restoring backup {manifest.id}", RESTORE_STEPS) as steps:
        # 1. Refuse a damaged backup before touching anything.
        check_objects(store, manifest, progress)
        steps.step(f"checksums of {len(manifest.objects)} objects match the manifest")
        with backup_lock(layout.run):
            # 2. A safety backup of what is there now, so the restore itself can be undone.
            safety_id = None
            if _live_database_exists(config):
                progress("taking a safety backup of the current database")
                safety_id = run_logical_backup(config, secrets, database, None, progress).id
                steps.step(f"safety backup {safety_id} taken")
            else:
                steps.step(f"no safety backup: database {config.postgres.database} does not exist")
            # 3. Restore beside the live database and prove it before any downtime.
            side = f"{config.postgres.database}_restore_{manifest.id.lower()}"
            config.scratch_dir.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f"restore-{manifest.id}-", dir=config.scratch_dir))
            try:
                fetch_dump(store, manifest, secrets, scratch / "dump", progress)
                create_database(database, side, config.postgres.user)
                pg_restore(database, side, scratch / "dump", config.backups.jobs)
                mismatches = count_mismatches(database, side, manifest)
                if mismatches:
                    raise UserError(f"restored row counts differ from the manifest: {mismatches}",
                                    fix="the backup is inconsistent; verify it (invoke backup.verify) and pick another")
                steps.step(f"restored into {side}; row counts of {len(manifest.row_counts)} tables match")
            except BaseException:
                drop_database(database, side)
                raise
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            # 4. Downtime: stop Prefect, swap, migrate if needed, start, wait.
            down_at = time.monotonic()
            prefect_programs = [p for p in build_plan(config, secrets).programs if p.component in ("api", "services")]
            steps.step("downtime begins: stopping the API replicas and services (clients get a 503)")
            haproxy_runtime.set_all_servers(layout.haproxy_socket, "maint")  # clients get a clean 503 meanwhile
            for program in prefect_programs:
                supervisor.stop(program.name)
            previous = f"{config.postgres.database}_before_{datetime.now(UTC):%Y%m%dT%H%M%SZ}".lower()
            _swap_databases(config, side, previous)
            with database.connect() as conn:
                current_revision = alembic_revision(conn)
            deployed = json.loads(layout.deployed_state.read_text()).get("versions", {})
            migrated = current_revision != deployed.get("alembic_revision")
            if migrated:
                progress(f"migrating: backup schema {current_revision}, installed {deployed.get('alembic_revision')}")
                _migrate(config, secrets)
            steps.step(f"databases swapped (previous one: {previous}); starting the API replicas and services")
            for program in prefect_programs:
                supervisor.start(program.name, wait=False)
            for program in prefect_programs:
                if program.port is not None:
                    console.wait_until(functools.partial(api_ready, program.port), 120,
                                       f"{program.name} after the restore", fix=f"read invoke logs {program.name}")
            # Done when clients can use it: through the load balancer, whose checks must see the replicas up.
            haproxy_runtime.set_all_servers(layout.haproxy_socket, "ready")
            wait_for_load_balancer(config, layout)
            steps.step("every replica serves through the load balancer: downtime over")
            downtime = time.monotonic() - down_at
            if not keep_previous:
                drop_database(database, previous)
            with database.connect() as conn:
                counts = table_row_counts(conn)
    return RestoreReport(
        backup_id=manifest.id, safety_backup_id=safety_id, migrated=migrated, downtime_s=downtime,
        total_s=time.monotonic() - started, row_counts=counts, previous_database=previous if keep_previous else None,
    )
