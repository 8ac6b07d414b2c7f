"""Backups to the stack's own S3 endpoint, verification and restore, against the real stack. Failure cases included."""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.backup.catalog import list_backups
from infra.backup.database import local_database
from infra.backup.logical import backup_lock, logical_prefix, run_logical_backup
from infra.backup.manifest import MANIFEST
from infra.backup.storage import BackupStore
from infra.config import load_config
from infra.errors import UserError
from infra.progress import QuietProgress
from infra.secrets import load_secrets
from tests.conftest import free_ports
from tests.integration.conftest import Stack


def _store(stack: Stack) -> BackupStore:
    return BackupStore.from_config(load_config(), load_secrets(stack.layout.secrets))


def _backup(stack: Stack, **env: str) -> dict[str, Any]:
    saved = dict(stack.env)
    stack.env.update(env)
    try:
        result = stack.invoke("backup", "--json")
    finally:
        stack.env.clear()
        stack.env.update(saved)
    assert result.returncode == 0, result.stderr[-3000:]
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _create_runs(stack: Stack, label: str, count: int) -> list[str]:
    with stack.client() as client:
        flow_id = client.post("/flows/", json={"name": f"backup-{label}"}).json()["id"]
        return [client.post("/flow_runs/", json={"flow_id": flow_id, "name": f"{label}-{i}"}).json()["id"]
                for i in range(count)]


def _run_exists(stack: Stack, run_id: str) -> bool:
    with stack.client() as client:
        return client.get(f"/flow_runs/{run_id}").status_code == 200


@pytest.fixture(scope="module")
def first_backup(stack: Stack) -> dict[str, Any]:
    _create_runs(stack, "before-first-backup", 5)
    return _backup(stack)


def test_backup_prints_its_id(first_backup: dict[str, Any]) -> None:
    assert first_backup["id"]
    assert first_backup["objects"] > 1


def test_backup_is_listed_with_its_location(stack: Stack, first_backup: dict[str, Any]) -> None:
    listed = json.loads(stack.invoke("backup.list", "--json", check=True).stdout)
    entry = next(b for b in listed if b["id"] == first_backup["id"])
    assert entry["method"] == "logical"
    assert entry["location"] == f"s3://{stack.config.backups.s3.bucket}/{stack.config.backups.s3.prefix}"
    assert entry["size"] == first_backup["size"]


@pytest.mark.parametrize("field", ["prefect_version", "postgres_version", "alembic_revision", "row_counts", "objects"])
def test_manifest_records(stack: Stack, first_backup: dict[str, Any], field: str) -> None:
    store = _store(stack)
    manifest = store.get_json(logical_prefix(store, first_backup["id"]) + MANIFEST)
    assert manifest is not None
    assert manifest[field]


def test_manifest_lists_every_stored_object_with_its_checksum(stack: Stack, first_backup: dict[str, Any]) -> None:
    store = _store(stack)
    prefix = logical_prefix(store, first_backup["id"])
    manifest = store.get_json(prefix + MANIFEST)
    assert manifest is not None
    stored = {key: size for key, size in store.list_keys(prefix) if not key.endswith(".json")}
    assert {o["key"]: o["size"] for o in manifest["objects"]} == stored
    assert all(len(o["sha256"]) == 64 for o in manifest["objects"])


def test_manifest_row_counts_match_the_database(stack: Stack, first_backup: dict[str, Any]) -> None:
    store = _store(stack)
    manifest = store.get_json(logical_prefix(store, first_backup["id"]) + MANIFEST)
    assert manifest is not None
    with stack.client() as client:
        assert manifest["row_counts"]["flow_run"] >= 5
        assert manifest["row_counts"]["flow"] == len(client.post("/flows/filter", json={"limit": 200}).json())


def _live_databases(stack: Stack) -> set[str]:
    with local_database(stack.config).connect("postgres") as conn:
        return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def _temporary_servers() -> set[Path]:
    """Socket directories of verification's temporary servers (infra.backup.scratch_server)."""
    return set(Path(tempfile.gettempdir()).glob("prefect-verify-*"))


