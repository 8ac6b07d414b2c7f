"""The Kubernetes migration's owner mode (infra/containers/migrate.py ``--as-owner``) on a real PostgreSQL 15: the
database owner, with no superuser right, grants the monitor role read access to today's tables and to those later
migrations create.

The server is a throwaway cluster in a temporary directory (initdb, trust authentication over a Unix socket only),
set up the way CloudNativePG leaves a Cluster: the owner role owning the database (bootstrap.initdb) and
prefect_monitor a member of pg_monitor (the managed role). Skipped where PostgreSQL 15's binaries are not installed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from infra.containers.migrate import grant_as_owner
from infra.containers.migrate import main as migrate_main
from infra.render.postgres import MONITOR_ROLE
from tests.throwaway_postgres import SUPERUSER, Server, throwaway_postgres

OWNER = "prefect"
DATABASE = "prefect"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with throwaway_postgres("pg-owner-") as running:
        with running.connect(SUPERUSER) as conn:
            # What CloudNativePG makes: initdb's owner and database, then the managed monitor role.
            owner = sql.Identifier(OWNER)
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(owner))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), owner))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(MONITOR_ROLE)))
        yield dataclasses.replace(running, database=DATABASE)


@pytest.fixture(scope="module")
def granted(server: Server) -> Server:
    """A table from before the grants (an earlier migration), the grants as the owner, then a table a later
    migration creates."""
    with server.connect(OWNER) as conn:
        conn.execute("CREATE TABLE flow_run (id int)")
    assert grant_as_owner(lambda dbname: server.connect(OWNER, dbname), DATABASE, OWNER, role_timeout_s=0)
    with server.connect(OWNER) as conn:
        conn.execute("CREATE TABLE work_pool (id int)")
    return server


def test_the_owner_is_no_superuser(server: Server) -> None:
    with server.connect(SUPERUSER, "postgres") as conn:
        row = conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s", (OWNER,)).fetchone()
    assert row == (False, False)


@pytest.mark.parametrize("table", ["flow_run", "work_pool"])
def test_monitor_reads(granted: Server, table: str) -> None:
    with granted.connect(MONITOR_ROLE) as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone() == (0,)


@pytest.mark.parametrize("table", ["flow_run", "work_pool"])
def test_monitor_cannot_write(granted: Server, table: str) -> None:
    with granted.connect(MONITOR_ROLE) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(table)))


def test_grants_again_change_nothing(granted: Server) -> None:
    """Every migration Job runs them: idempotent."""
    assert grant_as_owner(lambda dbname: granted.connect(OWNER, dbname), DATABASE, OWNER, role_timeout_s=0)


def test_owner_mode_end_to_end(granted: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line the Job runs (but Prefect's own migration): connects as the owner with the mounted password
    file, grants, then hands over to the schema migration; no superuser password anywhere."""
    (tmp_path / "postgres_prefect").write_text("owner-password\n")
    handed_over: list[bool] = []

    def schema_migration() -> int:
        handed_over.append(True)
        return 0

    monkeypatch.setattr("infra.database.migrate.main", schema_migration)
    argv = ["--as-owner", "--monitor-grants", "--host", str(granted.socket_dir), "--port", str(granted.port),
            "--database", DATABASE, "--user", OWNER, "--secrets", str(tmp_path), "--sslmode", "disable"]
    assert migrate_main(argv) == 0
    assert handed_over == [True]


class _NoRole:
    """A connection to a server where the monitor role does not exist (yet): pg_roles finds nothing."""

    def __init__(self) -> None:
        self.executed: list[str] = []

    def __enter__(self) -> _NoRole:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, query: object, params: object = None) -> _NoRole:
        self.executed.append(str(query))
        return self

    def fetchone(self) -> None:
        return None


def test_missing_monitor_role_fails_with_where_to_look(capsys: pytest.CaptureFixture[str]) -> None:
    conn = _NoRole()
    naps: list[float] = []
    assert not grant_as_owner(lambda dbname: conn, DATABASE, OWNER,  # type: ignore[arg-type, return-value]
                              role_timeout_s=0, sleep=naps.append)
    assert "managedRolesStatus" in capsys.readouterr().err
    assert not any("GRANT" in q for q in conn.executed)
