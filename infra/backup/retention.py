"""Retention of logical backups (`invoke backup.prune`): which backups to keep, grandfather-father-son, and the
deletion of the others and of interrupted uploads.

The rules are restic's ``forget --keep-daily/--keep-weekly/--keep-monthly``: walking back from the newest backup,
the newest backup of each of the last N days (UTC) *that have a backup* is kept, and likewise per ISO week and
per calendar month; one backup may fill several slots. Counting days that have a backup, rather than calendar
days back from today, means that a schedule which stopped running does not age every backup out: the last
good ones stay until newer ones replace them.

Two backups are always kept, whatever the rules say: the newest (what ``restore --latest`` picks) and the newest
verified (the last one proven to restore). A backup whose verification FAILED is worthless for a restore, so it
never fills a slot (the newest good backup of that day fills it instead) and it is deleted unless it is the
newest. An unverified backup fills slots like a verified one: the nightly verification has not reached it yet.

Only logical (pg_dump) backups are pruned here. Each is self-contained, so deleting one never breaks another.
Physical (pgBackRest) backups depend on their WAL archive, and incrementals on earlier full backups: their
retention is pgBackRest's own (repo1-retention-full, which expires the WAL with them), never this module's,
or a WAL chain could be cut.

In a versioned bucket a deletion leaves noncurrent versions behind; the bucket's lifecycle rule expires those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra.backup.catalog import BackupEntry, list_backups
from infra.backup.logical import backup_lock, logical_prefix
from infra.backup.manifest import MANIFEST
from infra.backup.storage import BackupStore
from infra.progress import Progress, QuietProgress

NEWEST = "newest"
NEWEST_VERIFIED = "newest verified"
PHYSICAL = "physical: pgBackRest's repo1-retention-full decides"
FUTURE = "dated after now: check the clocks"


_QUIET = QuietProgress()


@dataclass(frozen=True)
class RetentionPlan:
    keep: dict[str, list[str]]  # backup id -> why it is kept, oldest backup first
    delete: list[str]  # backup ids, oldest first
    orphans: list[str] = field(default_factory=list)  # folders under logical/ without a manifest, past the grace


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _taken_at(entry: BackupEntry) -> datetime:
    # When the snapshot was exported, at the start: the moment the backup's data describes.
    return _utc(entry.manifest.started_at)


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def _iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def _month(moment: datetime) -> str:
    return f"{moment:%Y-%m}"


def plan_retention(
    entries: Sequence[BackupEntry], now: datetime, daily: int, weekly: int, monthly: int
) -> RetentionPlan:
    """Which backups to keep (and why) and which to delete; pure, and the same answer for the same input."""
    if min(daily, weekly, monthly) < 0:
        raise ValueError(f"keep counts must not be negative (daily={daily}, weekly={weekly}, monthly={monthly})")
    now = _utc(now)
    reasons: dict[str, list[str]] = {}

    def keep(entry: BackupEntry, reason: str) -> None:
        reasons.setdefault(entry.manifest.id, []).append(reason)

    logical = [e for e in entries if e.manifest.method == "logical"]
    for entry in entries:
        if entry.manifest.method != "logical":
            keep(entry, PHYSICAL)  # never pruned here: deleting one could cut its WAL chain
    newest_first = sorted(logical, key=lambda e: (_taken_at(e), e.manifest.id), reverse=True)
    if newest_first:
        keep(newest_first[0], NEWEST)
    verified = next((e for e in newest_first if e.verified_state == "verified"), None)
    if verified is not None:
        keep(verified, NEWEST_VERIFIED)
    for entry in newest_first:
        if _taken_at(entry) > now:
            keep(entry, FUTURE)  # its day, week and month are not to be trusted; keep it, and let it fill no slot

    rules: list[tuple[str, int, Callable[[datetime], str]]] = [
        ("daily", daily, _day), ("weekly", weekly, _iso_week), ("monthly", monthly, _month),
    ]
    for rule, count, period_of in rules:
        filled: set[str] = set()
        for entry in newest_first:
            if len(filled) >= count:
                break
            taken = _taken_at(entry)
            if entry.verified_state == "FAILED" or taken > now:
                continue
            period = period_of(taken)
            if period not in filled:  # newest first: the first backup seen in a period is its newest
                filled.add(period)
                keep(entry, f"{rule} {period}")

    oldest_first = sorted(entries, key=lambda e: (_taken_at(e), e.manifest.id))
    return RetentionPlan(
        keep={e.manifest.id: reasons[e.manifest.id] for e in oldest_first if e.manifest.id in reasons},
        delete=[e.manifest.id for e in oldest_first if e.manifest.id not in reasons],
    )


# ------------------------------------------------------------------ orphans


@dataclass(frozen=True)
class OrphanFolder:
    """A folder under logical/ without a manifest: an upload that was interrupted, or one still running."""

    name: str  # the folder's name: the id the backup would have had
    objects: int
    size: int
    last_written: datetime  # of its newest object


def _objects(store: BackupStore, prefix: str) -> Iterator[tuple[str, int, datetime]]:
    for key, size, modified in store.list_objects(prefix):
        yield key, size, _utc(modified)


def find_orphans(store: BackupStore, entries: Sequence[BackupEntry]) -> list[OrphanFolder]:
    """Folders under logical/ that hold objects but no manifest, oldest name first."""
    root = logical_prefix(store)
    complete = {logical_prefix(store, e.manifest.id) for e in entries}
    found = []
    for folder in store.list_prefixes(root):
        if folder in complete:
            continue
        objects = list(_objects(store, folder))
        if not objects or any(key == folder + MANIFEST for key, _, _ in objects):
            continue  # emptied, or completed, since the backups were listed
        found.append(OrphanFolder(
            name=folder[len(root):].rstrip("/"), objects=len(objects), size=sum(size for _, size, _ in objects),
            last_written=max(written for _, _, written in objects),
        ))
    return sorted(found, key=lambda o: o.name)


def expired_orphans(orphans: Sequence[OrphanFolder], now: datetime, grace_hours: int) -> list[str]:
    """The orphan folders nothing was written to for ``grace_hours``; 0 means all of them, at once."""
    cutoff = _utc(now) - timedelta(hours=grace_hours)
    return [o.name for o in orphans if grace_hours == 0 or o.last_written <= cutoff]


# ------------------------------------------------------------------ the whole prune


@dataclass(frozen=True)
class Prune:
    """What `invoke backup.prune` shows: every backup, every orphan folder, and the plan over both."""

    entries: list[BackupEntry]
    orphans: list[OrphanFolder]
    plan: RetentionPlan


@dataclass(frozen=True)
class PruneReport:
    dry_run: bool
    backups: list[str]  # deleted, or in a dry run, to be deleted
    orphans: list[str]
    objects: int  # objects deleted (0 in a dry run)


def plan_prune(store: BackupStore, now: datetime) -> Prune:
    """Read the bucket and plan with the configured rules (backups.retention); deletes nothing."""
    rules = store.config.backups.retention
    entries = list_backups(store)
    orphans = find_orphans(store, entries)
    plan = plan_retention(entries, now, rules.keep_daily, rules.keep_weekly, rules.keep_monthly)
    return Prune(entries, orphans, replace(plan, orphans=expired_orphans(orphans, now, rules.orphan_grace_hours)))


def _folder(store: BackupStore, name: str) -> str:
    # An empty name would make the prefix every backup's folder: refuse anything but one folder name.
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a backup folder name: {name!r}")
    return logical_prefix(store, name)


def apply_retention(
    store: BackupStore, plan: RetentionPlan, dry_run: bool, progress: Progress = _QUIET
) -> PruneReport:
    """Delete what the plan says (nothing in a dry run): the backups in ``plan.delete``, then orphan folders."""
    contradicted = sorted(set(plan.keep) & {*plan.delete, *plan.orphans})
    if contradicted:
        raise ValueError(f"the plan both keeps and deletes {contradicted}")
    # Every name is checked before anything is deleted.
    backups = [(backup_id, _folder(store, backup_id)) for backup_id in plan.delete]
    orphans = [(name, _folder(store, name)) for name in plan.orphans]
    if dry_run:
        return PruneReport(True, list(plan.delete), list(plan.orphans), 0)
    objects = 0
    for backup_id, prefix in backups:
        # The manifest first: from then on the backup is neither listed nor restorable, and if the deletion
        # stops midway what is left is an orphan folder, which the next prune removes.
        objects += store.delete_prefix(prefix + MANIFEST)
        objects += store.delete_prefix(prefix)
        progress(f"deleted backup {backup_id}")
    for name, prefix in orphans:
        objects += store.delete_prefix(prefix)
        progress(f"deleted orphan folder {name} (no manifest)")
    return PruneReport(False, list(plan.delete), list(plan.orphans), objects)


def run_prune(
    store: BackupStore, lock_dir: Path | None, apply: bool, progress: Progress = _QUIET
) -> tuple[Prune, PruneReport]:
    """Plan and, with ``apply``, delete. Deleting holds the backup lock (``lock_dir``; None: the caller holds
    it), so no backup, verification or restore on this host runs between the plan and the deletions."""
    with backup_lock(lock_dir) if apply and lock_dir is not None else contextlib.nullcontext():
        prune = plan_prune(store, datetime.now(UTC))
        return prune, apply_retention(store, prune.plan, dry_run=not apply, progress=progress)
