"""Retention (`invoke backup.prune`): the grandfather-father-son plan, on synthetic backups, and its application
to an in-process S3 (moto): dry run, manifest deleted first, interrupted uploads."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from invoke import MockContext

from infra.backup.catalog import BackupEntry, list_backups
from infra.backup.logical import logical_prefix
from infra.backup.manifest import MANIFEST, VERIFICATION, Manifest, Verification, new_backup_id
from infra.backup.retention import (
    FUTURE,
    NEWEST,
    NEWEST_VERIFIED,
    PHYSICAL,
    OrphanFolder,
    RetentionPlan,
    apply_retention,
    expired_orphans,
    find_orphans,
    plan_retention,
    run_prune,
)
from infra.backup.storage import BackupStore
from infra.tasks import backup as backup_tasks

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)  # a Saturday


def backup(
    when: str | datetime, state: str = "unverified", method: Literal["logical", "physical"] = "logical"
) -> BackupEntry:
    started = when if isinstance(when, datetime) else datetime.fromisoformat(when)
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    backup_id = new_backup_id(started.astimezone(UTC))
    manifest = Manifest(
        id=backup_id, method=method, started_at=started, finished_at=started + timedelta(minutes=3),
        database="prefect", postgres_version="15.6", prefect_version="3.1.0", alembic_revision="abc123",
        row_counts={"flow_run": 1},
    )
    verdict = None if state == "unverified" else Verification(
        backup_id=backup_id, verified_at=started + timedelta(hours=1), ok=state == "verified", detail=state,
    )
    return BackupEntry(manifest, verdict)


def daily(days: int, last: datetime = NOW, state: str = "unverified") -> list[BackupEntry]:
    """One backup a day at 02:30 UTC, the newest on ``last``'s day."""
    base = last.replace(hour=2, minute=30, second=0, microsecond=0)
    return [backup(base - timedelta(days=n), state) for n in range(days)][::-1]


def ids(entries: list[BackupEntry]) -> list[str]:
    return [e.manifest.id for e in entries]


def plan(entries: list[BackupEntry], d: int = 0, w: int = 0, m: int = 0, now: datetime = NOW) -> RetentionPlan:
    return plan_retention(entries, now, daily=d, weekly=w, monthly=m)


