"""`invoke backup` (logical): a consistent pg_dump streamed to S3, with a manifest written last.

Consistency: one REPEATABLE READ transaction exports a snapshot; the row counts recorded in the manifest and
every pg_dump worker (``--snapshot``) read that same snapshot, so the counts describe exactly what was dumped.

No full local copy: pg_dump writes the directory format with parallel jobs and no compression of its own.
As soon as pg_dump closes a file it is streamed through zstd (and optionally AES-GCM) into a multipart
upload and deleted, so the scratch directory only ever holds the files being written or uploaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import prefect

from infra.backup.database import (
    DatabaseAccess,
    alembic_revision,
    server_version,
    table_data_bytes,
    table_row_counts,
)
from infra.backup.manifest import MANIFEST, Manifest, ObjectEntry, new_backup_id
from infra.backup.storage import BackupStore
from infra.backup.streams import EncryptingReader, compressing_reader, encryption_key
from infra.config import StackConfig
from infra.errors import UserError
from infra.progress import ByteMeter, Progress
from infra.secrets import Secrets

POLL_S = 0.2
# Files uploaded at once; each upload is itself multipart with backups.s3.max_concurrency threads.
PARALLEL_FILES = 2


def logical_prefix(store: BackupStore, backup_id: str = "") -> str:
    """The folder of one backup, or (no id) the folder holding every logical backup; always ends in '/'."""
    return store.key("logical", backup_id) + "/"


@contextlib.contextmanager
def backup_lock(lock_dir: Path) -> Iterator[None]:
    """One backup or restore at a time on this host; a second one is refused, not queued."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / "backup.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(
            f"another backup or restore is running (pid {holder})",
            fix="wait for it to finish (runs never overlap); if no such process exists, retry",
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _process_tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                queue += [int(c) for c in children]
    return pids


def _open_files(pids: list[int]) -> set[str]:
    """Paths the given processes hold open: a dump file not among them is complete."""
    paths = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return paths


class _Counting:
    """Reports every chunk read from a dump file to the progress meter (bytes of dump processed)."""

    def __init__(self, source: IO[bytes], meter: ByteMeter) -> None:
        self.source, self.meter = source, meter

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.meter.advance(len(chunk))
        return chunk


class _Uploader:
    def __init__(self, store: BackupStore, prefix: str, level: int, key: bytes | None, meter: ByteMeter) -> None:
        self.store, self.prefix, self.level, self.key, self.meter = store, prefix, level, key, meter
        self.pool = ThreadPoolExecutor(max_workers=PARALLEL_FILES, thread_name_prefix="upload")
        self.futures: dict[str, Future[ObjectEntry]] = {}

    def _upload(self, path: Path) -> ObjectEntry:
        raw_size = path.stat().st_size
        suffix = ".zst.enc" if self.key else ".zst"
        key = self.prefix + path.name + suffix
        with path.open("rb") as handle:
            stream = compressing_reader(_Counting(handle, self.meter), self.level)  # type: ignore[arg-type]
            if self.key is not None:
                stream = EncryptingReader(stream, self.key)  # type: ignore[assignment]
            stored = self.store.upload_stream(key, stream)
        path.unlink()
        return ObjectEntry(name=path.name, key=key, size=stored.size, raw_size=raw_size, sha256=stored.sha256)

    def submit(self, path: Path) -> None:
        if path.name not in self.futures:
            self.futures[path.name] = self.pool.submit(self._upload, path)

    def failed(self) -> BaseException | None:
        for future in self.futures.values():
            if future.done() and future.exception() is not None:
                return future.exception()
        return None

    def results(self) -> list[ObjectEntry]:
        return sorted((f.result() for f in self.futures.values()), key=lambda o: o.name)


def run_logical_backup(
    config: StackConfig, secrets: Secrets, database: DatabaseAccess, lock_dir: Path | None, progress: Progress
) -> Manifest:
    """Take one logical backup. ``lock_dir`` None: the caller already holds the backup lock (restore)."""
    store = BackupStore.from_config(config, secrets)
    store.ensure_bucket()
    backups = config.backups
    key = encryption_key(secrets.get("backup_encryption")) if backups.client_side_encryption else None
    with backup_lock(lock_dir) if lock_dir is not None else contextlib.nullcontext():
        started = datetime.now(UTC)
        backup_id = new_backup_id(started)
        prefix = logical_prefix(store, backup_id)
        scratch = config.scratch_dir / f"backup-{backup_id}"
        dump_dir = scratch / "dump"
        scratch.mkdir(parents=True, exist_ok=False)
        uploader: _Uploader | None = None
        try:
            with database.connect(autocommit=False) as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                row = conn.execute("SELECT pg_export_snapshot()").fetchone()
                snapshot = str(row[0]) if row else ""
                revision, pg_version = alembic_revision(conn), server_version(conn)
                estimate = table_data_bytes(conn)
                progress(f"backup {backup_id}: pg_dump -j {backups.jobs} streaming to {store.location}")
                # The total is an estimate (table sizes on disk): the dump's size is known only at its end.
                with progress.transfer("dumping, compressing, uploading", estimate or None) as meter:
                    uploader = _Uploader(store, prefix, backups.zstd_level, key, meter)
                    # The exact row counts are read from the same snapshot while pg_dump runs, not before it.
                    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="count") as counter:
                        counting = counter.submit(table_row_counts, conn)
                        _dump_and_upload(database, snapshot, dump_dir, backups.jobs, uploader, progress)
                        counts = counting.result()
                conn.rollback()
            objects = uploader.results()
        except BaseException:
            if uploader is not None:
                uploader.pool.shutdown(wait=True, cancel_futures=True)
            shutil.rmtree(scratch, ignore_errors=True)
            # No manifest was written: the objects already uploaded are not a backup, and prune removes them.
            raise
        uploader.pool.shutdown(wait=True)
        shutil.rmtree(scratch, ignore_errors=True)
        manifest = Manifest(
            id=backup_id, method="logical", started_at=started, finished_at=datetime.now(UTC),
            database=database.dbname, postgres_version=pg_version, prefect_version=prefect.__version__,
            alembic_revision=revision, row_counts=counts, objects=objects, encrypted=key is not None,
            location=store.location,
        )
        store.put_json(prefix + MANIFEST, manifest.model_dump(mode="json"))  # last: the backup now exists
        return manifest


