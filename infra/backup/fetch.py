"""From S3 back to a database: check every object against the manifest, fetch, and pg_restore into a new database."""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import zstandard
from psycopg import sql

from infra.backup.database import DatabaseAccess, table_row_counts
from infra.backup.manifest import Manifest, ObjectEntry
from infra.backup.storage import BackupStore
from infra.backup.streams import IntegrityError, decrypt_stream, encryption_key
from infra.errors import UserError
from infra.progress import ByteMeter, Progress
from infra.secrets import Secrets

READ_CHUNK = 1024 * 1024
PARALLEL_OBJECTS = 4
# Room to leave beyond the dump's raw size when staging a restore (pg_restore itself writes nothing there).
SCRATCH_HEADROOM = 1.05


class _Hashing:
    def __init__(self, source: IO[bytes], meter: ByteMeter) -> None:
        self.source, self.size, self.digest, self.meter = source, 0, hashlib.sha256(), meter

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.size += len(chunk)
        self.digest.update(chunk)
        self.meter.advance(len(chunk))
        return chunk


def _check_digest(entry: ObjectEntry, reader: _Hashing) -> None:
    if reader.size != entry.size:
        raise IntegrityError(f"{entry.key}: {reader.size} bytes stored, the manifest says {entry.size} (truncated?)")
    if reader.digest.hexdigest() != entry.sha256:
        raise IntegrityError(f"{entry.key}: sha256 differs from the manifest (altered or corrupted)")


def check_objects(store: BackupStore, manifest: Manifest, progress: Progress) -> None:
    """Stream every object and compare its size and sha256 with the manifest; nothing is written anywhere."""
    def check(entry: ObjectEntry, meter: ByteMeter) -> None:
        body = _Hashing(store.open_object(entry.key), meter)
        while body.read(READ_CHUNK):
            pass
        _check_digest(entry, body)

    with progress.transfer("checking checksums", manifest.size) as meter, \
            ThreadPoolExecutor(max_workers=PARALLEL_OBJECTS) as pool:
        for future in [pool.submit(check, entry, meter) for entry in manifest.objects]:
            future.result()


def _fetch_one(store: BackupStore, entry: ObjectEntry, dest: Path, key: bytes | None, meter: ByteMeter) -> None:
    body = _Hashing(store.open_object(entry.key), meter)
    with (dest / entry.name).open("wb") as handle, \
            zstandard.ZstdDecompressor().stream_writer(handle, closefd=False) as writer:
        if key is not None:
            decrypt_stream(body, writer, key, entry.key)  # type: ignore[arg-type]
        else:
            while chunk := body.read(READ_CHUNK):
                writer.write(chunk)
    _check_digest(entry, body)


def fetch_dump(store: BackupStore, manifest: Manifest, secrets: Secrets, dest: Path, progress: Progress,
               also_needed: int = 0, needed_for: str = "") -> None:
    """Download, verify, decrypt and decompress every object into ``dest`` (a pg_dump directory). ``also_needed``:
    bytes the caller will write beside it afterwards (``needed_for`` says what), checked before anything is fetched."""
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if free < manifest.raw_size * SCRATCH_HEADROOM + also_needed:
        beside = f" and {needed_for} about {also_needed}" if also_needed else ""
        raise UserError(
            f"not enough space in {dest}: {free} bytes free, the dump needs {manifest.raw_size}{beside}",
            fix="free space there, or point backups.scratch_dir at a larger disk",
        )
    key = encryption_key(secrets.get("backup_encryption")) if manifest.encrypted else None
    try:
        with progress.transfer("fetching the backup", manifest.size) as meter, \
                ThreadPoolExecutor(max_workers=PARALLEL_OBJECTS) as pool:
            for future in [pool.submit(_fetch_one, store, e, dest, key, meter) for e in manifest.objects]:
                future.result()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"the scratch disk filled up while fetching the backup into {dest}",
                            fix="free space there, or point backups.scratch_dir at a larger disk") from None
        raise


def create_database(database: DatabaseAccess, name: str, owner: str) -> None:
    with database.connect("postgres") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            sql.Identifier(name), sql.Identifier(owner)))


def drop_database(database: DatabaseAccess, name: str) -> None:
    with database.connect("postgres") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pg_restore(database: DatabaseAccess, name: str, dump_dir: Path, jobs: int, privileges: bool = True) -> None:
    """``privileges`` False: skip GRANT/REVOKE (a server that lacks the live cluster's other roles)."""
    argv = [database.tool("pg_restore"), f"--dbname={name}", f"--jobs={jobs}", "--exit-on-error", "--no-password",
            *([] if privileges else ["--no-privileges"]), str(dump_dir)]
    result = subprocess.run(argv, env=database.env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UserError(f"pg_restore into {name} failed: {result.stderr.strip()[-800:]}",
                        fix="the dump or the target database is damaged; see the message above")


def count_mismatches(database: DatabaseAccess, name: str, manifest: Manifest) -> dict[str, tuple[int, int]]:
    """{table: (expected, found)} for every table whose row count differs from the manifest."""
    with database.connect(name) as conn:
        found = table_row_counts(conn)
    tables = set(found) | set(manifest.row_counts)
    return {
        t: (manifest.row_counts.get(t, -1), found.get(t, -1))
        for t in sorted(tables) if manifest.row_counts.get(t, -1) != found.get(t, -1)
    }
