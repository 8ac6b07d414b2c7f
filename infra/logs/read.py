"""``invoke logs``: every component's records, filtered, merged in time order and printed, whatever the target.

A target hands over one source per component (an iterator of records in the order the component wrote them, and
for --follow a way to poll for more); this module filters (--since, --until, --grep, --level), merges them with
``heapq.merge`` and prints a human line per record on a terminal or one JSON object per line (--json).

Files (the local target) are searched for --grep before anything is parsed: the literal is found with
``mmap.find`` over the whole file and only the records around a hit are parsed, so a search of a gigabyte of logs
costs about one pass over the bytes (``invoke bench.logs`` measures it).
"""

from __future__ import annotations

import heapq
import json
import mmap
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra.errors import UserError
from infra.logs import fields
from infra.logs.parse import LineParser, Record, format_time, parse_time

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# How far back from a --grep hit the reader looks for the line that gives it a time (a traceback's head).
_BACK_LIMIT = 1 << 20
# Records a component may write out of time order (HAProxy logs a request when it ends, stamped with its
# start): each source is held back this long and re-sorted, so the merged output is in time order.
_REORDER_WINDOW = timedelta(seconds=60)
_REORDER_MAX = 10_000
POLL_INTERVAL_S = 0.5
_ID_ORDER = (fields.REQUEST_ID, fields.FLOW_RUN_ID, fields.TASK_RUN_ID, fields.TRACE_ID, fields.SPAN_ID)


@dataclass(frozen=True)
class LogQuery:
    """What the operator asked for. ``component`` None: every component, merged."""

    component: str | None = None
    lines: int = 100
    since: datetime | None = None
    until: datetime | None = None
    grep: str | None = None
    level: str | None = None
    follow: bool = False
    json: bool = False

    @property
    def tail(self) -> int | None:
        """The last N records, when no time range or search chooses them."""
        return None if (self.since or self.until or self.grep) else self.lines

    def wanted(self, record: Record) -> bool:
        if self.since is not None and record.time < self.since:
            return False
        if self.until is not None and record.time > self.until:
            return False
        if self.level is not None and fields.LEVELS.index(record.level) < fields.LEVELS.index(self.level):
            return False
        return self.grep is None or self.grep in record.message or self.grep in record.text()


def parse_moment(text: str, option: str, now: datetime | None = None) -> datetime:
    """A duration before now (``90s``, ``5m``, ``2h``, ``1d``, ``1h30m``) or an RFC 3339 time."""
    stripped = text.strip()
    if stripped and _DURATION.sub("", stripped) == "":
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(stripped))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    moment = parse_time(stripped)
    if moment is None:
        raise UserError(f"{option} {text!r} is neither a duration nor a time",
                        fix=f"give a duration like 5m, 2h or 1d, or an RFC 3339 time like "
                            f"2026-12-06T19:22:25Z: {option} 5m")
    return moment


def make_query(component: str | None, lines: int, since: str | None, until: str | None, grep: str | None,
               level: str | None, follow: bool, json_: bool) -> LogQuery:
    """The task's options, checked."""
    chosen_level = None
    if level:
        chosen_level = level.upper()
        if chosen_level == "WARN":
            chosen_level = "WARNING"
        if chosen_level not in fields.LEVELS:
            raise UserError(f"unknown level {level!r} (--level)", fix=f"use one of: {', '.join(fields.LEVELS)}")
    if int(lines) < 0:
        raise UserError(f"--lines {lines} is negative", fix="give a count of lines, e.g. --lines 100")
    return LogQuery(component=component or None, lines=int(lines),
                    since=parse_moment(since, "--since") if since else None,
                    until=parse_moment(until, "--until") if until else None,
                    grep=grep or None, level=chosen_level, follow=follow, json=json_)


# ---------------------------------------------------------------- files (the local target)


def _lines_of(data: bytes) -> list[str]:
    return data.decode(errors="replace").split("\n")


