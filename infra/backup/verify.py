"""`invoke backup.verify`: prove a backup restores, by restoring it.

Checks, in order: every object's size and sha256 against the manifest; pg_restore with --exit-on-error into
a throwaway PostgreSQL server of verification's own (``infra.backup.scratch_server``: a temporary cluster in the
scratch space, wherever the backup code runs); pg_amcheck (heap and every index); row counts equal to the
manifest's; a temporary Prefect API started on the restored copy answers and counts the same flow runs. The
verdict is written beside the backup (verification.json). The live database server is used for nothing: a
verification adds no data, WAL or replication traffic to it. A check that cannot run for reasons unrelated to
the backup (the scratch disk is full, the temporary server does not start) raises an error and records no verdict.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from infra.backup.catalog import BackupEntry
from infra.backup.database import DatabaseAccess
from infra.backup.fetch import check_objects, count_mismatches, fetch_dump, pg_restore
from infra.backup.logical import logical_prefix
from infra.backup.manifest import VERIFICATION, Verification
from infra.backup.scratch_server import create_restore_target, dump_owners, scratch_server
from infra.backup.storage import BackupStore
from infra.backup.streams import IntegrityError
from infra.config import StackConfig
from infra.errors import UserError
from infra.progress import Progress
from infra.secrets import Secrets

API_START_TIMEOUT_S = 90
# checksums, fetch, a server of its own, pg_restore, pg_amcheck, row counts, a Prefect API on the copy
VERIFY_STEPS = 7
# The restored copy next to the dump in the scratch space, as a multiple of the dump's raw size: the data again
# plus its indexes (an estimate, checked before anything is fetched).
RESTORED_COPY_FACTOR = 2
# Free bytes below which a failed restore is put down to the scratch disk, not to the backup.
SCRATCH_FULL_BYTES = 64 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query_temporary_api(database_url: str, scratch: Path, expected_flow_runs: int) -> str:
    """Start `prefect server start --no-services` on the restored copy, count flow runs through it, stop it."""
    port = _free_port()
    home = scratch / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false", "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    prefect = str(Path(sys.executable).parent / "prefect")
    log = (scratch / "temporary-api.log").open("wb")
    server = subprocess.Popen(
        [prefect, "server", "start", "--no-services", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + API_START_TIMEOUT_S
        with httpx.Client(timeout=10, trust_env=False) as client:
            while True:
                if server.poll() is not None:
                    raise IntegrityError(f"the temporary Prefect API exited at start (see {log.name})")
                try:
                    if client.get(f"{base}/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise IntegrityError("the temporary Prefect API on the restored copy never became ready")
                time.sleep(0.5)
            counted = client.post(f"{base}/flow_runs/count", json={}).json()
        if counted != expected_flow_runs:
            raise IntegrityError(f"the Prefect API counts {counted} flow runs, the manifest {expected_flow_runs}")
        return f"Prefect API on the restored copy counts {counted} flow runs"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def pg_amcheck(database: DatabaseAccess, name: str) -> None:
    argv = [database.tool("pg_amcheck"), "--install-missing", "--heapallindexed", "--no-password", name]
    result = subprocess.run(argv, env=database.env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise IntegrityError(f"pg_amcheck found corruption: {(result.stdout + result.stderr).strip()[-500:]}")


def restored_copy_url(server: DatabaseAccess, owner: str, name: str) -> str:
    """The restored database for the temporary Prefect API: over the private server's socket, as its owner."""
    return f"postgresql+asyncpg://{owner}@/{name}?host={server.host}&port={server.port}"


def _restore(server: DatabaseAccess, name: str, dump: Path, jobs: int, scratch: Path) -> None:
    """pg_restore into the private server; a scratch disk that filled up meanwhile is an error, not a verdict."""
    try:
        pg_restore(server, name, dump, jobs, privileges=False)
    except UserError as exc:
        free = shutil.disk_usage(scratch).free
        if "No space left" in exc.problem or free < SCRATCH_FULL_BYTES:
            raise UserError(f"the scratch disk filled up while restoring into the temporary server in {scratch} "
                            f"({free} bytes free)",
                            fix="free space there, or point backups.scratch_dir at a larger disk") from None
        raise


def verify_backup(
    config: StackConfig, secrets: Secrets, store: BackupStore, entry: BackupEntry, progress: Progress
) -> Verification:
    manifest = entry.manifest
    started = time.monotonic()
    checks: dict[str, bool] = {}
    scratch_db = config.postgres.database
    config.scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"verify-{manifest.id}-", dir=config.scratch_dir))
    detail = "all checks passed"
    try:
        try:
            with progress.steps(f"verifying backup {manifest.id}", VERIFY_STEPS) as steps:
                check_objects(store, manifest, progress)
                checks["checksums"] = True
                steps.step(f"checksums of {len(manifest.objects)} objects match the manifest")
                fetch_dump(store, manifest, secrets, scratch / "dump", progress,
                           also_needed=manifest.raw_size * RESTORED_COPY_FACTOR, needed_for="its restored copy")
                steps.step("fetched, decrypted and decompressed into scratch space")
                with scratch_server(config, scratch) as server:
                    steps.step(f"a temporary PostgreSQL server of its own started in {scratch}")
                    owners = dump_owners(server, scratch / "dump", config.postgres.user)
                    create_restore_target(server, scratch_db, owners)
                    _restore(server, scratch_db, scratch / "dump", config.backups.jobs, scratch)
                    checks["restore"] = True
                    steps.step("restored into the temporary server with --exit-on-error")
                    pg_amcheck(server, scratch_db)
                    checks["amcheck"] = True
                    steps.step("pg_amcheck: no corruption in tables or indexes")
                    mismatches = count_mismatches(server, scratch_db, manifest)
                    if mismatches:
                        raise IntegrityError("row counts differ from the manifest: " + ", ".join(
                            f"{t} expected {e} found {f}" for t, (e, f) in mismatches.items()))
                    checks["row_counts"] = True
                    steps.step(f"row counts of {len(manifest.row_counts)} tables match the manifest")
                    steps.step(query_temporary_api(
                        restored_copy_url(server, config.postgres.user, scratch_db), scratch,
                        manifest.row_counts.get("flow_run", 0),
                    ))
                    checks["prefect_api"] = True
            ok = True
        except IntegrityError as exc:
            ok, detail = False, str(exc)
        except UserError as exc:
            if "pg_restore" in exc.problem:  # the dump itself does not restore: that is the backup's verdict
                ok, detail = False, exc.problem
            else:
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    verdict = Verification(
        backup_id=manifest.id, verified_at=datetime.now(UTC), ok=ok, detail=detail, checks=checks,
        duration_s=round(time.monotonic() - started, 2),
    )
    store.put_json(logical_prefix(store, manifest.id) + VERIFICATION, verdict.model_dump(mode="json"))
    return verdict
