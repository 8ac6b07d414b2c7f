"""``invoke logs``'s reader (infra/logs/read.py): filters, merge order, output, files with rotation and tracebacks."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.errors import UserError
from infra.logs.parse import LineParser, Record
from infra.logs.read import (
    FileFollower,
    LogQuery,
    follow,
    human_line,
    make_query,
    merged,
    newest_collector_file,
    parse_moment,
    read_local,
    rotated_files,
    settled,
    split_lines,
    stamped_records,
)

T0 = datetime(2026, 12, 6, 19, 0, tzinfo=UTC)
RUN_ID = "0b9d4c1e-5f7a-4e2b-9c3d-1a2b3c4d5e6f"


def at(seconds: float, component: str = "c", level: str = "INFO", message: str = "m") -> Record:
    return Record(T0 + timedelta(seconds=seconds), level, component, message)


def supervisord_line(seconds: float, message: str, level: str = "INFO") -> str:
    moment = T0 + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%d %H:%M:%S,") + f"{moment.microsecond // 1000:03d} {level} {message}"


def pgbouncer_line(seconds: float, message: str) -> str:
    moment = T0 + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC [7] LOG {message}"


def collect(log_files: dict[str, Path], query: LogQuery) -> list[str]:
    out: list[str] = []
    assert read_local(log_files, query, out.append) == 0
    return out


@pytest.fixture
def log_dir(tmp_path: Path) -> dict[str, Path]:
    """Three components' files, like a local state directory's log/: supervisord's with one rotated sibling,
    PgBouncer's, and a worker's with a traceback."""
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "supervisord.log.1").write_text("\n".join(supervisord_line(s, f"old {s}") for s in (0, 2, 4)) + "\n")
    (logs / "supervisord.log").write_text("\n".join(supervisord_line(s, f"new {s}") for s in (6, 8)) + "\n")
    (logs / "pgbouncer.log").write_text("\n".join(pgbouncer_line(s, f"stats {s}") for s in (1, 5, 9)) + "\n")
    (logs / "worker.log").write_text("\n".join([
        supervisord_line(3, f"submitting flow run {RUN_ID}"),
        supervisord_line(7, f"flow run {RUN_ID} crashed", level="ERRO"),
        "Traceback (most recent call last):",
        '  File "flow.py", line 3, in run',
        "ValueError: boom",
        supervisord_line(10, "idle"),
    ]) + "\n")
    day_old = (T0 + timedelta(seconds=4)).timestamp()
    os.utime(logs / "supervisord.log.1", (day_old, day_old))
    latest = (T0 + timedelta(seconds=10)).timestamp()
    for name in ("supervisord.log", "pgbouncer.log", "worker.log"):
        os.utime(logs / name, (latest, latest))
    return {"supervisord": logs / "supervisord.log", "pgbouncer": logs / "pgbouncer.log",
            "worker": logs / "worker.log"}


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400),
                                               ("1h30m", 5400)])
def test_duration_is_before_now(text: str, seconds: int) -> None:
    assert parse_moment(text, "--since", now=T0) == T0 - timedelta(seconds=seconds)


def test_rfc3339_time_is_taken_as_is() -> None:
    assert parse_moment("2026-12-06T19:00:00Z", "--since") == T0


@pytest.mark.parametrize("bad", ["5 minutes", "yesterday", "12:00"])
def test_bad_since_is_refused_naming_the_option(bad: str) -> None:
    with pytest.raises(UserError, match="--since"):
        make_query(None, 100, bad, None, None, None, False, False)


def test_bad_level_is_refused_naming_the_choices() -> None:
    with pytest.raises(UserError) as raised:
        make_query(None, 100, None, None, None, "LOUD", False, False)
    assert raised.value.fix is not None and "WARNING" in raised.value.fix


def test_level_is_case_insensitive() -> None:
    assert make_query(None, 100, None, None, None, "warn", False, False).level == "WARNING"


# ---------------------------------------------------------------- filters and merge


def test_merge_is_in_time_order() -> None:
    merged_records = merged([[at(0, "a"), at(3, "a")], [at(1, "b"), at(2, "b")]], LogQuery(lines=0, grep="m"))
    assert [r.component for r in merged_records] == ["a", "b", "b", "a"]


def test_records_written_late_are_put_in_order() -> None:
    assert [r.time for r in settled([at(2), at(1), at(3)])] == [at(1).time, at(2).time, at(3).time]


@pytest.mark.parametrize(("query", "kept"), [
    (LogQuery(since=T0 + timedelta(seconds=2)), [2, 3]),
    (LogQuery(until=T0 + timedelta(seconds=1)), [0, 1]),
    (LogQuery(level="WARNING"), [1, 3]),
    (LogQuery(grep="needle"), [2]),
], ids=["since", "until", "level", "grep"])
def test_filters(query: LogQuery, kept: list[int]) -> None:
    records = [at(0), at(1, level="WARNING"), at(2, message="a needle here"), at(3, level="ERROR")]
    assert [int((r.time - T0).total_seconds()) for r in records if query.wanted(r)] == kept


def test_grep_is_case_sensitive() -> None:
    assert not LogQuery(grep="Needle").wanted(at(0, message="needle"))


def test_tail_keeps_the_last_lines() -> None:
    records = merged([[at(s) for s in range(10)]], LogQuery(lines=3))
    assert [int((r.time - T0).total_seconds()) for r in records] == [7, 8, 9]


def test_human_line_pads_the_component_and_shows_ids() -> None:
    record = Record(T0, "INFO", "api-1", "hello", {"request_id": "r-1"})
    assert human_line(record, 10) == "2026-12-06T19:00:00.000Z api-1      INFO     hello  [request_id=r-1]"


# ---------------------------------------------------------------- files


def test_json_output_is_json_lines_in_time_order(log_dir: dict[str, Path]) -> None:
    lines = collect(log_dir, LogQuery(since=T0 - timedelta(seconds=1), json=True))
    times = [json.loads(line)["time"] for line in lines]
    assert times == sorted(times) and len(times) == 11


def test_every_json_line_carries_the_common_fields(log_dir: dict[str, Path]) -> None:
    for line in collect(log_dir, LogQuery(since=T0 - timedelta(seconds=1), json=True)):
        assert {"time", "level", "component", "message"} <= set(json.loads(line))


def test_since_reaches_into_the_rotated_file(log_dir: dict[str, Path]) -> None:
    lines = collect(log_dir, LogQuery(since=T0 + timedelta(seconds=1), json=True))
    assert "old 2" in [json.loads(line)["message"] for line in lines]


def test_since_skips_a_rotated_file_written_before_it(log_dir: dict[str, Path]) -> None:
    lines = collect(log_dir, LogQuery(since=T0 + timedelta(seconds=5), json=True))
    assert not any(json.loads(line)["message"].startswith("old") for line in lines)


def test_tail_reads_the_current_files_only(log_dir: dict[str, Path]) -> None:
    lines = collect({"supervisord": log_dir["supervisord"]}, LogQuery(lines=5, json=True))
    assert [json.loads(line)["message"] for line in lines] == ["new 6", "new 8"]


def test_grep_finds_the_run_across_components(log_dir: dict[str, Path]) -> None:
    lines = collect(log_dir, LogQuery(grep=RUN_ID, json=True))
    assert [json.loads(line)["time"] for line in lines] == ["2026-12-06T19:00:03.000Z", "2026-12-06T19:00:07.000Z"]


def test_grep_keeps_the_traceback_with_its_record(log_dir: dict[str, Path]) -> None:
    lines = collect(log_dir, LogQuery(grep="crashed", json=True))
    assert json.loads(lines[0])["message"].endswith("ValueError: boom")


def test_grep_in_a_traceback_finds_its_record(log_dir: dict[str, Path]) -> None:
    lines = collect(log_dir, LogQuery(grep="ValueError", json=True))
    assert [json.loads(line)["level"] for line in lines] == ["ERROR"]


def test_grep_matches_the_line_as_written(tmp_path: Path) -> None:
    path = tmp_path / "postgres.log"
    path.write_text(json.dumps({"timestamp": "2026-12-06 19:00:00.000 GMT", "error_severity": "LOG",
                                "message": "duration: 5001 ms", "statement": f"SELECT '{RUN_ID}'"}) + "\n")
    assert len(collect({"postgres": path}, LogQuery(grep=RUN_ID))) == 1


def test_grep_of_absent_text_prints_nothing(log_dir: dict[str, Path]) -> None:
    assert collect(log_dir, LogQuery(grep="absent-id")) == []


def test_rotated_files_oldest_first(tmp_path: Path) -> None:
    for name in ("x.log", "x.log.1", "x.log.2", "x.log.bak"):
        (tmp_path / name).write_text("")
    assert [p.name for p in rotated_files(tmp_path / "x.log")] == ["x.log.2", "x.log.1", "x.log"]


def test_postgres_collector_files_sort_by_the_time_in_their_names(tmp_path: Path) -> None:
    names = ["postgresql-20261206-101500.json", "postgresql-20261205-235959.json", "postgresql-20261206-090000.json"]
    for name in [*names, "postgresql-x.json", "postgres.log"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in rotated_files(tmp_path / names[0])] == sorted(names)
    assert newest_collector_file(tmp_path) == tmp_path / "postgresql-20261206-101500.json"


def _jsonlog(second: int, message: str) -> str:
    return json.dumps({"timestamp": f"2026-12-06 19:00:{second:02d}.000 UTC", "error_severity": "LOG",
                       "message": message})


def test_follower_moves_to_the_file_postgres_rotated_to(tmp_path: Path) -> None:
    first = tmp_path / "postgresql-20261206-190000.json"
    first.write_text(_jsonlog(0, "before") + "\n")
    follower = FileFollower("postgres", first)
    with first.open("a") as handle:
        handle.write(_jsonlog(1, "last of the old file") + "\n")
    (tmp_path / "postgresql-20261206-190002.json").write_text(_jsonlog(2, "first of the new file") + "\n")
    assert [r.message for r in follower.poll()] == ["last of the old file", "first of the new file"]
    assert [r.level for r in follower.poll()] == []


def test_follower_reads_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_text(supervisord_line(0, "before") + "\n")
    follower = FileFollower("c", path)
    with path.open("a") as handle:
        handle.write(supervisord_line(1, "after") + "\n" + supervisord_line(2, "partial"))
    assert [r.message for r in follower.poll()] == ["after"]


def test_follow_prints_each_rounds_records(tmp_path: Path) -> None:
    batches = iter([[at(2, "b"), at(1, "a")], []])
    out: list[str] = []
    assert follow([lambda: next(batches)], LogQuery(), 1, out.append, rounds=2) == 0
    assert [line.split()[1] for line in out] == ["a", "b"]


# ---------------------------------------------------------------- Docker's and kubectl's timestamped lines


def test_stamped_line_takes_the_stamp_as_its_time() -> None:
    record = next(stamped_records("api-1", ["2026-12-06T19:00:05.123456789Z 19:22:25.123 | INFO    | x - hi"]))
    assert (record.time, record.message) == (T0 + timedelta(seconds=5, microseconds=123456), "hi")


def test_stamped_traceback_joins_its_record() -> None:
    records = list(stamped_records("api-1", ["2026-12-06T19:00:05Z ERROR:    boom",
                                             "2026-12-06T19:00:05Z Traceback (most recent call last):",
                                             "2026-12-06T19:00:05Z   File \"x.py\", line 1"]))
    assert len(records) == 1 and records[0].level == "ERROR"


def test_split_lines_joins_chunks() -> None:
    assert list(split_lines([b"a\nb", b"c\n", b"d"])) == ["a", "bc", "d"]


def test_parser_is_reused_per_component() -> None:
    assert LineParser("x").component == "x"


def test_follow_ends_with_status_0_on_ctrl_c() -> None:
    def interrupted() -> list[Record]:
        raise KeyboardInterrupt

    assert follow([interrupted], LogQuery(), 1, [].append) == 0
