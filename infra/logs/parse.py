"""Turning any component's log lines into records with the common fields (infra/logs/fields.py).

One parser reads every format the stack's components write, trying each in turn: the common JSON format (and
PostgreSQL's ``jsonlog``, whose keys differ), logfmt (Prometheus, Alertmanager), and the plain-text lines of
PgBouncer, PostgreSQL's stderr, supervisord, Redis, Prefect's default console format, uvicorn, HAProxy's default
format and werkzeug. A line it does not know is kept whole as the message, at level INFO, with the time of the line
before it. Lines that continue a record (a traceback's frames) are joined to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from infra.logs import fields

# A level name each component uses -> the common level.
_LEVELS = {
    "TRACE": "DEBUG", "TRAC": "DEBUG", "BLAT": "DEBUG", "DEBG": "DEBUG", "DEBUG": "DEBUG", "NOISE": "DEBUG",
    "DEBUG1": "DEBUG", "DEBUG2": "DEBUG", "DEBUG3": "DEBUG", "DEBUG4": "DEBUG", "DEBUG5": "DEBUG",
    "INFO": "INFO", "LOG": "INFO", "NOTICE": "INFO", "STATEMENT": "INFO", "DETAIL": "INFO", "HINT": "INFO",
    "CONTEXT": "INFO",
    "WARN": "WARNING", "WARNING": "WARNING",
    "ERRO": "ERROR", "ERROR": "ERROR", "ERR": "ERROR",
    "CRIT": "CRITICAL", "CRITICAL": "CRITICAL", "FATAL": "CRITICAL", "PANIC": "CRITICAL", "ALERT": "CRITICAL",
    "EMERG": "CRITICAL",
}
# Redis marks a line's level with one character: debug, verbose, notice, warning.
_REDIS_LEVELS = {".": "DEBUG", "-": "DEBUG", "*": "INFO", "#": "WARNING"}
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
# The ids a JSON line may carry, kept on the record as they are.
_ID_KEYS = (fields.LOGGER, fields.REQUEST_ID, fields.TRACE_ID, fields.SPAN_ID, fields.FLOW_RUN_ID,
            fields.TASK_RUN_ID, fields.EXCEPTION)

# PgBouncer, supervisord, PostgreSQL's stderr (log_line_prefix '%m [%p] %q%u@%d '):
#   2026-12-06 19:22:25.123 UTC [1234] LOG message / 2026-12-06 19:22:25,123 INFO message /
#   2026-12-06 19:22:25.123 GMT [1234] user@db ERROR:  message
_DATED = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,6}))?(?: ?(UTC|GMT|Z))?"
    r"(?: \[\d+\])?(?: \S*@\S*)? ([A-Z][A-Z0-9]+):? +(.*)", re.DOTALL)
# Redis: 1234:M 06 Dec 2026 19:22:25.123 * message
_REDIS = re.compile(r"\d+:[A-Z] (\d\d) (\w{3}) (\d{4}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))? ([.\-*#]) (.*)",
                    re.DOTALL)
# Prefect's default console format: 19:22:25.123 | INFO    | prefect.x - message (no date: see LineParser).
_PREFECT = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) \| ([A-Z]+) *\| (?:([\w.]+) - )?(.*)", re.DOTALL)
# HAProxy's default format [06/Dec/2026:19:22:58.324] and werkzeug's [06/Dec/2026 19:22:37], anywhere in the line.
_BRACKETED = re.compile(r"\[(\d\d)/(\w{3})/(\d{4})[: ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\]")
# uvicorn's and HAProxy's untimed lines: "INFO:     Started server process", "[NOTICE]   (1) : ..."
_LEVEL_ONLY = re.compile(r"\[?([A-Z]+)\]?:? +")
_LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
# Lines that continue the record before them: a traceback's header, its frames (indented) and chaining notes.
# The time of a line when no line of its file has one (the reader sorts it first).
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)
_CONTINUATION_STARTS = ("Traceback (most recent call last)", "During handling of the above exception",
                        "The above exception was the direct cause", "  ", "\t")


@dataclass
class Record:
    """One log record: the common fields, and the ids the line carried."""

    time: datetime
    level: str
    component: str
    message: str
    ids: dict[str, Any] = field(default_factory=dict)
    raw: str = field(default="", repr=False)  # the lines as written, for --grep (a JSON key not kept above)

    def as_dict(self) -> dict[str, Any]:
        return {fields.TIME: format_time(self.time), fields.LEVEL: self.level, fields.COMPONENT: self.component,
                fields.MESSAGE: self.message, **self.ids}

    def text(self) -> str:
        """The record's text as written, for --grep: what a search of the file's bytes would find."""
        return self.raw or self.message + "".join(f" {v}" for v in self.ids.values())


def format_time(moment: datetime) -> str:
    """RFC 3339, UTC, milliseconds, Z: the common format's time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time (any precision: Docker and kubectl write nanoseconds), or PostgreSQL's jsonlog
    ``2026-12-06 19:22:25.123 GMT``; None when it is neither."""
    value = text.strip().replace(" GMT", "Z").replace(" UTC", "Z")
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", value)
    if not match:
        return None
    day, clock, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}").astimezone(UTC)
    except ValueError:
        return None


def level_of(name: str) -> str | None:
    return _LEVELS.get(name.upper())


def _micro(fraction: str | None) -> int:
    return int((fraction or "0")[:6].ljust(6, "0"))


class LineParser:
    """Parses one component's lines in order. ``today`` dates Prefect's time-only lines: the reader passes the
    date of the file's last write (or the date of the line's Docker/kubectl timestamp), and a time later than
    ``latest`` on that day belongs to the day before (the file cannot hold lines written after its mtime)."""

    def __init__(self, component: str, today: date | None = None, latest: datetime | None = None) -> None:
        self.component = component
        self.today = today or datetime.now(UTC).date()
        self.latest = latest
        self.last_time: datetime | None = None

    def head(self, line: str) -> Record | None:
        """The record a line starts, with its time, or None for a line without a time of its own."""
        if line.startswith("{"):
            return self._json(line)
        if match := _DATED.match(line):
            year, month, day, hour, minute, second, fraction, _zone, level, message = match.groups()
            if (common := level_of(level)) is not None:
                moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                                  _micro(fraction), UTC)
                return Record(moment, common, self.component, message)
        if match := _REDIS.match(line):
            day, month, year, hour, minute, second, fraction, mark, message = match.groups()
            if month in _MONTHS:
                moment = datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second),
                                  _micro(fraction), UTC)
                return Record(moment, _REDIS_LEVELS[mark], self.component, message)
        if match := _PREFECT.match(line):
            hour, minute, second, millis, level, logger, message = match.groups()
            moment = datetime(self.today.year, self.today.month, self.today.day, int(hour), int(minute), int(second),
                              int(millis) * 1000, UTC)
            if self.latest is not None and moment > self.latest + timedelta(seconds=1):
                moment -= timedelta(days=1)
            ids = {fields.LOGGER: logger} if logger else {}
            return Record(moment, level_of(level) or "INFO", self.component, message, ids)
        if "ts=" in line and (record := self._logfmt(line)) is not None:
            return record
        if match := _BRACKETED.search(line):
            day, month, year, hour, minute, second, fraction = match.groups()
            if month in _MONTHS:
                # HAProxy and werkzeug write the host's local time: read it as such.
                local = datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second),
                                 _micro(fraction))
                return Record(local.astimezone(UTC), "INFO", self.component, line)
        return None

    def _json(self, line: str) -> Record | None:
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        # The common format's keys, or PostgreSQL jsonlog's (timestamp, error_severity, message).
        moment = parse_time(str(data.get(fields.TIME) or data.get("timestamp") or ""))
        if moment is None:
            return None
        level = level_of(str(data.get(fields.LEVEL) or data.get("error_severity") or "INFO")) or "INFO"
        message = str(data.get(fields.MESSAGE, data.get("msg", "")))
        ids = {key: data[key] for key in _ID_KEYS if data.get(key) not in (None, "")}
        return Record(moment, level, self.component, message, ids)

    def _logfmt(self, line: str) -> Record | None:
        pairs = {key: value[1:-1].replace('\\"', '"') if value.startswith('"') else value
                 for key, value in _LOGFMT_PAIR.findall(line)}
        moment = parse_time(pairs.get("ts", ""))
        if moment is None:
            return None
        message = pairs.pop("msg", "")
        rest = " ".join(f"{k}={v}" for k, v in pairs.items() if k not in ("ts", "level", "caller"))
        return Record(moment, level_of(pairs.get("level", "info")) or "INFO", self.component,
                      f"{message} {rest}".strip() if rest else message)

    def untimed(self, line: str) -> Record:
        """A line with no time of its own: the time of the line before it, its level if it names one."""
        level = "INFO"
        if match := _LEVEL_ONLY.match(line):
            level = level_of(match.group(1)) or "INFO"
        return Record(self.last_time or _NO_TIME, level, self.component, line)

    def records(self, lines: Iterable[str]) -> Iterator[Record]:
        """The records of consecutive lines (without their newlines). Lines before the first timed one take its
        time; blank lines are dropped."""
        current: Record | None = None
        waiting: list[Record] = []  # untimed lines before the first time: they take the first line's time
        in_traceback = False
        for line in lines:
            if not line.strip():
                continue
            record = self.head(line)
            if record is None and current is not None and (
                    line.startswith(_CONTINUATION_STARTS) or in_traceback):
                current.message += "\n" + line
                current.raw += "\n" + line
                # A traceback ends with its exception's line, the first one not indented after the frames.
                in_traceback = line.startswith(("Traceback", "  ", "\t", "During", "The above"))
                continue
            if current is not None:
                yield current
            in_traceback = False
            if record is None:
                record = self.untimed(line)
                record.raw = line
                if self.last_time is None:
                    waiting.append(record)
                    current = None
                    continue
            else:
                record.raw = line
                self.last_time = record.time
                for early in waiting:
                    early.time = record.time
                    yield early
                waiting = []
            current = record
            in_traceback = line.startswith("Traceback")
        yield from waiting
        if current is not None:
            yield current