# PostgreSQL's collector (jsonlog, local target) names its files by the time it opened them: postgresql-<stamp>.json.
_COLLECTOR_FILE = re.compile(r"postgresql-\d{8}-\d{6}\.json")


def newest_collector_file(directory: Path) -> Path | None:
    """PostgreSQL's current jsonlog file: the newest by name (the name is its start time)."""
    files = sorted(p for p in directory.glob("postgresql-*.json") if _COLLECTOR_FILE.fullmatch(p.name))
    return files[-1] if files else None


def rotated_files(current: Path) -> list[Path]:
    """A log file and its rotated siblings, oldest first: supervisord's NAME.log.1 is the newest rotated one;
    PostgreSQL's collector files sort by the time in their names."""
    if _COLLECTOR_FILE.fullmatch(current.name):
        return sorted(p for p in current.parent.glob("postgresql-*.json") if _COLLECTOR_FILE.fullmatch(p.name))
    siblings = []
    for sibling in current.parent.glob(current.name + ".*"):
        suffix = sibling.name[len(current.name) + 1:]
        if suffix.isdigit():
            siblings.append((int(suffix), sibling))
    return [path for _, path in sorted(siblings, reverse=True)] + ([current] if current.exists() else [])


def _parser(component: str, path: Path) -> LineParser:
    written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return LineParser(component, today=written.date(), latest=written)


def _grep_file(path: Path, component: str, needle: bytes) -> Iterator[Record]:
    """The records of one file holding the literal, parsing only around each hit."""
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            parser = _parser(component, path)
            covered = 0  # bytes up to here were parsed already
            position = data.find(needle)
            while position != -1:
                if position < covered:
                    position = data.find(needle, covered)
                    continue
                start = _timed_line_before(data, position, parser, floor=covered)
                end = _record_end(data, position, parser)
                for record in parser.records(_lines_of(data[start:end])):
                    if needle.decode(errors="replace") in record.message or \
                            needle.decode(errors="replace") in record.text():
                        yield record
                covered = end
                position = data.find(needle, end)


def _timed_line_before(data: mmap.mmap, position: int, parser: LineParser, floor: int) -> int:
    """Where the line that gives the hit its time begins: the hit's own line if it has one, else the nearest line
    before it with a time (a traceback's head), within _BACK_LIMIT bytes and not before ``floor``."""
    start = data.rfind(b"\n", 0, position) + 1
    limit = max(floor, position - _BACK_LIMIT)
    while True:
        line = data[start:data.find(b"\n", start) if data.find(b"\n", start) != -1 else len(data)]
        if parser.head(line.decode(errors="replace")) is not None or start <= limit:
            return max(start, floor)
        start = data.rfind(b"\n", 0, start - 1) + 1


def _record_end(data: mmap.mmap, position: int, parser: LineParser) -> int:
    """Where the record holding the hit surely ended: before the next line with a time of its own (bounded). The
    untimed lines up to there are parsed with it: the parser tells a traceback's lines from lines of their own."""
    end = data.find(b"\n", position)
    limit = position + _BACK_LIMIT
    while end != -1 and end < limit:
        following = data.find(b"\n", end + 1)
        line = data[end + 1:following if following != -1 else len(data)]
        if parser.head(line.decode(errors="replace")) is not None:
            return end
        end = following
    return len(data) if end == -1 else end


def _tail_bytes(path: Path, lines: int) -> bytes:
    """Enough of the file's end to hold its last ``lines`` lines (and the records they continue)."""
    size = path.stat().st_size
    block = max(65536, lines * 400)
    with path.open("rb") as handle:
        while True:
            start = max(0, size - block)
            handle.seek(start)
            data = handle.read(size - start)
            if start == 0 or data.count(b"\n") > lines * 2:
                # Drop the first, likely partial, line.
                return data if start == 0 else data[data.find(b"\n") + 1:]
            block *= 4


