"""The age and count limits of rotated log files on the local target (logs.rotation), applied every hour.

supervisord rotates each program's file by size and keeps a count (``NAME.log.1`` ... ``NAME.log.<keep>``) but
knows no age; PostgreSQL's collector (jsonlog) starts a new file at the size limit and keeps every one. This
process deletes rotated files older than ``max_age_days``, and PostgreSQL's files beyond ``keep``. The file a
component writes now is never deleted, whatever its age: a quiet component keeps its last lines.

Run by supervisord as ``log-pruner`` (``python -m infra.logs.prune``), as the operator who owns the log files.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from infra.logs import fields
from infra.logs.parse import format_time
from infra.logs.read import newest_collector_file, rotated_files

# supervisord's rotated files: NAME.log.1 (newest) to NAME.log.<backups>.
_ROTATED = re.compile(r".+\.log\.\d+")
INTERVAL_S = 3600


@dataclass(frozen=True)
class Limits:
    max_age_days: int
    keep: int


def doomed(directory: Path, postgres_logs: Path, limits: Limits, now: float) -> list[Path]:
    """The files the limits remove now, oldest first."""
    cutoff = now - limits.max_age_days * 86400
    old: list[Path] = [path for path in directory.glob("*.log.*")
                       if _ROTATED.fullmatch(path.name) and path.stat().st_mtime < cutoff]
    current = newest_collector_file(postgres_logs) if postgres_logs.is_dir() else None
    if current is not None:
        collector = rotated_files(current)[:-1]  # oldest first, without the current one
        beyond_count = collector[:max(0, len(collector) - limits.keep)]
        old += [path for path in collector if path in beyond_count or path.stat().st_mtime < cutoff]
    return sorted(set(old), key=lambda path: path.stat().st_mtime)


def prune(directory: Path, postgres_logs: Path, limits: Limits, now: float | None = None) -> list[Path]:
    """Delete what the limits remove; returns what was deleted (a file gone meanwhile is skipped)."""
    removed = []
    for path in doomed(directory, postgres_logs, limits, time.time() if now is None else now):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _say(message: str) -> None:
    """One line of the common JSON format (``invoke logs log-pruner``)."""
    print(json.dumps({fields.TIME: format_time(datetime.now(UTC)), fields.LEVEL: "INFO",
                      fields.COMPONENT: "log-pruner", fields.MESSAGE: message}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="the stack's log directory")
    parser.add_argument("--max-age-days", type=int, required=True)
    parser.add_argument("--keep", type=int, required=True)
    parser.add_argument("--every", type=float, default=INTERVAL_S, help="seconds between two passes")
    args = parser.parse_args()
    limits = Limits(args.max_age_days, args.keep)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    _say(f"pruning rotated logs in {args.dir} every {args.every:g} s: older than {limits.max_age_days} days, "
         f"PostgreSQL's beyond {limits.keep} files")
    while not stopping.is_set():
        for path in prune(args.dir, args.dir / "postgres", limits):
            _say(f"removed {path}")
        stopping.wait(args.every)


if __name__ == "__main__":
    main()
