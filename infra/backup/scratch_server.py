"""A throwaway PostgreSQL server of verification's own, so checking a backup never loads the live one.

``scratch_server`` initdb's a cluster into a directory under the scratch space, starts it listening on a Unix
socket only (in a private directory, no TCP), yields how to reach it, and always stops it (``-m immediate``: nothing
in it is worth a checkpoint) and deletes both directories, on failure and on Ctrl-C too. It is private to the
process: trust authentication on a socket in a 0700 directory, fsync off, no WAL beyond the minimum. It runs the
same binaries (``postgres.bin_dir``, PostgreSQL 15, the dump's major) wherever the backup code runs: this host, the
compose backup container, the Kubernetes backup Job's pod. As root (the local target's tasks) the server runs as
the stack's unprivileged user (``local.run_as``): PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from psycopg import sql

from infra.backup.database import DatabaseAccess
from infra.config import StackConfig
from infra.errors import UserError

SUPERUSER = "postgres"
# Only the socket's name carries the port: nothing listens on TCP, so it never collides with anything.
PORT = 5432
START_TIMEOUT_S = 60
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres", "pg_restore", "pg_amcheck")
# Settings of a server nobody else uses and nobody needs after a crash. Memory stays small: the restore's index
# builds (maintenance_work_mem per pg_restore job) and the temporary Prefect API share the same container limit.
SETTINGS = {
    "listen_addresses": "''",
    "unix_socket_permissions": "0700",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "shared_buffers": "'128MB'",
    "maintenance_work_mem": "'128MB'",
    "work_mem": "'16MB'",
    # pg_restore's jobs, pg_amcheck and the temporary API's pool (5 plus 10 overflow by default).
    "max_connections": "40",
    # In files under the data directory, not /dev/shm (64 MB in a container by default).
    "dynamic_shared_memory_type": "mmap",
    "logging_collector": "off",
}


@contextlib.contextmanager
def scratch_server(config: StackConfig, scratch: Path) -> Iterator[DatabaseAccess]:
    """A running private server with its data under ``scratch``; the superuser's access to it (no password)."""
    for tool in SERVER_TOOLS:
        if not (config.postgres.bin_dir / tool).exists():
            raise UserError(f"{tool} not found in {config.postgres.bin_dir}: verification runs a PostgreSQL server "
                            "of its own", fix="install the PostgreSQL 15 server package (postgresql-15), or point "
                                              "postgres.bin_dir at its binaries")
    uid, gid = _server_user(config)
    data = scratch / "postgres"
    # Unix socket paths are limited to 107 bytes: the socket gets a short private directory of its own.
    socket_dir = Path(tempfile.mkdtemp(prefix="prefect-verify-"))
    log = scratch / "postgres.log"
    if uid is not None:
        for path in (scratch, socket_dir):
            os.chown(path, uid, gid if gid is not None else -1)
    try:
        _run(config, uid, gid, "initdb", ["-D", str(data), "--username", SUPERUSER, "--auth", "trust",
                                          "--encoding", "UTF8", "--locale", "C.UTF-8", "--no-sync"], scratch)
        settings = {**SETTINGS, "unix_socket_directories": f"'{socket_dir}'"}
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# prefect-stack: a throwaway server for backup verification\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        _run(config, uid, gid, "pg_ctl", ["start", "-D", str(data), "-l", str(log), "-w", "-t",
                                          str(START_TIMEOUT_S)], scratch, log)
        yield DatabaseAccess(host=str(socket_dir), port=PORT, user=SUPERUSER, dbname="postgres",
                             bin_dir=config.postgres.bin_dir)
    finally:
        # Also after a start that timed out: a postmaster that came up late must not outlive its directory.
        if (data / "postmaster.pid").exists():
            subprocess.run([str(config.postgres.bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate",
                            "-w"], capture_output=True, check=False, cwd="/", user=uid, group=gid,
                           extra_groups=[] if uid is not None else None)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)


def _server_user(config: StackConfig) -> tuple[int | None, int | None]:
    """(uid, gid) to run the server as: ours, or as root the stack's unprivileged user."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(config.local.run_as)
    except KeyError:
        raise UserError(f"as root, verification runs its temporary PostgreSQL server as {config.local.run_as}, "
                        "which does not exist (PostgreSQL refuses to run as root)",
                        fix="deploy the stack first (it creates that user), or run as an unprivileged user") from None
    return entry.pw_uid, entry.pw_gid


def _run(config: StackConfig, uid: int | None, gid: int | None, tool: str, args: list[str], scratch: Path,
         log: Path | None = None) -> None:
    result = subprocess.run([str(config.postgres.bin_dir / tool), *args], capture_output=True, text=True,
                            check=False, cwd="/", user=uid, group=gid, extra_groups=[] if uid is not None else None)
    if result.returncode == 0:
        return
    output = (result.stdout + result.stderr).strip()
    if log is not None and log.exists():
        output += "\n" + log.read_text(errors="replace").strip()
    free = shutil.disk_usage(scratch).free
    if "No space left" in output or free < 64 * 1024 * 1024:
        raise UserError(f"the scratch disk is full: the temporary PostgreSQL server could not start in {scratch} "
                        f"({free} bytes free)",
                        fix="free space there, or point backups.scratch_dir at a larger disk")
    if uid is not None and "Permission denied" in output:
        raise UserError(f"the temporary PostgreSQL server runs as {config.local.run_as} (PostgreSQL refuses root), "
                        f"which cannot reach {scratch}: {output[-300:]}",
                        fix="point backups.scratch_dir at a directory whose parents that user can traverse "
                            "(the default, <state>/scratch, is)")
    raise UserError(f"the temporary PostgreSQL server for verification failed ({tool}): {output[-800:]}",
                    fix="see the message above; verification needs the PostgreSQL server binaries and a "
                        "writable backups.scratch_dir")


def create_restore_target(server: DatabaseAccess, name: str, owners: list[str]) -> None:
    """The roles that own the dump's objects (LOGIN: the temporary API connects as the database's owner, as in
    production) and an empty database for pg_restore."""
    with server.connect("postgres") as conn:
        existing = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        for owner in owners:
            if owner not in existing:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            sql.Identifier(name), sql.Identifier(owners[0])))


def dump_owners(server: DatabaseAccess, dump_dir: Path, database_owner: str) -> list[str]:
    """The roles owning objects in the dump (its table of contents), the database's owner first. Roles are the
    cluster's, not the dump's; grants to other roles are skipped at restore (``--no-privileges``)."""
    result = subprocess.run([server.tool("pg_restore"), "--list", str(dump_dir)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise UserError(f"pg_restore --list of the fetched dump failed: {result.stderr.strip()[-500:]}",
                        fix="the dump is damaged; see the message above")
    owners = [database_owner]
    for line in result.stdout.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        owner = line.rpartition(" ")[2]  # the last field; empty for objects without one (extensions)
        if owner and owner not in owners and not owner.startswith("pg_"):
            owners.append(owner)
    return owners