class TestSlots:
    def test_no_backups_no_plan(self) -> None:
        assert plan([], 7, 4, 6) == RetentionPlan(keep={}, delete=[])

    def test_daily_keeps_the_last_n_days(self) -> None:
        entries = daily(10)
        result = plan(entries, d=7)
        assert list(result.keep) == ids(entries[3:])
        assert result.delete == ids(entries[:3])

    def test_daily_reason_names_the_day(self) -> None:
        result = plan(daily(2), d=2)
        assert result.keep[new_backup_id(NOW.replace(hour=2, minute=30))] == [NEWEST, "daily 2024-06-15"]
        assert "daily 2024-06-14" in result.keep[new_backup_id(NOW.replace(hour=2, minute=30) - timedelta(days=1))]

    def test_several_backups_on_one_day_keep_only_its_newest(self) -> None:
        morning, noon, evening = backup("2024-06-14T06:00"), backup("2024-06-14T11:00"), backup("2024-06-14T20:00")
        today = backup("2024-06-15T09:00")
        result = plan([morning, noon, evening, today], d=7)
        assert set(result.keep) == {evening.manifest.id, today.manifest.id}
        assert result.delete == ids([morning, noon])

    def test_days_without_backups_do_not_count(self) -> None:
        # As restic: "the last N days which have a backup", so a schedule that stopped ages nothing out.
        entries = [backup("2024-05-01T02:30"), backup("2024-05-02T02:30"), backup("2024-05-20T02:30")]
        assert plan(entries, d=3).delete == []

    def test_day_is_the_utc_day(self) -> None:
        late = backup(datetime.fromisoformat("2024-06-14T23:30:00-02:00"))  # 2024-06-15 01:30 UTC
        early = backup("2024-06-15T00:30")
        result = plan([early, late], d=2)
        assert result.keep == {late.manifest.id: [NEWEST, "daily 2024-06-15"]}
        assert result.delete == [early.manifest.id]

    def test_weekly_keeps_the_newest_of_each_iso_week(self) -> None:
        entries = daily(35)  # 2024-05-12 (Sunday) .. 2024-06-15 (Saturday)
        result = plan(entries, w=4)
        kept = {e.manifest.started_at.date().isoformat() for e in entries if e.manifest.id in result.keep}
        assert kept == {"2024-06-15", "2024-06-09", "2024-06-02", "2024-05-26"}  # the Sundays, and today
        assert result.keep[new_backup_id(datetime(2024, 6, 9, 2, 30, tzinfo=UTC))] == ["weekly 2024-W23"]

    def test_iso_week_spans_the_new_year(self) -> None:
        sunday, monday, wednesday = backup("2024-12-29"), backup("2024-12-30"), backup("2025-01-01")
        result = plan([sunday, monday, wednesday], w=2, now=datetime(2025, 1, 2, tzinfo=UTC))
        assert result.keep == {sunday.manifest.id: ["weekly 2024-W52"],
                               wednesday.manifest.id: [NEWEST, "weekly 2025-W01"]}
        assert result.delete == [monday.manifest.id]

    def test_monthly_keeps_the_newest_of_each_month(self) -> None:
        entries = [backup(f"2024-{month:02d}-{day:02d}T02:30") for month in range(1, 7) for day in (1, 15, 28)
                   if (month, day) != (6, 28)]
        result = plan(entries, m=3)
        assert list(result.keep) == ids([backup("2024-04-28T02:30"), backup("2024-05-28T02:30"),
                                         backup("2024-06-15T02:30")])
        assert result.keep[backup("2024-04-28T02:30").manifest.id] == ["monthly 2024-04"]

    def test_one_backup_fills_several_slots(self) -> None:
        only = backup("2024-06-15T02:30")
        assert plan([only], 7, 4, 6).keep == {only.manifest.id: [
            NEWEST, "daily 2024-06-15", "weekly 2024-W24", "monthly 2024-06",
        ]}

    def test_gfs_together(self) -> None:
        entries = daily(400)
        result = plan(entries, 7, 4, 6)
        kept = sorted(e.manifest.started_at.date().isoformat() for e in entries if e.manifest.id in result.keep)
        assert kept == [
            "2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30", "2024-05-26", "2024-05-31",  # months, weeks
            "2024-06-02", *(f"2024-06-{day:02d}" for day in range(9, 16)),  # a week; the last 7 days
        ]
        assert len(result.keep) + len(result.delete) == 400

    def test_more_slots_than_backups_keeps_all(self) -> None:
        assert plan(daily(3), 7, 4, 6).delete == []

    @pytest.mark.parametrize("count", [-1, -7])
    def test_negative_keep_is_refused(self, count: int) -> None:
        with pytest.raises(ValueError, match="negative"):
            plan(daily(3), d=count)


class TestAlwaysKept:
    def test_zero_keeps_still_keep_the_newest(self) -> None:
        entries = daily(5)
        result = plan(entries)
        assert result.keep == {entries[-1].manifest.id: [NEWEST]}
        assert result.delete == ids(entries[:-1])

    def test_newest_verified_kept_when_older_than_every_slot(self) -> None:
        verified = backup("2024-01-10T02:30", "verified")
        entries = [verified, *daily(10)]
        result = plan(entries, d=2, w=1, m=1)
        assert result.keep[verified.manifest.id] == [NEWEST_VERIFIED]
        assert verified.manifest.id not in result.delete

    def test_only_the_newest_verified_is_protected(self) -> None:
        older, newer = backup("2024-01-10T02:30", "verified"), backup("2024-02-10T02:30", "verified")
        result = plan([older, newer, *daily(3)], d=1)
        assert result.keep[newer.manifest.id] == [NEWEST_VERIFIED]
        assert older.manifest.id in result.delete

    def test_newest_and_newest_verified_both_reasons(self) -> None:
        entries = daily(3, state="verified")
        assert plan(entries).keep == {entries[-1].manifest.id: [NEWEST, NEWEST_VERIFIED]}

    @pytest.mark.parametrize("state", ["unverified", "FAILED"])
    def test_verified_means_a_passed_verification(self, state: str) -> None:
        entries = daily(3, state=state)
        assert all(NEWEST_VERIFIED not in reasons for reasons in plan(entries, 7, 4, 6).keep.values())