@pytest.fixture(scope="module")
def verified(stack: Stack, first_backup: dict[str, Any]) -> dict[str, Any]:
    """One verification, with what the live server showed meanwhile: its databases, polled while it ran."""
    before, servers = _live_databases(stack), _temporary_servers()
    seen: list[set[str]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(_live_databases(stack))
            done.wait(0.2)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        result = stack.invoke("backup.verify", "--id", first_backup["id"])
    finally:
        done.set()
        poller.join()
    return {"result": result, "before": before, "seen": seen, "after": _live_databases(stack),
            "servers_left": _temporary_servers() - servers}


def test_verify_restores_and_records_the_verdict(stack: Stack, first_backup: dict[str, Any],
                                                 verified: dict[str, Any]) -> None:
    result = verified["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    for check in ("checksums", "temporary PostgreSQL server", "pg_amcheck", "row counts", "Prefect API"):
        assert check in result.stderr
    listed = json.loads(stack.invoke("backup.list", "--json", check=True).stdout)
    assert next(b for b in listed if b["id"] == first_backup["id"])["verified"] == "verified"


def test_verify_never_restores_into_the_live_server(verified: dict[str, Any]) -> None:
    assert len(verified["seen"]) > 3  # the poller watched the whole run
    assert all(databases == verified["before"] for databases in verified["seen"])
    assert verified["after"] == verified["before"]


def test_verify_leaves_no_temporary_server_behind(stack: Stack, verified: dict[str, Any]) -> None:
    assert verified["servers_left"] == set()
    assert not list(stack.config.scratch_dir.glob("verify-*"))


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_damaged_object_fails_verification_naming_it(stack: Stack, damage: str) -> None:
    backup_id = _backup(stack)["id"]
    store = _store(stack)
    prefix = logical_prefix(store, backup_id)
    manifest = store.get_json(prefix + MANIFEST)
    assert manifest is not None
    victim = max(manifest["objects"], key=lambda o: o["size"])["key"]
    body = store.open_object(victim).read()
    damaged = body[: len(body) // 2] if damage == "truncated" else body[:-1] + bytes([body[-1] ^ 0xFF])
    store._client.put_object(Bucket=store.bucket, Key=victim, Body=damaged)

    result = stack.invoke("backup.verify", "--id", backup_id)
    assert result.returncode == 1
    assert victim in result.stderr
    assert "Traceback" not in result.stderr
    listed = json.loads(stack.invoke("backup.list", "--json", check=True).stdout)
    assert next(b for b in listed if b["id"] == backup_id)["verified"] == "FAILED"

    # ...and restore refuses it before touching anything.
    pids = stack.pids()
    refused = stack.invoke("restore", "--id", backup_id, "--yes")
    assert refused.returncode == 1
    assert victim in refused.stderr
    assert stack.pids() == pids
    store.delete_prefix(prefix)  # later tests restore "the latest" backup


def test_restore_without_yes_is_refused(stack: Stack, first_backup: dict[str, Any]) -> None:
    result = stack.invoke("restore", "--id", first_backup["id"])
    assert result.returncode == 1
    assert "--yes" in result.stderr


def test_restore_of_an_unknown_id_names_the_problem(stack: Stack) -> None:
    result = stack.invoke("restore", "--id", "20000101T000000Z", "--yes")
    assert result.returncode == 1
    assert "no backup with id" in result.stderr and "Traceback" not in result.stderr


def test_a_second_backup_while_one_runs_is_refused(stack: Stack) -> None:
    with backup_lock(stack.layout.run):
        result = stack.invoke("backup")
    assert result.returncode == 1
    assert "another backup" in result.stderr


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}, "cannot reach the S3 endpoint"),
        ({}, "no S3 credentials"),
    ],
    ids=["unreachable", "no-credentials"],
)
def test_s3_failure_is_clear_and_marks_nothing_complete(
    stack: Stack, credentials: dict[str, str], message: str
) -> None:
    before = [b["id"] for b in json.loads(stack.invoke("backup.list", "--json", check=True).stdout)]
    saved = dict(stack.env)
    stack.env["PREFECT_STACK_BACKUPS__S3__ENDPOINT_URL"] = f"http://127.0.0.1:{free_ports(1)[0]}"
    stack.env.update(credentials)
    try:
        result = stack.invoke("backup")
    finally:
        stack.env.clear()
        stack.env.update(saved)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert [b["id"] for b in json.loads(stack.invoke("backup.list", "--json", check=True).stdout)] == before


