"""BackupStore's object operations against an in-process S3 (moto): what is stored, and what an error says."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from moto import mock_aws

from infra.backup.storage import MIB, BackupStore
from infra.config import load_config
from infra.errors import UserError


def stored(store: BackupStore) -> dict[str, int]:
    return dict(store.list_keys(""))


@pytest.mark.parametrize("size", [0, 1000, 6 * MIB])
def test_upload_file_stores_the_whole_file(store: BackupStore, tmp_path: Path, size: int) -> None:
    path = tmp_path / "prefect.dump"
    path.write_bytes(b"x" * size)
    key = store.key("bench", "naive", path.name)
    assert store.upload_file(path, key) == size
    assert stored(store) == {key: size}


def test_upload_file_with_multipart_parts(store: BackupStore, tmp_path: Path) -> None:
    path = tmp_path / "prefect.dump"
    path.write_bytes(bytes(range(256)) * (48 * 1024))  # 12 MiB: three parts of 5 MiB at most
    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    store.upload_file(path, "big", transfer=transfer)
    with store.open_object("big") as body:
        assert body.read() == path.read_bytes()


def test_upload_file_to_a_missing_bucket_says_so(tmp_path: Path) -> None:
    with mock_aws():
        store = BackupStore(load_config(), boto3.client("s3", region_name="us-east-1"))
        path = tmp_path / "prefect.dump"
        path.write_bytes(b"x")
        with pytest.raises(UserError, match="bucket prefect-backups does not exist"):
            store.upload_file(path, "key")


def test_delete_removes_only_its_key(store: BackupStore) -> None:
    store.put_json("a.json", {})
    store.put_json("b.json", {})
    store.delete("a.json")
    assert set(stored(store)) == {"b.json"}


def test_delete_of_a_missing_key_is_not_an_error(store: BackupStore) -> None:
    store.delete("absent")
    assert stored(store) == {}
