"""Each component's line format turned into the common fields (infra/logs/parse.py)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from infra.logs.parse import LineParser, format_time, parse_time

DAY = date(2026, 12, 6)
# (format, line, time, level, message): one line as each component writes it.
FORMATS = [
    ("common-json", json.dumps({"time": "2026-12-06T19:22:25.123Z", "level": "ERROR", "component": "api-1",
                                "message": "boom", "request_id": "r-1", "flow_run_id": "f-1"}),
     "2026-12-06T19:22:25.123Z", "ERROR", "boom"),
    ("postgres-jsonlog", json.dumps({"timestamp": "2026-12-06 19:22:25.123 GMT", "error_severity": "FATAL",
                                     "message": "role does not exist", "pid": 12}),
     "2026-12-06T19:22:25.123Z", "CRITICAL", "role does not exist"),
    ("logfmt", 'ts=2026-12-06T19:22:25.123Z caller=main.go:1 level=warn msg="Scrape failed"',
     "2026-12-06T19:22:25.123Z", "WARNING", "Scrape failed"),
    ("pgbouncer", "2026-12-06 19:22:25.123 UTC [1234] LOG listening on 127.0.0.1:6432",
     "2026-12-06T19:22:25.123Z", "INFO", "listening on 127.0.0.1:6432"),
    ("postgres-stderr", "2026-12-06 19:22:25.123 GMT [1234] LOG:  database system is ready",
     "2026-12-06T19:22:25.123Z", "INFO", "database system is ready"),
    ("postgres-session", "2026-12-06 19:22:25.123 GMT [1234] prefect@prefect ERROR:  relation missing",
     "2026-12-06T19:22:25.123Z", "ERROR", "relation missing"),
    ("redis", "1234:M 06 Dec 2026 19:22:25.123 # Server initialized",
     "2026-12-06T19:22:25.123Z", "WARNING", "Server initialized"),
    ("supervisord", "2026-12-06 19:22:25,123 CRIT Supervisor is running as root.",
     "2026-12-06T19:22:25.123Z", "CRITICAL", "Supervisor is running as root."),
    ("prefect-text", "19:22:25.123 | WARNING | prefect.flow_runs.worker - Worker stopped",
     "2026-12-06T19:22:25.123Z", "WARNING", "Worker stopped"),
]
IDS = [f[0] for f in FORMATS]


def _parsed(line: str) -> list:  # type: ignore[type-arg]
    parser = LineParser("c", today=DAY, latest=datetime(2026, 12, 6, 23, 0, tzinfo=UTC))
    return list(parser.records([line]))


@pytest.mark.parametrize(("fmt", "line", "moment", "level", "message"), FORMATS, ids=IDS)
def test_time(fmt: str, line: str, moment: str, level: str, message: str) -> None:
    assert format_time(_parsed(line)[0].time) == moment


@pytest.mark.parametrize(("fmt", "line", "moment", "level", "message"), FORMATS, ids=IDS)
def test_level(fmt: str, line: str, moment: str, level: str, message: str) -> None:
    assert _parsed(line)[0].level == level


@pytest.mark.parametrize(("fmt", "line", "moment", "level", "message"), FORMATS, ids=IDS)
def test_message(fmt: str, line: str, moment: str, level: str, message: str) -> None:
    assert _parsed(line)[0].message == message


@pytest.mark.parametrize(("fmt", "line", "moment", "level", "message"), FORMATS, ids=IDS)
def test_component_is_the_sources(fmt: str, line: str, moment: str, level: str, message: str) -> None:
    assert _parsed(line)[0].component == "c"


def test_json_ids_are_kept() -> None:
    ids = _parsed(FORMATS[0][1])[0].ids
    assert ids == {"request_id": "r-1", "flow_run_id": "f-1"}


def test_prefect_logger_is_kept() -> None:
    assert _parsed(FORMATS[-1][1])[0].ids == {"logger": "prefect.flow_runs.worker"}


def test_prefect_time_after_the_files_last_write_is_the_day_before() -> None:
    parser = LineParser("c", today=DAY, latest=datetime(2026, 12, 6, 0, 5, tzinfo=UTC))
    record = next(parser.records(["23:59:59.000 | INFO    | prefect - late"]))
    assert format_time(record.time) == "2026-12-05T23:59:59.000Z"


def test_haproxy_default_format_time() -> None:
    line = '127.0.0.1:1 [06/Dec/2026:19:22:58.324] prefect prefect_api/api-1 0/0/0/4/4 200 137 "GET / HTTP/1.1"'
    assert _parsed(line)[0].time.astimezone(UTC).strftime("%H:%M:%S") == \
        datetime(2026, 12, 6, 19, 22, 58).astimezone(UTC).strftime("%H:%M:%S")


def test_unparsed_line_takes_the_previous_lines_time() -> None:
    records = list(LineParser("c", today=DAY).records(
        ["2026-12-06 19:22:25,123 INFO first", "Worker 'w' started!"]))
    assert records[1].time == records[0].time


def test_unparsed_line_is_kept_whole_at_info() -> None:
    records = list(LineParser("c", today=DAY).records(["2026-12-06 19:22:25,123 ERRO x", "free text here"]))
    assert (records[1].level, records[1].message) == ("INFO", "free text here")


def test_uvicorn_untimed_line_keeps_its_level() -> None:
    records = list(LineParser("c", today=DAY).records(
        ["2026-12-06 19:22:25,123 INFO first", "ERROR:    Exception in ASGI application"]))
    assert records[1].level == "ERROR"


def test_untimed_lines_before_any_time_take_the_first_time() -> None:
    records = list(LineParser("c", today=DAY).records(["banner", "2026-12-06 19:22:25,123 INFO first"]))
    assert records[0].time == records[1].time


def test_traceback_joins_the_line_before() -> None:
    lines = ["19:22:25.123 | ERROR   | prefect.x - failed", "Traceback (most recent call last):",
             '  File "x.py", line 1, in <module>', "ValueError: boom", "19:22:26.000 | INFO    | prefect.x - next"]
    records = list(LineParser("c", today=DAY, latest=datetime(2026, 12, 7, tzinfo=UTC)).records(lines))
    assert [r.message.splitlines()[-1] for r in records] == ["ValueError: boom", "next"]


def test_blank_lines_are_dropped() -> None:
    assert len(list(LineParser("c", today=DAY).records(["2026-12-06 19:22:25,123 INFO a", "", "  "]))) == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-06T19:22:25.123456789Z", "2026-12-06T19:22:25.123Z"),
    ("2026-12-06T20:22:25+01:00", "2026-12-06T19:22:25.000Z"),
    ("2026-12-06 19:22:25.123 GMT", "2026-12-06T19:22:25.123Z"),
])
def test_parse_time(text: str, expected: str) -> None:
    moment = parse_time(text)
    assert moment is not None and format_time(moment) == expected


def test_parse_time_refuses_other_text() -> None:
    assert parse_time("yesterday") is None