def test_an_upload_interrupted_midway_leaves_no_restorable_backup(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config()
    secrets = load_secrets(stack.layout.secrets)
    store = _store(stack)
    before = [e.manifest.id for e in list_backups(store)]
    real_upload = BackupStore.upload_stream
    calls: list[str] = []

    def failing_upload(self: BackupStore, key: str, stream: Any) -> Any:
        calls.append(key)
        if len(calls) == 3:
            raise UserError("connection reset while uploading", fix="retry")
        return real_upload(self, key, stream)

    monkeypatch.setattr(BackupStore, "upload_stream", failing_upload)
    with pytest.raises(UserError, match="connection reset"):
        run_logical_backup(config, secrets, local_database(config), stack.layout.run, QuietProgress())
    monkeypatch.undo()
    assert len(calls) >= 3  # the failure happened mid-backup, after other objects were stored
    assert [e.manifest.id for e in list_backups(store)] == before
    assert not list(config.scratch_dir.glob("backup-*"))


def test_scratch_disk_full_during_verify_is_a_clear_error(stack: Stack, first_backup: dict[str, Any]) -> None:
    tiny = Path(tempfile.mkdtemp(prefix="prefect-stack-tiny-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], check=True)
    try:
        saved = dict(stack.env)
        stack.env["PREFECT_STACK_BACKUPS__SCRATCH_DIR"] = str(tiny)
        try:
            result = stack.invoke("backup.verify", "--id", first_backup["id"])
        finally:
            stack.env.clear()
            stack.env.update(saved)
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
        tiny.rmdir()
    assert result.returncode == 1
    assert "space" in result.stderr and str(tiny) in result.stderr
    assert "Traceback" not in result.stderr
    listed = json.loads(stack.invoke("backup.list", "--json", check=True).stdout)
    assert next(b for b in listed if b["id"] == first_backup["id"])["verified"] == "verified"  # verdict untouched


def test_client_side_encrypted_backup_verifies(stack: Stack) -> None:
    backup_id = _backup(stack, PREFECT_STACK_BACKUPS__CLIENT_SIDE_ENCRYPTION="true")["id"]
    store = _store(stack)
    manifest = store.get_json(logical_prefix(store, backup_id) + MANIFEST)
    assert manifest is not None and manifest["encrypted"] is True
    first = manifest["objects"][0]
    assert first["key"].endswith(".zst.enc")
    assert not store.open_object(first["key"]).read().startswith(b"\x28\xb5\x2f\xfd")  # no plain zstd frame
    assert stack.invoke("backup.verify", "--id", backup_id).returncode == 0


@pytest.fixture
def restored(stack: Stack) -> Iterator[dict[str, Any]]:
    kept = _create_runs(stack, f"kept-{uuid.uuid4().hex[:6]}", 4)
    backup_id = _backup(stack)["id"]
    lost = _create_runs(stack, f"after-{uuid.uuid4().hex[:6]}", 3)
    result = stack.invoke("restore", "--id", backup_id, "--yes", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    yield {"kept": kept, "lost": lost, "report": json.loads(result.stdout), "backup_id": backup_id}


def test_restore_brings_back_exactly_the_backed_up_data(stack: Stack, restored: dict[str, Any]) -> None:
    assert all(_run_exists(stack, run) for run in restored["kept"])
    assert not any(_run_exists(stack, run) for run in restored["lost"])
    report = restored["report"]
    assert report["rows_found"] >= report["rows_expected"]
    assert report["tables_short"] == []
    assert stack.invoke("status").returncode == 0

    # The safety backup taken first holds what the restore replaced.
    store = _store(stack)
    safety = store.get_json(logical_prefix(store, report["safety_backup_id"]) + MANIFEST)
    restored_from = store.get_json(logical_prefix(store, restored["backup_id"]) + MANIFEST)
    assert safety is not None and restored_from is not None
    assert safety["row_counts"]["flow_run"] == restored_from["row_counts"]["flow_run"] + len(restored["lost"])


def test_env_backups_lets_boto3_reach_the_bucket(stack: Stack, first_backup: dict[str, Any]) -> None:
    exports = stack.invoke("env", "--backups", check=True).stdout
    script = (
        "import boto3, os; b, _, p = os.environ['PREFECT_STACK_BACKUP_LOCATION'][5:].partition('/'); "
        "print(sum(1 for _ in boto3.client('s3').list_objects_v2(Bucket=b, Prefix=p + '/logical/')['Contents']))"
    )
    import sys

    result = subprocess.run(["bash", "-c", f"{exports}\n{sys.executable} -c \"{script}\""],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip()) >= first_backup["objects"]