class TestFailedVerification:
    def test_failed_backup_fills_no_slot(self) -> None:
        good = backup("2024-06-14T02:30", "verified")
        failed = backup("2024-06-14T14:00", "FAILED")
        today = backup("2024-06-15T02:30")
        result = plan([good, failed, today], d=2)
        assert "daily 2024-06-14" in result.keep[good.manifest.id]
        assert result.delete == [failed.manifest.id]

    def test_failed_newest_is_kept_only_as_newest(self) -> None:
        good = backup("2024-06-15T02:30")
        failed = backup("2024-06-15T03:00", "FAILED")
        result = plan([good, failed], 7, 4, 6)
        assert result.keep[failed.manifest.id] == [NEWEST]
        assert result.keep[good.manifest.id] == ["daily 2024-06-15", "weekly 2024-W24", "monthly 2024-06"]

    def test_failed_backups_do_not_use_up_the_count(self) -> None:
        entries = [backup("2024-06-13T02:30"), backup("2024-06-14T02:30", "FAILED"), backup("2024-06-15T02:30")]
        result = plan(entries, d=2)
        assert result.delete == [entries[1].manifest.id]
        assert "daily 2024-06-13" in result.keep[entries[0].manifest.id]

    def test_unverified_fills_slots(self) -> None:
        entries = daily(3, state="unverified")
        assert plan(entries, d=3).delete == []


class TestOtherEntries:
    def test_physical_backups_are_never_pruned_or_counted(self) -> None:
        physical = backup("2024-01-01T02:30", method="physical")
        newest_physical = backup("2024-06-15T05:00", "verified", method="physical")
        entries = daily(3)
        result = plan([physical, *entries, newest_physical], d=1)
        assert result.keep[physical.manifest.id] == [PHYSICAL]
        assert result.keep[newest_physical.manifest.id] == [PHYSICAL]
        assert result.keep[entries[-1].manifest.id] == [NEWEST, "daily 2024-06-15"]
        assert result.delete == ids(entries[:-1])

    def test_backup_dated_after_now_is_kept_and_fills_no_slot(self) -> None:
        future = backup(NOW + timedelta(days=2))
        entries = daily(2)
        result = plan([*entries, future], d=1)
        assert result.keep[future.manifest.id] == [NEWEST, FUTURE]
        assert result.keep[entries[-1].manifest.id] == ["daily 2024-06-15"]


class TestInvariants:
    @staticmethod
    def random_history(seed: int) -> list[BackupEntry]:
        rng = random.Random(seed)
        moments = {NOW - timedelta(minutes=rng.randrange(0, 60 * 24 * 500)) for _ in range(rng.randrange(1, 80))}
        return [backup(t.replace(second=0, microsecond=0), rng.choice(["verified", "unverified", "FAILED"]))
                for t in moments]

    @pytest.mark.parametrize("seed", range(20))
    def test_every_backup_is_kept_or_deleted_exactly_once(self, seed: int) -> None:
        entries = self.random_history(seed)
        result = plan(entries, 3, 2, 2)
        assert sorted([*result.keep, *result.delete]) == sorted(ids(entries))
        assert not set(result.keep) & set(result.delete)

    @pytest.mark.parametrize("seed", range(20))
    def test_newest_and_newest_verified_survive(self, seed: int) -> None:
        entries = sorted(self.random_history(seed), key=lambda e: e.manifest.started_at)
        result = plan(entries)
        assert entries[-1].manifest.id in result.keep
        verified = [e for e in entries if e.verified_state == "verified"]
        if verified:
            assert NEWEST_VERIFIED in result.keep[verified[-1].manifest.id]

    @pytest.mark.parametrize("seed", range(5))
    def test_input_order_does_not_matter(self, seed: int) -> None:
        entries = self.random_history(seed)
        shuffled = list(entries)
        random.Random(seed).shuffle(shuffled)
        first, second = plan(entries, 7, 4, 6), plan(shuffled, 7, 4, 6)
        assert first == second
        assert list(first.keep.items()) == list(second.keep.items())

    def test_lists_are_oldest_first(self) -> None:
        entries = daily(20)
        result = plan(entries[::-1], d=5, w=2)
        assert list(result.keep) == sorted(result.keep)
        assert result.delete == sorted(result.delete)