def _dump_and_upload(
    database: DatabaseAccess, snapshot: str, dump_dir: Path, jobs: int, uploader: _Uploader, progress: Progress
) -> None:
    argv = [
        database.tool("pg_dump"), "--format=directory", f"--jobs={jobs}", "--compress=0",
        f"--snapshot={snapshot}", f"--file={dump_dir}", "--no-password", database.dbname,
    ]
    dump = subprocess.Popen(argv, env=database.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last_report = time.monotonic()
    try:
        while True:
            finished = dump.poll() is not None
            if dump_dir.exists():
                busy = set() if finished else _open_files(_process_tree(dump.pid))
                for path in sorted(dump_dir.iterdir()):
                    if str(path) not in busy:
                        uploader.submit(path)
            error = uploader.failed()
            if error is not None:
                raise error
            if finished:
                break
            if time.monotonic() - last_report > 5:
                done = sum(1 for f in uploader.futures.values() if f.done())
                progress(f"  {done}/{len(uploader.futures)} files uploaded, pg_dump still running")
                last_report = time.monotonic()
            time.sleep(POLL_S)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    stderr = dump.stderr.read().decode(errors="replace") if dump.stderr else ""
    if dump.returncode != 0:
        raise UserError(f"pg_dump failed (exit {dump.returncode}): {stderr.strip()[-500:]}",
                        fix="read the message above; check the database is up (invoke status)")
    for future in list(uploader.futures.values()):
        future.result()  # re-raises the first upload error
