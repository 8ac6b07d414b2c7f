"""The manifest: what a backup contains and how to prove it. Written last; a backup without one does not exist."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
VERIFICATION = "verification.json"


class ObjectEntry(BaseModel):
    name: str  # file name inside the dump directory
    key: str  # S3 key
    size: int  # bytes stored
    raw_size: int  # bytes of the dump file before compression and encryption
    sha256: str  # of the stored bytes


class Manifest(BaseModel):
    id: str
    method: Literal["logical", "physical"]
    started_at: datetime
    finished_at: datetime
    database: str
    postgres_version: str
    prefect_version: str
    alembic_revision: str
    row_counts: dict[str, int]
    objects: list[ObjectEntry] = Field(default_factory=list)
    compression: str = "zstd"
    encrypted: bool = False
    location: str = ""

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def raw_size(self) -> int:
        return sum(o.raw_size for o in self.objects)

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class Verification(BaseModel):
    backup_id: str
    verified_at: datetime
    ok: bool
    detail: str
    checks: dict[str, bool] = Field(default_factory=dict)
    duration_s: float = 0.0


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable, unique per second (a lock keeps backups from overlapping)."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
