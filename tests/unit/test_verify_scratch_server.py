"""Verification's own throwaway PostgreSQL server (infra.backup.scratch_server): private, socket-only, and gone
afterwards whatever happened. Started for real (about half a second), with the PostgreSQL 15 binaries the local
target needs anyway."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.backup import scratch_server as server_module
from infra.backup.database import DatabaseAccess
from infra.backup.scratch_server import create_restore_target, dump_owners, scratch_server
from infra.backup.verify import restored_copy_url
from infra.config import StackConfig
from infra.errors import UserError

CONFIG = StackConfig()
needs_postgres = pytest.mark.skipif(not (CONFIG.postgres.bin_dir / "initdb").exists(),
                                    reason="no PostgreSQL 15 server binaries")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Scratch space the stack's unprivileged user can reach (as root the server runs as that user; pytest's own
    temporary directories are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="verify-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_postgres
def test_the_server_listens_on_a_private_socket_only_and_is_gone_afterwards(scratch: Path) -> None:
    with scratch_server(CONFIG, scratch) as server:
        socket_dir = Path(server.host)
        assert socket_dir.stat().st_mode & 0o777 == 0o700
        with server.connect("postgres") as conn:
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('listen_addresses', 'fsync')").fetchall())
        assert settings == {"listen_addresses": "", "fsync": "off"}
    assert not socket_dir.exists()
    assert not (scratch / "postgres").exists()


@needs_postgres
def test_a_failure_inside_still_stops_and_removes_the_server(scratch: Path) -> None:
    with pytest.raises(RuntimeError), scratch_server(CONFIG, scratch) as server:
        raise RuntimeError("a check failed")
    assert not Path(server.host).exists()
    assert not (scratch / "postgres").exists()


def test_missing_server_binaries_are_a_user_error_naming_the_package(tmp_path: Path) -> None:
    config = StackConfig(postgres={"bin_dir": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match="initdb not found") as raised, scratch_server(config, tmp_path):
        pass
    assert raised.value.fix is not None and "postgresql-15" in raised.value.fix


def test_the_restored_database_owners_come_from_the_dumps_table_of_contents(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toc = (";\n; Archive created at 2026-12-05\n;\n"
           "2; 3079 16385 EXTENSION - pg_trgm \n"
           "216; 1259 16390 TABLE public flow prefect\n"
           "3370; 0 0 ACL - SCHEMA public pg_database_owner\n"
           "217; 1259 16391 TABLE public legacy someone_else\n")

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, toc, "")

    monkeypatch.setattr(server_module.subprocess, "run", fake_run)
    access = DatabaseAccess(host="/s", port=5432, user="postgres", dbname="postgres", bin_dir=Path("/bin"))
    assert dump_owners(access, tmp_path, "prefect") == ["prefect", "someone_else"]


@needs_postgres
def test_the_temporary_api_reaches_the_restored_copy_through_the_private_socket_as_its_owner(scratch: Path) -> None:
    with scratch_server(CONFIG, scratch) as server:
        create_restore_target(server, "prefect", ["prefect"])
        url = restored_copy_url(server, "prefect", "prefect")
        assert url == f"postgresql+asyncpg://prefect@/prefect?host={server.host}&port=5432"
        with DatabaseAccess(host=server.host, port=server.port, user="prefect", dbname="prefect",
                            bin_dir=server.bin_dir).connect() as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("prefect", "prefect")
