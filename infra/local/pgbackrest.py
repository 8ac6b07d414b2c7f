"""Physical backups and point-in-time recovery through pgBackRest (never reimplemented: we only drive it).

pgBackRest runs as the owner of the data directory (the service user), with the rendered pgbackrest.conf.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from infra import console, haproxy_runtime
from infra.backup.database import local_database, table_row_counts
from infra.backup.logical import backup_lock, run_logical_backup
from infra.config import StackConfig
from infra.database.admin import run_as_ids
from infra.errors import UserError
from infra.layout import StateLayout
from infra.local.health import wait_for_load_balancer
from infra.local.plan import build_plan, service_user
from infra.local.supervisor import Supervisor
from infra.progress import Progress
from infra.render.pgbackrest import STANZA, pgbackrest_conf_path
from infra.secrets import Secrets


def _require_enabled(config: StackConfig) -> None:
    if not config.backups.physical.enabled:
        raise UserError("physical backups are not enabled",
                        fix="set backups.physical.enabled: true (PREFECT_STACK_BACKUPS__PHYSICAL__ENABLED=true), "
                            "then invoke deploy")


def pgbackrest(config: StackConfig, *args: str, timeout_s: float = 3600) -> str:
    layout = StateLayout(config.state_dir)
    uid, gid = run_as_ids(service_user(config))
    argv = ["pgbackrest", f"--config={pgbackrest_conf_path(layout)}", f"--stanza={STANZA}", *args]
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=timeout_s, cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(layout.prefect_home)},
        user=uid, group=gid, extra_groups=[] if uid is not None else None,
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"pgbackrest {args[0]} failed: {' '.join(message[-3:])}",
                        fix=f"read {layout.logs / 'pgbackrest'} and invoke status (s3, postgres)")
    return result.stdout


def ensure_stanza(config: StackConfig) -> None:
    """Create the stanza in the repository (idempotent): archiving and backups need it."""
    _require_enabled(config)
    pgbackrest(config, "stanza-create")


def info(config: StackConfig) -> list[dict[str, Any]]:
    """Physical backups in the repository, oldest first (pgBackRest's own JSON)."""
    _require_enabled(config)
    stanzas = json.loads(pgbackrest(config, "info", "--output=json") or "[]")
    return [b for s in stanzas for b in s.get("backup", [])]


@dataclass(frozen=True)
class PhysicalBackup:
    label: str
    type: str
    started: float
    stopped: float
    size: int  # bytes stored in the repository for this backup
    database_size: int

    @classmethod
    def from_info(cls, raw: dict[str, Any]) -> PhysicalBackup:
        return cls(raw["label"], raw["type"], raw["timestamp"]["start"], raw["timestamp"]["stop"],
                   int(raw["info"]["repository"]["delta"]), int(raw["info"]["size"]))


def physical_backup(config: StackConfig, backup_type: str, progress: Progress) -> PhysicalBackup:
    _require_enabled(config)
    if backup_type not in ("full", "diff", "incr"):
        raise UserError(f"unknown backup type {backup_type!r}", fix="use --type full, diff or incr")
    with backup_lock(StateLayout(config.state_dir).run):
        progress(f"pgbackrest {backup_type} backup to the repository")
        pgbackrest(config, "backup", f"--type={backup_type}")
    return PhysicalBackup.from_info(info(config)[-1])


@dataclass
class PhysicalRestoreReport:
    target: str
    safety_backup_id: str | None
    downtime_s: float
    total_s: float
    row_counts: dict[str, int]


ARCHIVE_WAIT_S = 60


def archive_current_wal(config: StackConfig, progress: Progress) -> None:
    """Close the current WAL segment and wait until it is archived: a recovery target in the last minutes
    is only reachable with that WAL in the repository. Best effort: a cluster that is down has nothing
    more to archive, and an archive that lags is reported, not waited on forever."""
    try:
        with local_database(config).connect("postgres") as conn:
            row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
            segment = str(row[0]) if row else ""
            deadline = time.monotonic() + ARCHIVE_WAIT_S
            while time.monotonic() < deadline:
                done = conn.execute(
                    "SELECT length(last_archived_wal) = 24 AND last_archived_wal >= %s FROM pg_stat_archiver",
                    (segment,),
                ).fetchone()
                if done and done[0]:
                    progress(f"WAL up to {segment} is archived")
                    return
                time.sleep(0.2)
            progress(f"warning: WAL segment {segment} not archived after {ARCHIVE_WAIT_S}s; "
                     "restoring from what the repository holds")
    except psycopg.OperationalError:
        progress("the database is down: restoring from what the repository holds")


Runner = Callable[..., str]  # runs `pgbackrest <args>` for a stanza, returns its stdout


def physical_restore(
    config: StackConfig, secrets: Secrets, progress: Progress, to_time: str | None = None, label: str | None = None,
    safety_backup: bool = True, run: Runner | None = None,
) -> PhysicalRestoreReport:
    """Restore the cluster from the repository: to a time (WAL replay), to one backup set, or to the latest WAL.

    The API replicas keep running: while PostgreSQL is down they answer 503 on /api/ready, HAProxy takes them
    out, and they come back by themselves through PgBouncer when it is up again, so no process start-up sits
    in the recovery time. The background services are stopped (their LISTEN connection and in-flight loops
    must not act on a half-restored database) and started after. ``run`` replaces the stack's repository
    (the benchmark times this function against its own).
    """
    if run is None:
        _require_enabled(config)
        run = functools.partial(pgbackrest, config)
    started = time.monotonic()
    layout = StateLayout(config.state_dir)
    supervisor = Supervisor(layout)
    sets = [b["label"] for s in json.loads(run("info", "--output=json") or "[]") for b in s.get("backup", [])]
    if not sets:
        raise UserError("there are no physical backups in the repository",
                        fix="take one: invoke backup --method physical")
    if label is not None and label not in sets:
        raise UserError(f"no physical backup {label!r}", fix=f"choose one of: {', '.join(sets)}")
    if to_time is not None:
        options, target = ["--type=time", f"--target={to_time}", "--target-action=promote"], f"time {to_time}"
    elif label is not None:
        options, target = ["--type=immediate", f"--set={label}", "--target-action=promote"], f"backup {label}"
    else:
        options, target = [], "the end of the archived WAL"
    plan = build_plan(config, secrets)
    with backup_lock(layout.run):
        safety = None
        if safety_backup:
            try:
                safety = run_logical_backup(config, secrets, local_database(config), None, progress).id
                progress(f"safety backup {safety} taken")
            except UserError as exc:
                progress(f"no safety backup possible ({exc.problem}); continuing, as asked")
        archive_current_wal(config, progress)
        services = [p for p in plan.programs if p.component == "services"]
        for program in services:  # the API still serves meanwhile: not downtime yet
            supervisor.stop(program.name)
        down_at = time.monotonic()
        # HAProxy must not judge the replicas by what they answer while their database is being replaced: in
        # maintenance, clients get an immediate 503; back to ready, each replica serves after passing checks.
        haproxy_runtime.set_all_servers(layout.haproxy_socket, "maint")
        supervisor.stop("postgres")
        progress(f"pgbackrest restore to {target}")
        run("restore", "--delta", *options)
        # No wait for supervisord's startsecs: readiness is PostgreSQL's own answer below.
        supervisor.start("postgres", wait=False)

        def promoted() -> bool:
            with local_database(config).connect("postgres") as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and row[0] is False

        console.wait_until(promoted, 600, "PostgreSQL recovery", fix="read invoke logs postgres")
        haproxy_runtime.set_all_servers(layout.haproxy_socket, "ready")
        wait_for_load_balancer(config, layout)
        downtime = time.monotonic() - down_at
        for program in services:  # the API serves again; the command returns with the whole stack running
            supervisor.start(program.name, wait=True)
    with local_database(config).connect() as conn:
        counts = table_row_counts(conn)
    return PhysicalRestoreReport(target, safety, downtime, time.monotonic() - started, counts)
