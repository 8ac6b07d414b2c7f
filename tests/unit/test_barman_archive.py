"""The Barman Cloud archive read from S3 (moto): which base backup a point-in-time recovery can start from."""

from __future__ import annotations

import pytest

from infra.backup.barman_archive import base_backup_for, completed_base_backups
from infra.backup.storage import BackupStore
from infra.errors import UserError


def _put(store: BackupStore, key: str, body: str) -> None:
    store._client.put_object(Bucket=store.bucket, Key=store.key("cnpg", "prefect-db", key), Body=body.encode())


def _base(store: BackupStore, backup_id: str, end: str, status: str = "DONE") -> None:
    _put(store, f"base/{backup_id}/backup.info", f"begin_time=2026-11-26 01:00:00+00:00\nend_time={end}\n"
                                                 f"status={status}\n")
    _put(store, f"base/{backup_id}/data.tar.lz4", "tar")


@pytest.fixture
def wal(store: BackupStore) -> BackupStore:
    _put(store, "wals/0000000100000000/000000010000000000000001.zst", "wal")
    return store


def test_the_newest_before_the_target(wal: BackupStore) -> None:
    for day in ("25", "26", "27"):
        _base(wal, f"202611{day}T020000", f"2026-11-{day} 02:05:00.5+00:00")
    assert base_backup_for(wal, "prefect-db", "2026-11-26T12:00:00Z").backup_id == "20261126T020000"


def test_the_newest_without_a_target(wal: BackupStore) -> None:
    _base(wal, "20261125T020000", "2026-11-25 02:05:00+00:00")
    _base(wal, "20261126T020000", "2026-11-26 02:05:00+00:00")
    assert base_backup_for(wal, "prefect-db", None).backup_id == "20261126T020000"


@pytest.mark.parametrize("status", ["FAILED", "STARTED"])
def test_an_unfinished_backup_does_not_count(wal: BackupStore, status: str) -> None:
    _base(wal, "20261126T020000", "2026-11-26 02:05:00+00:00", status=status)
    assert completed_base_backups(wal, "prefect-db") == []


def test_a_backup_without_its_info_is_still_running(wal: BackupStore) -> None:
    _put(wal, "base/20261126T020000/data.tar.lz4", "tar")
    assert completed_base_backups(wal, "prefect-db") == []


def test_none_before_the_target_names_the_oldest(wal: BackupStore) -> None:
    _base(wal, "20261126T020000", "2026-11-26 02:05:00+00:00")
    with pytest.raises(UserError, match=r"no base backup .* ended before 2026-11-26 02:00:00Z") as caught:
        base_backup_for(wal, "prefect-db", "2026-11-26 02:00:00Z")
    assert "2026-11-26T02:05:00+00:00" in caught.value.problem


def test_an_empty_archive_is_refused(store: BackupStore) -> None:
    with pytest.raises(UserError, match="s3://prefect-backups/prefect/cnpg/prefect-db holds no completed base"):
        base_backup_for(store, "prefect-db", None)


def test_an_archive_without_wal_is_refused(store: BackupStore) -> None:
    _base(store, "20261126T020000", "2026-11-26 02:05:00+00:00")
    with pytest.raises(UserError, match="holds no WAL"):
        base_backup_for(store, "prefect-db", None)
