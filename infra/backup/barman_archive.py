"""What a Barman Cloud archive in S3 holds, read through the project's S3 layer (no Kubernetes object involved).

CloudNativePG's Barman Cloud plugin writes, under the ObjectStore's destinationPath (``<prefix>/cnpg``):
  <server name>/base/<backup id>/backup.info   key=value lines; ``status=DONE`` and ``end_time`` once complete
  <server name>/wals/<timeline + log>/...       the archived WAL segments
This is what a point-in-time recovery replays, and it outlives the Cluster and its Backup objects: a recovery is
checked against it, never against what the Kubernetes API still lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from infra.backup.storage import BackupStore
from infra.errors import UserError

# The folder under the bucket's prefix where the ObjectStore's destinationPath points (database.py, _backup_path).
ARCHIVE_FOLDER = "cnpg"


@dataclass(frozen=True)
class BaseBackup:
    backup_id: str
    end_time: datetime


def parse_time(text: str) -> datetime:
    """An RFC 3339 time or Barman's ``2026-11-27 02:05:00.123456+00:00``; a time without an offset is UTC."""
    parsed = datetime.fromisoformat(text.strip())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _info(text: str) -> dict[str, str]:
    pairs = (line.partition("=") for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, _, value in pairs}


def completed_base_backups(store: BackupStore, server: str) -> list[BaseBackup]:
    """The base backups of archive ``server`` that finished (status DONE), oldest first."""
    found: list[BaseBackup] = []
    for folder in store.list_prefixes(store.key(ARCHIVE_FOLDER, server, "base") + "/"):
        key = folder + "backup.info"
        if not any(k == key for k, _ in store.list_keys(key)):
            continue  # still running (barman-cloud writes it last) or abandoned
        body = store.open_object(key)
        try:
            info = _info(body.read().decode("utf-8", errors="replace"))
        finally:
            body.close()
        if info.get("status") != "DONE" or not info.get("end_time"):
            continue
        try:
            end = parse_time(info["end_time"])
        except ValueError:
            continue  # not a time: not a backup to trust
        found.append(BaseBackup(folder.rstrip("/").rsplit("/", 1)[-1], end))
    return sorted(found, key=lambda b: b.end_time)


def has_wal(store: BackupStore, server: str) -> bool:
    return bool(store.list_prefixes(store.key(ARCHIVE_FOLDER, server, "wals") + "/"))


def base_backup_for(store: BackupStore, server: str, target_time: str | None) -> BaseBackup:
    """The newest completed base backup of archive ``server`` that ended before ``target_time`` (any, without one),
    with WAL archived; a UserError that says what is missing otherwise."""
    where = f"{store.location}/{ARCHIVE_FOLDER}/{server}"
    done = completed_base_backups(store, server)
    if not done:
        raise UserError(f"the archive {where} holds no completed base backup: there is nothing to recover from",
                        fix="check kubernetes.postgres.recovery.source_server (the archive's server name) and "
                            "backups.s3; a live Cluster takes one with: kubectl cnpg backup <cluster>")
    usable = done
    if target_time is not None:
        target = parse_time(target_time)
        usable = [b for b in done if b.end_time < target]
        if not usable:
            raise UserError(f"no base backup in {where} ended before {target_time}: the oldest ended "
                            f"{done[0].end_time.isoformat()}, and a recovery cannot go back before it",
                            fix="choose a later kubernetes.postgres.recovery.target_time, or another source_server")
    if not has_wal(store, server):
        raise UserError(f"the archive {where} holds no WAL: a base backup alone cannot be made consistent",
                        fix="check that the Cluster archived WAL (its ContinuousArchiving condition)")
    return usable[-1]