def read_file_records(component: str, current: Path, query: LogQuery) -> Iterator[Record]:
    """One component's records from its file and the rotated siblings a --since reaches back to."""
    paths = rotated_files(current)
    if query.since is not None:
        # A file last written before --since holds nothing after it.
        paths = [p for p in paths if datetime.fromtimestamp(p.stat().st_mtime, UTC) >= query.since]
    elif query.tail is not None:
        paths = paths[-1:]
    for path in paths:
        if query.grep:
            yield from _grep_file(path, component, query.grep.encode())
        elif query.tail is not None:
            records = list(_parser(component, path).records(_lines_of(_tail_bytes(path, query.tail))))
            yield from records[-query.tail:] if query.tail else []
        else:
            with path.open("rb") as handle:
                yield from _parser(component, path).records(
                    line.decode(errors="replace").rstrip("\n") for line in handle)


class FileFollower:
    """New complete lines of one component's file, polled; starts at the file's end, reopens it after rotation."""

    def __init__(self, component: str, path: Path) -> None:
        self.component = component
        self.path = path
        self.parser = _parser(component, path) if path.exists() else LineParser(component)
        self.offset = path.stat().st_size if path.exists() else 0
        self.inode = path.stat().st_ino if path.exists() else 0
        self.partial = b""

    def poll(self) -> list[Record]:
        records: list[Record] = []
        if _COLLECTOR_FILE.fullmatch(self.path.name):
            newest = newest_collector_file(self.path.parent)
            if newest is not None and newest != self.path:
                # PostgreSQL rotated to a new file: finish the old one, then read the new one from its start.
                records = self._read()
                self.path, self.inode, self.offset, self.partial = newest, newest.stat().st_ino, 0, b""
        return records + self._read()

    def _read(self) -> list[Record]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.inode, self.offset, self.partial = stat.st_ino, 0, b""
        if stat.st_size == self.offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = self.partial + handle.read(stat.st_size - self.offset)
        self.offset = stat.st_size
        complete, _, self.partial = data.rpartition(b"\n")
        if not complete:
            self.partial = data
            return []
        self.parser.today = datetime.now(UTC).date()
        self.parser.latest = None
        return list(self.parser.records(_lines_of(complete)))


# ---------------------------------------------------------------- merging and printing


def settled(records: Iterable[Record]) -> Iterator[Record]:
    """A component's records in time order, where it wrote some of them late (by up to _REORDER_WINDOW)."""
    held: list[tuple[datetime, int, Record]] = []
    for count, record in enumerate(records):
        heapq.heappush(held, (record.time, count, record))
        while held and (len(held) > _REORDER_MAX or held[0][0] < record.time - _REORDER_WINDOW):
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]


def merged(sources: Iterable[Iterable[Record]], query: LogQuery) -> Iterator[Record]:
    """Every source's wanted records, in time order."""
    chosen = (settled(r for r in source if query.wanted(r)) for source in sources)
    everything: Iterator[Record] = heapq.merge(*chosen, key=lambda r: r.time)
    if query.tail is None:
        return everything
    last: list[Record] = []
    for record in everything:
        last.append(record)
        if len(last) > 2 * query.tail + 1000:
            del last[:-query.tail]
    return iter(last[-query.tail:] if query.tail else [])


def human_line(record: Record, width: int) -> str:
    """time, component (padded), level, message, ids."""
    ids = " ".join(f"{key}={record.ids[key]}" for key in _ID_ORDER if key in record.ids)
    return (f"{format_time(record.time)} {record.component.ljust(width)} {record.level:<8} {record.message}"
            + (f"  [{ids}]" if ids else ""))


def json_line(record: Record) -> str:
    return json.dumps(record.as_dict(), ensure_ascii=False, default=str)