# ------------------------------------------------------------------ orphans and deletion, on moto's S3


def orphan(name: str, age: timedelta) -> OrphanFolder:
    return OrphanFolder(name=name, objects=1, size=10, last_written=NOW - age)


@pytest.mark.parametrize(
    ("grace_hours", "age", "expired"),
    [(24, timedelta(hours=25), True), (24, timedelta(hours=23), False), (24, timedelta(hours=24), True),
     (0, timedelta(0), True), (0, -timedelta(minutes=1), True), (1, -timedelta(minutes=1), False)],
)
def test_orphan_grace(grace_hours: int, age: timedelta, expired: bool) -> None:
    assert expired_orphans([orphan("x", age)], NOW, grace_hours) == (["x"] if expired else [])



def put_backup(store: BackupStore, entry: BackupEntry, files: int = 2) -> None:
    prefix = logical_prefix(store, entry.manifest.id)
    for i in range(files):
        store._client.put_object(Bucket=store.bucket, Key=f"{prefix}{i:03d}.dat.zst", Body=b"data")
    if entry.verification is not None:
        store.put_json(prefix + VERIFICATION, entry.verification.model_dump(mode="json"))
    store.put_json(prefix + MANIFEST, entry.manifest.model_dump(mode="json"))


def put_orphan(store: BackupStore, name: str) -> None:
    store._client.put_object(Bucket=store.bucket, Key=f"{logical_prefix(store, name)}000.dat.zst", Body=b"x")


def keys(store: BackupStore) -> set[str]:
    return {key for key, _ in store.list_keys(logical_prefix(store))}


