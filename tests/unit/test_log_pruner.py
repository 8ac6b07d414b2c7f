"""The log pruner (logs.rotation on the local target): rotated files past the age, PostgreSQL's past the count;
never the file a component writes now."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from infra.logs.prune import Limits, doomed, prune

DAY = 86400
NOW = time.time()


def _file(path: Path, age_days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x\n")
    os.utime(path, (NOW - age_days * DAY, NOW - age_days * DAY))
    return path


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    _file(tmp_path / "api-1.log", 30)  # current, quiet for a month: kept
    _file(tmp_path / "api-1.log.1", 2)
    _file(tmp_path / "api-1.log.2", 20)
    _file(tmp_path / "haproxy.log.3", 15)
    _file(tmp_path / "notes.log.bak", 40)  # not supervisord's: not ours to delete
    for i, age in enumerate((40, 9, 5, 3, 1, 0)):  # oldest first; the last is PostgreSQL's current file
        _file(tmp_path / "postgres" / f"postgresql-2026120{i}-000000.json", age)
    return tmp_path


def test_rotated_files_past_the_age_go(logs: Path) -> None:
    removed = {p.name for p in doomed(logs, logs / "postgres", Limits(max_age_days=14, keep=10), NOW)}
    assert {"api-1.log.2", "haproxy.log.3", "postgresql-20261200-000000.json"} == removed


def test_postgres_files_beyond_the_count_go_oldest_first(logs: Path) -> None:
    removed = [p.name for p in doomed(logs, logs / "postgres", Limits(max_age_days=365, keep=2), NOW)]
    assert removed == [f"postgresql-2026120{i}-000000.json" for i in range(3)]


def test_the_current_files_stay_whatever_their_age(logs: Path) -> None:
    prune(logs, logs / "postgres", Limits(max_age_days=1, keep=1), NOW + 100 * DAY)
    assert sorted(p.name for p in logs.iterdir() if p.is_file()) == ["api-1.log", "notes.log.bak"]
    assert [p.name for p in (logs / "postgres").iterdir()] == ["postgresql-20261205-000000.json"]


def test_a_file_gone_meanwhile_is_skipped(logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = logs / "api-1.log.2"
    monkeypatch.setattr("infra.logs.prune.doomed", lambda *_: [gone, logs / "haproxy.log.3"])
    gone.unlink()
    assert prune(logs, logs / "postgres", Limits(14, 10)) == [logs / "haproxy.log.3"]