def show(records: Iterable[Record], query: LogQuery, width: int, write: Callable[[str], object] | None = None) -> int:
    """Print each record; how many were printed."""
    out = write or (lambda text: sys.stdout.write(text + "\n"))
    count = 0
    for record in records:
        out(json_line(record) if query.json else human_line(record, width))
        count += 1
    if write is None:
        sys.stdout.flush()
    return count


def follow(pollers: list[Callable[[], list[Record]]], query: LogQuery, width: int,
           write: Callable[[str], object] | None = None, rounds: int | None = None) -> int:
    """Poll every source, printing what each round brought in time order, until Ctrl-C (exit status 0).
    ``rounds`` bounds the polling, for tests."""
    done = 0
    try:
        while rounds is None or done < rounds:
            fresh = [r for poll in pollers for r in poll() if query.wanted(r)]
            show(sorted(fresh, key=lambda r: r.time), query, width, write)
            done += 1
            if rounds is None or done < rounds:
                time.sleep(POLL_INTERVAL_S)
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or the reader of a pipe went away
        pass
    return 0


def read_and_show(sources: Mapping[str, Iterable[Record]], query: LogQuery,
                  followers: list[Callable[[], list[Record]]] | None = None,
                  write: Callable[[str], object] | None = None) -> int:
    """The whole of ``invoke logs`` once a target has named its sources: exit status 0."""
    width = max((len(name) for name in sources), default=0)
    try:
        show(merged(sources.values(), query), query, width, write)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # | head: the reader went away, nothing more to say
        return 0
    if query.follow and followers:
        return follow(followers, query, width, write)
    return 0


def read_local(log_files: dict[str, Path], query: LogQuery, write: Callable[[str], object] | None = None) -> int:
    """``invoke logs`` over a directory of files: component name -> its current file."""
    sources = {name: read_file_records(name, path, query) for name, path in log_files.items()}
    followers = [FileFollower(name, path).poll for name, path in log_files.items()] if query.follow else None
    return read_and_show(sources, query, followers, write)


def stamped_records(component: str, lines: Iterable[str]) -> Iterator[Record]:
    """Records of lines Docker or kubectl prefixed with their RFC 3339 time (``--timestamps``): that time is the
    record's (Prefect's console lines carry no date), the rest is parsed as the component wrote it."""
    parser = LineParser(component)
    current: Record | None = None
    for raw in lines:
        stamp, _, line = raw.rstrip("\n").partition(" ")
        moment = parse_time(stamp)
        if moment is None or not line.strip():
            continue
        parser.today, parser.latest = moment.date(), moment + timedelta(seconds=1)
        record = parser.head(line)
        if record is None and current is not None and line.startswith(("  ", "\t", "Traceback", "During",
                                                                        "The above")):
            current.message += "\n" + line
            current.raw += "\n" + line
            continue
        if current is not None:
            yield current
        current = record or parser.untimed(line)
        current.time, current.raw = moment, line
    if current is not None:
        yield current


class StreamFollower:
    """New records of blocking line streams (``docker logs --follow``, ``kubectl logs --follow``), each read in a
    thread of its own; ``poll`` takes what arrived since the last call."""

    def __init__(self, streams: dict[str, Iterable[str]]) -> None:
        self.queue: queue.Queue[Record] = queue.Queue()
        for name, lines in streams.items():
            threading.Thread(target=self._pump, args=(name, lines), daemon=True, name=f"logs-{name}").start()

    def _pump(self, name: str, lines: Iterable[str]) -> None:
        for record in stamped_records(name, lines):
            self.queue.put(record)

    def poll(self) -> list[Record]:
        fresh = []
        while True:
            try:
                fresh.append(self.queue.get_nowait())
            except queue.Empty:
                return fresh


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Text lines of a stream of byte chunks that need not end on a line's end."""
    partial = b""
    for chunk in chunks:
        partial += chunk
        *complete, partial = partial.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")
    if partial:
        yield partial.decode(errors="replace")
