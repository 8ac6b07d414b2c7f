"""Creating the stack's PostgreSQL cluster and keeping its roles, database and extension as configured."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from infra.config import StackConfig
from infra.errors import UserError
from infra.layout import StateLayout
from infra.render.postgres import MONITOR_ROLE
from infra.secrets import Secrets

SUPERUSER = "postgres"


def run_as_ids(run_as: str | None) -> tuple[int | None, int | None]:
    """(uid, gid) for subprocess's user= and group= that drop to the service user; (None, None) keeps ours."""
    if run_as is None:
        return None, None
    entry = pwd.getpwnam(run_as)
    return entry.pw_uid, entry.pw_gid


def initialise_cluster(config: StackConfig, layout: StateLayout, secrets: Secrets, run_as: str | None) -> bool:
    """initdb the data directory if it has no cluster yet. Returns True when a cluster was created."""
    data = layout.postgres_data
    if (data / "PG_VERSION").exists():
        return False
    if any(data.iterdir()):
        raise UserError(
            f"{data} is not empty but holds no PostgreSQL cluster (no PG_VERSION)",
            fix="move its contents away, or restore the cluster into it, then deploy again",
        )
    # initdb reads the superuser password from a file the service user can read; it is removed at once.
    uid, gid = run_as_ids(run_as)
    pwfile = layout.run / ".initdb-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.get("postgres_superuser"))
    try:
        if uid is not None and gid is not None:
            os.chown(pwfile, uid, gid)
        result = subprocess.run(
            [
                str(config.postgres.bin_dir / "initdb"),
                "-D", str(data),
                "--username", SUPERUSER,
                "--pwfile", str(pwfile),
                "--auth-local", "peer",
                "--auth-host", "scram-sha-256",
                "--encoding", "UTF8",
                "--locale", "C.UTF-8",
                "--data-checksums",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise UserError(f"initdb failed: {result.stderr.strip()}", fix=f"check that {data} is writable and empty")
    return True


Row = tuple[object, ...]


def admin_connect(config: StackConfig, layout: StateLayout, dbname: str = "postgres") -> psycopg.Connection[Row]:
    """Superuser connection over the Unix socket (peer authentication, no password)."""
    return psycopg.connect(
        host=str(layout.run), port=config.postgres.port, user=SUPERUSER, dbname=dbname, autocommit=True,
        connect_timeout=5,
    )


def _set_role(cur: psycopg.Cursor[Row], role: str, password: str, create: bool) -> None:
    verb = "CREATE ROLE {} LOGIN PASSWORD {}" if create else "ALTER ROLE {} WITH LOGIN PASSWORD {}"
    cur.execute(sql.SQL(verb).format(sql.Identifier(role), sql.Literal(password)))


AdminConnect = Callable[[str], "psycopg.Connection[Row]"]


def ensure_database(
    config: StackConfig, layout: StateLayout, secrets: Secrets, connect: AdminConnect | None = None
) -> None:
    """Roles with the current passwords (so rotation is one deploy), the database, and pg_trgm. Idempotent.

    ``connect(dbname)`` opens a superuser connection: the Unix socket locally, TCP with the password in a container.
    """
    pg = config.postgres
    connect = connect or (lambda dbname: admin_connect(config, layout, dbname))
    with connect("postgres") as conn, conn.cursor() as cur:
        # Statements carrying passwords must not end up in the server log.
        cur.execute("SET log_statement = 'none'")
        cur.execute("SET log_min_duration_statement = -1")
        _set_role(cur, SUPERUSER, secrets.get("postgres_superuser"), create=False)
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (pg.user,))
        _set_role(cur, pg.user, secrets.get("postgres_prefect"), create=cur.fetchone() is None)
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (pg.database,))
        if cur.fetchone() is None:
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(pg.database), sql.Identifier(pg.user))
            )
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (MONITOR_ROLE,))
        _set_role(cur, MONITOR_ROLE, secrets.get("postgres_monitor"), create=cur.fetchone() is None)
        # pg_monitor: the statistics views postgres_exporter reads, and nothing else.
        cur.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(MONITOR_ROLE)))
    with connect(pg.database) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        grant_monitor_reads(conn, pg.user)


def grant_monitor_reads(conn: psycopg.Connection[Row], owner: str) -> None:
    """The Prefect exporter reads flow runs, work pools and workers: read-only, also on tables that later
    migrations create (default privileges of ``owner``, the role that runs the migrations). Idempotent.

    Needs no superuser: the database's owner may run it over a connection to its database (PostgreSQL 15's
    ``public`` schema belongs to the database owner, the tables to the role that made them), which is how the
    Kubernetes migration Job applies it (``python -m infra.containers.migrate --as-owner``).
    """
    monitor = sql.Identifier(MONITOR_ROLE)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(monitor))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(monitor))
    conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT ON TABLES TO {}")
                 .format(sql.Identifier(owner), monitor))


def role_exists(conn: psycopg.Connection[Row], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def server_version(config: StackConfig, layout: StateLayout) -> str:
    with admin_connect(config, layout) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def data_dir_is_cluster(path: Path) -> bool:
    return (path / "PG_VERSION").exists()
