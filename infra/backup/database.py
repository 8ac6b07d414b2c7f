"""How backup code reaches PostgreSQL, independent of the target: the Unix socket locally, the ``postgres`` service
over TCP on compose (the code runs in a project container there), a Service on Kubernetes."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from infra.config import StackConfig
from infra.layout import StateLayout
from infra.secrets import Secrets
from infra.targets import target_for

Row = tuple[object, ...]


@dataclass(frozen=True)
class DatabaseAccess:
    host: str  # a directory means a Unix socket
    port: int
    user: str
    dbname: str
    bin_dir: Path
    password: str | None = None
    sslmode: str | None = None  # libpq's; None: its default (prefer)
    sslrootcert: str | None = None  # the CA file the verify sslmodes check the server against; None: libpq's default

    def connect(self, dbname: str | None = None, autocommit: bool = True) -> psycopg.Connection[Row]:
        # libpq's default sslmode (prefer) when none is set: the socket and compose targets use no TLS.
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=dbname or self.dbname,
            password=self.password, autocommit=autocommit, connect_timeout=10, sslmode=self.sslmode or "prefer",
            sslrootcert=self.sslrootcert,
        )

    def env(self) -> dict[str, str]:
        """Environment for pg_dump / pg_restore / pg_amcheck (password never on a command line)."""
        env = {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user}
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        if self.sslrootcert:
            env["PGSSLROOTCERT"] = self.sslrootcert
        return env

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def with_db(self, dbname: str) -> DatabaseAccess:
        return dataclasses.replace(self, dbname=dbname)


def local_database(config: StackConfig) -> DatabaseAccess:
    """The superuser over the stack's Unix socket (peer authentication: the operator maps to 'postgres')."""
    return DatabaseAccess(
        host=str(StateLayout(config.state_dir).run), port=config.postgres.port, user="postgres",
        dbname=config.postgres.database, bin_dir=config.postgres.bin_dir,
    )


def database_access(config: StackConfig, secrets: Secrets) -> DatabaseAccess:
    """The superuser's way in on this configuration's target, from where the backup code runs there (the target
    says which: the Unix socket on this host, the compose service over TCP, the Cluster's primary over TLS)."""
    return target_for(config).database_access(secrets)


def table_data_bytes(conn: psycopg.Connection[Row]) -> int:
    """On-disk size of the public tables' data (TOAST included, indexes not): what a dump roughly holds, so an
    estimate of the work a backup has ahead of it (shown as its progress total)."""
    row = conn.execute(
        "SELECT coalesce(sum(pg_table_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'"
    ).fetchone()
    return int(str(row[0])) if row else 0


def table_row_counts(conn: psycopg.Connection[Row]) -> dict[str, int]:
    """Exact row counts of every table in the public schema (Prefect's tables), in the connection's snapshot."""
    tables = [str(r[0]) for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    ).fetchall()]
    counts = {}
    for table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
        counts[table] = int(row[0]) if row else 0  # type: ignore[call-overload]
    return counts


def alembic_revision(conn: psycopg.Connection[Row]) -> str:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except psycopg.errors.UndefinedTable:
        return "none"
    return str(row[0]) if row else "none"


def server_version(conn: psycopg.Connection[Row]) -> str:
    row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"