class TestApply:
    def test_find_orphans_ignores_complete_backups(self, store: BackupStore) -> None:
        put_backup(store, backup("2024-06-15T02:30"))
        put_orphan(store, "20240101T000000Z")
        found = find_orphans(store, list_backups(store))
        assert [(o.name, o.objects) for o in found] == [("20240101T000000Z", 1)]

    def test_dry_run_deletes_nothing(self, store: BackupStore) -> None:
        entries = daily(3)
        for entry in entries:
            put_backup(store, entry)
        put_orphan(store, "20240101T000000Z")
        before = keys(store)
        result = plan(entries)
        report = apply_retention(store, RetentionPlan(result.keep, result.delete, ["20240101T000000Z"]), dry_run=True)
        assert report.dry_run and report.objects == 0
        assert report.backups == ids(entries[:-1]) and report.orphans == ["20240101T000000Z"]
        assert keys(store) == before

    def test_apply_deletes_the_planned_folders_only(self, store: BackupStore) -> None:
        entries = daily(3, state="verified")
        for entry in entries:
            put_backup(store, entry)
        put_orphan(store, "20240101T000000Z")
        result = plan(entries)
        report = apply_retention(store, RetentionPlan(result.keep, result.delete, ["20240101T000000Z"]), dry_run=False)
        assert report.objects == 2 * 4 + 1
        assert ids(list_backups(store)) == [entries[-1].manifest.id]
        assert find_orphans(store, list_backups(store)) == []

    def test_manifest_is_deleted_first(self, store: BackupStore, monkeypatch: pytest.MonkeyPatch) -> None:
        entry = backup("2024-06-14T02:30")
        put_backup(store, entry)
        calls: list[str] = []
        real = BackupStore.delete_prefix

        def recording(self: BackupStore, prefix: str) -> int:
            calls.append(prefix)
            return real(self, prefix)

        monkeypatch.setattr(BackupStore, "delete_prefix", recording)
        apply_retention(store, RetentionPlan({}, [entry.manifest.id]), dry_run=False)
        assert calls[0] == logical_prefix(store, entry.manifest.id) + MANIFEST

    def test_interrupted_deletion_leaves_no_listed_backup(
        self, store: BackupStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        entry = backup("2024-06-14T02:30")
        put_backup(store, entry)
        real = BackupStore.delete_prefix

        def dies_after_the_manifest(self: BackupStore, prefix: str) -> int:
            if not prefix.endswith(MANIFEST):
                raise KeyboardInterrupt
            return real(self, prefix)

        monkeypatch.setattr(BackupStore, "delete_prefix", dies_after_the_manifest)
        with pytest.raises(KeyboardInterrupt):
            apply_retention(store, RetentionPlan({}, [entry.manifest.id]), dry_run=False)
        assert list_backups(store) == []
        assert [o.name for o in find_orphans(store, [])] == [entry.manifest.id]  # the next prune removes it

    @pytest.mark.parametrize("name", ["", "a/b", ".."])
    def test_a_name_that_is_not_one_folder_is_refused(self, store: BackupStore, name: str) -> None:
        put_backup(store, backup("2024-06-14T02:30"))
        before = keys(store)
        with pytest.raises(ValueError, match="folder name"):
            apply_retention(store, RetentionPlan({}, [], [name]), dry_run=False)
        assert keys(store) == before

    def test_contradictory_plan_is_refused(self, store: BackupStore) -> None:
        with pytest.raises(ValueError, match="both keeps and deletes"):
            apply_retention(store, RetentionPlan({"x": [NEWEST]}, ["x"]), dry_run=False)

    def test_run_prune_uses_the_configured_rules(self, store: BackupStore) -> None:
        recent = daily(3)
        for entry in recent:
            put_backup(store, entry)
        put_orphan(store, "20240101T000000Z")  # written just now: within the default 24 h grace
        survey, report = run_prune(store, None, apply=True)
        assert report.backups == []  # three days, inside the default seven daily slots
        assert [o.name for o in survey.orphans] == ["20240101T000000Z"] and report.orphans == []
        assert "20240101T000000Z" in {k.split("/")[-2] for k in keys(store)}



class TestTask:
    """`invoke backup.prune` itself, on moto's S3: what it prints, and that only --apply deletes."""

    @pytest.fixture
    def bucket(self, store: BackupStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[BackupEntry]:
        monkeypatch.setenv("PREFECT_STACK_LOCAL__STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("PREFECT_STACK_BACKUPS__RETENTION__KEEP_DAILY", "1")
        monkeypatch.setenv("PREFECT_STACK_BACKUPS__RETENTION__ORPHAN_GRACE_HOURS", "0")
        monkeypatch.setattr(BackupStore, "from_config", classmethod(lambda cls, config, _: cls(config, store._client)))
        monkeypatch.setattr(backup_tasks, "load_secrets", lambda _: None)
        entries = [backup("2024-06-13T02:30", "verified"), backup("2024-06-14T02:30"), backup("2024-06-15T02:30")]
        for entry in entries:
            put_backup(store, entry)
        put_orphan(store, "20240101T000000Z")
        return entries

    def run(self, capsys: pytest.CaptureFixture[str], **options: bool) -> tuple[dict[str, Any], str]:
        backup_tasks.prune(MockContext(), json_=True, **options)
        captured = capsys.readouterr()
        document: dict[str, Any] = json.loads(captured.out)
        return document, captured.err

    def test_dry_run_by_default(
        self, store: BackupStore, bucket: list[BackupEntry], capsys: pytest.CaptureFixture[str]
    ) -> None:
        before = keys(store)
        document, err = self.run(capsys)
        assert document["dry_run"] is True
        assert document["delete"] == [bucket[1].manifest.id] and document["delete_orphans"] == ["20240101T000000Z"]
        assert "dry run: nothing deleted; run with --apply" in err
        assert keys(store) == before

    def test_apply_deletes_and_counts(
        self, store: BackupStore, bucket: list[BackupEntry], capsys: pytest.CaptureFixture[str]
    ) -> None:
        document, err = self.run(capsys, apply=True)
        assert document["deleted"] == {"backups": 1, "orphans": 1, "objects": 3 + 1}
        assert ids(list_backups(store)) == [bucket[0].manifest.id, bucket[2].manifest.id]
        assert "deleted 1 backup(s) and 1 orphan folder(s)" in err

    def test_json_rows_carry_action_and_reasons(
        self, bucket: list[BackupEntry], capsys: pytest.CaptureFixture[str]
    ) -> None:
        document, _ = self.run(capsys)
        rows = {row["id"]: (row["action"], row["reasons"]) for row in document["backups"]}
        assert rows == {
            bucket[0].manifest.id: ("keep", [NEWEST_VERIFIED]),
            bucket[1].manifest.id: ("delete", []),
            bucket[2].manifest.id: ("keep", [NEWEST, "daily 2024-06-15", "weekly 2024-W24", "monthly 2024-06"]),
        }
