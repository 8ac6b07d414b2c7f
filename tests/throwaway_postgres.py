"""A throwaway PostgreSQL 15 for the unit tests that need the real server: a cluster in a temporary directory,
trust authentication over a Unix socket only (no port is opened), stopped and deleted afterwards. Skips the test
where PostgreSQL 15's binaries are not installed."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
# PostgreSQL refuses to run as root: as root, the server runs as Debian's postgres user.
SERVER_USER = "postgres"
SUPERUSER = "postgres"


@dataclass(frozen=True)
class Server:
    socket_dir: Path
    port: int
    database: str = "postgres"  # what connect() opens unless told otherwise (dataclasses.replace to change it)

    def connect(self, user: str, dbname: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=user, dbname=dbname or self.database,
                               autocommit=True)

    def url(self, user: str) -> str:
        """The SQLAlchemy URL of the database on this server (psycopg 3 driver)."""
        return f"postgresql+psycopg://{user}@/{self.database}?host={self.socket_dir}&port={self.port}"


def _ids() -> tuple[int | None, int | None]:
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.skip(f"running as root and no {SERVER_USER} user to run PostgreSQL as")
    return entry.pw_uid, entry.pw_gid


@contextmanager
def throwaway_postgres(prefix: str) -> Iterator[Server]:
    """A running server whose superuser is ``postgres``; ``prefix`` names its temporary directory."""
    if not (BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL 15 at {BIN}")
    uid, gid = _ids()
    # Not under pytest's base directory: as root it is 0700, which the server's user cannot enter.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    data, socket_dir = root / "data", root / "run"
    socket_dir.mkdir()
    if uid is not None and gid is not None:
        for path in (root, socket_dir):
            os.chown(path, uid, gid)
    as_server: dict[str, Any] = {"user": uid, "group": gid, "extra_groups": [] if uid is not None else None}

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd="/", **as_server)

    port = 5432  # a Unix socket only (listen_addresses ''): the port just names the socket file
    try:
        run(str(BIN / "initdb"), "-D", str(data), "--username", SUPERUSER, "--auth", "trust", "--encoding",
            "UTF8", "--locale", "C.UTF-8")
        run(str(BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
            f"-c listen_addresses='' -k {socket_dir} -p {port}", "start")
        yield Server(socket_dir, port)
    finally:
        if (data / "postmaster.pid").exists():
            run(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
