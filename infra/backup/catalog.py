"""What backups exist: manifests and verdicts read back from the bucket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.backup.logical import logical_prefix
from infra.backup.manifest import MANIFEST, VERIFICATION, Manifest, Verification
from infra.backup.storage import BackupStore
from infra.errors import UserError


@dataclass(frozen=True)
class BackupEntry:
    manifest: Manifest
    verification: Verification | None

    @property
    def verified_state(self) -> str:
        if self.verification is None:
            return "unverified"
        return "verified" if self.verification.ok else "FAILED"

    def as_dict(self, location: str) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": m.id, "method": m.method, "time": m.finished_at.isoformat(), "size": m.size,
            "raw_size": m.raw_size, "duration_s": round(m.duration_s, 2), "verified": self.verified_state,
            "verified_at": self.verification.verified_at.isoformat() if self.verification else None,
            "location": location, "prefect_version": m.prefect_version, "encrypted": m.encrypted,
        }


def list_backups(store: BackupStore) -> list[BackupEntry]:
    """Every complete backup (one with a manifest), oldest first. Folders without a manifest are not backups."""
    entries = []
    for folder in store.list_prefixes(logical_prefix(store)):
        document = store.get_json(folder + MANIFEST)
        if document is None:
            continue
        verdict = store.get_json(folder + VERIFICATION)
        entries.append(BackupEntry(
            Manifest.model_validate(document), Verification.model_validate(verdict) if verdict else None
        ))
    return sorted(entries, key=lambda e: e.manifest.id)


def find_backup(store: BackupStore, backup_id: str | None, latest: bool) -> BackupEntry:
    entries = list_backups(store)
    if not entries:
        raise UserError(f"there are no backups in {store.location}", fix="take one with invoke backup")
    if backup_id is None:
        if not latest:
            raise UserError("which backup?", fix="pass --id ID (see invoke backup.list) or --latest")
        return entries[-1]
    for entry in entries:
        if entry.manifest.id == backup_id:
            return entry
    raise UserError(
        f"no backup with id {backup_id!r} in {store.location}",
        fix=f"choose one of invoke backup.list (latest: {entries[-1].manifest.id})",
    )
