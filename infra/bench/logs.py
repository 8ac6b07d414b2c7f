"""``invoke bench.logs``: how fast ``invoke logs --grep`` searches a gigabyte of the stack's logs.

Generates ``size_mib`` of realistic lines in a temporary directory laid out like a local state directory's
``log/`` (one file per component in its own format, supervisord's rotated siblings ``NAME.log.1``... once a file
passes 50 MiB, as the supervisor rotates), plants one flow run id in a few records (a JSON line, Prefect's console
lines, HAProxy's, and a traceback's frame), then times the reader the task runs (``read_local`` with --grep) a few
times. Goal: the median under 5 s, and exactly the planted records found.
"""

from __future__ import annotations

import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from infra.bench.harness import Verdict, temporary_workdir
from infra.logs.read import LogQuery, read_local

GOAL_S = 5.0
ROTATE_BYTES = 50 << 20  # supervisord's stdout_logfile_maxbytes (infra/render/supervisor.py)
BLOCK_LINES = 2000
START = datetime(2026, 12, 6, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class LogsBenchSettings:
    size_mib: int = 1024
    runs: int = 3


@dataclass
class LogsBenchReport:
    settings: LogsBenchSettings
    generated_bytes: int = 0
    generated_s: float = 0.0
    planted: int = 0
    found: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "generated_bytes": self.generated_bytes,
                "generated_s": round(self.generated_s, 1), "planted": self.planted, "found": self.found,
                "seconds": [round(s, 3) for s in self.seconds], "median_s": round(self.median_s, 3),
                "verdicts": [v.as_dict() for v in self.verdicts]}


def _stamp(moment: datetime) -> tuple[str, str]:
    """(date, time with milliseconds)."""
    return moment.strftime("%Y-%m-%d"), moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _ids(rng: random.Random) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(200)]


# component -> (share of the total size, one line at a moment with an id)
def _formats() -> dict[str, tuple[float, Callable[[datetime, str], str]]]:
    def api_json(m: datetime, i: str) -> str:
        day, clock = _stamp(m)
        return (f'{{"time": "{day}T{clock}Z", "level": "INFO", "component": "api-1", "message": '
                f'"POST /api/flow_runs/{i}/set_state 201", "logger": "uvicorn.access", "request_id": "{i[:8]}"}}')

    def prefect_text(m: datetime, i: str) -> str:
        return f"{_stamp(m)[1]} | INFO    | prefect.flow_runs.worker - Worker 'default-1' submitting flow run '{i}'"

    def services(m: datetime, i: str) -> str:
        return (f"{_stamp(m)[1]} | INFO    | prefect.server.events.triggers - Automation {i} covers event "
                f"'prefect.flow-run.heartbeat' for 'prefect.flow-run.{i}'")

    def haproxy(m: datetime, i: str) -> str:
        clock = _stamp(m)[1]
        return (f"127.0.0.1:48058 [06/Dec/2026:{clock}] prefect prefect_api/api-1 0/0/0/124/124 200 135 - - ---- "
                f'1/1/0/0/0 0/0 "POST /api/flow_runs/{i}/set_state HTTP/1.1"')

    def postgres(m: datetime, i: str) -> str:
        day, clock = _stamp(m)
        return f"{day} {clock} GMT [11825] prefect@prefect LOG:  duration: 5012.3 ms  statement: SELECT '{i}'"

    def pgbouncer(m: datetime, i: str) -> str:
        day, clock = _stamp(m)
        return f"{day} {clock} UTC [11848] LOG stats: 7 xacts/s, 28 queries/s, in 17814 B/s, out 8538 B/s"

    def redis(m: datetime, i: str) -> str:
        return f"11857:M 06 Dec 2026 {_stamp(m)[1]} * Background saving started by pid 1234"

    def supervisord(m: datetime, i: str) -> str:
        day, clock = _stamp(m)
        return f"{day} {clock.replace('.', ',')} INFO success: worker-default-1 entered RUNNING state"

    return {"api-1": (0.30, api_json), "api-2": (0.15, prefect_text), "worker-default-1": (0.15, prefect_text),
            "services-1": (0.10, services), "haproxy": (0.20, haproxy), "postgres": (0.04, postgres),
            "pgbouncer": (0.02, pgbouncer), "redis": (0.02, redis), "supervisord": (0.02, supervisord)}


def _planted(component: str, moment: datetime, run_id: str) -> list[str]:
    """The lines of one planted record: the id in the record's own line, or (worker) in a traceback's frame."""
    day, clock = _stamp(moment)
    if component == "api-1":
        return [f'{{"time": "{day}T{clock}Z", "level": "INFO", "component": "api-1", "message": "flow run '
                f'submitted", "flow_run_id": "{run_id}"}}']
    if component == "worker-default-1":
        return [f"{clock} | ERROR   | prefect.flow_runs - Flow run crashed", "Traceback (most recent call last):",
                f'  File "/flows/{run_id}/flow.py", line 3, in run', "ValueError: boom"]
    if component == "haproxy":
        return [f"127.0.0.1:1 [06/Dec/2026:{clock}] prefect prefect_api/api-2 0/0/0/9/9 201 600 - - ---- "
                f'1/1/0/0/0 0/0 "POST /api/flow_runs/{run_id}/set_state HTTP/1.1"']
    return [f"{clock} | INFO    | prefect.flow_runs.worker - Worker 'default-1' submitting flow run '{run_id}'"]


def generate(directory: Path, size_bytes: int, run_id: str, seed: int = 17) -> tuple[dict[str, Path], int]:
    """The files, by component, and how many records carry ``run_id`` (planted at the start, middle and end of
    the biggest components' logs)."""
    rng = random.Random(seed)  # noqa: S311 - repeatable sample ids, nothing secret
    ids = _ids(rng)
    planted = 0
    files: dict[str, Path] = {}
    for component, (share, line) in _formats().items():
        budget = int(size_bytes * share)
        plant_at = {0, budget // 2, budget - 1} if component in ("api-1", "api-2", "worker-default-1",
                                                                 "haproxy") else set()
        chunks = list(_write_rotated(directory, component, budget, line, ids, run_id, plant_at))
        planted += sum(chunks)
        files[component] = directory / f"{component}.log"
    return files, planted


def _write_rotated(directory: Path, component: str, budget: int, line: Callable[[datetime, str], str],
                   ids: list[str], run_id: str, plant_at: set[int]) -> Iterator[int]:
    """Write ``budget`` bytes of the component's lines, rotating every ROTATE_BYTES; yields records planted."""
    pieces = max(1, -(-budget // ROTATE_BYTES))
    step = timedelta(seconds=86400 / max(1, budget // 150))  # a day's lines, in order
    moment = START
    written = 0
    pending = sorted(plant_at)
    for piece in range(pieces):
        # Oldest first: NAME.log.N ... NAME.log.1, then NAME.log.
        path = directory / (f"{component}.log.{pieces - 1 - piece}" if piece < pieces - 1 else f"{component}.log")
        limit = min(budget, (piece + 1) * ROTATE_BYTES)
        with path.open("w") as handle:
            while written < limit:
                block = []
                for n in range(BLOCK_LINES):
                    block.append(line(moment, ids[n % len(ids)]))
                    moment += step
                if pending and written + sum(len(b) + 1 for b in block) >= pending[0]:
                    block.extend(_planted(component, moment, run_id))
                    pending.pop(0)
                    yield 1
                text = "\n".join(block) + "\n"
                handle.write(text)
                written += len(text)
        os.utime(path, (moment.timestamp(), moment.timestamp()))
    current = directory / f"{component}.log"
    for _ in pending:  # a budget too small to reach every planting point: plant the rest at the end
        with current.open("a") as handle:
            handle.write("\n".join(_planted(component, moment, run_id)) + "\n")
        yield 1
    # The reader dates Prefect's time-only lines by the file's last write: keep it the generated day's.
    os.utime(current, (moment.timestamp(), moment.timestamp()))


def run_logs_benchmark(settings: LogsBenchSettings, progress: Callable[[str], None] = print) -> LogsBenchReport:
    report = LogsBenchReport(settings)
    run_id = str(uuid.uuid4())
    with temporary_workdir("prefect-stack-bench-logs-") as workdir:
        logs = workdir / "stack" / "log"
        logs.mkdir(parents=True)
        started = time.monotonic()
        files, report.planted = generate(logs, settings.size_mib << 20, run_id)
        report.generated_s = time.monotonic() - started
        report.generated_bytes = sum(p.stat().st_size for p in logs.iterdir())
        progress(f"generated {report.generated_bytes / (1 << 20):.0f} MiB in {len(list(logs.iterdir()))} files "
                 f"in {report.generated_s:.0f} s; {report.planted} records carry the planted id")
        for attempt in range(settings.runs):
            out: list[str] = []
            started = time.monotonic()
            read_local(files, LogQuery(grep=run_id, json=True), out.append)
            report.seconds.append(time.monotonic() - started)
            report.found.append(len(out))
            progress(f"run {attempt + 1}: {report.seconds[-1]:.2f} s, {len(out)} records")
    report.verdicts = judge(report)
    return report


def judge(report: LogsBenchReport) -> list[Verdict]:
    size = f"{report.generated_bytes / (1 << 30):.2f} GiB"
    exact = all(found == report.planted for found in report.found) and bool(report.found)
    return [
        Verdict(f"invoke logs --grep over {size} in under {GOAL_S:g} s (median)",
                "pass" if report.seconds and report.median_s < GOAL_S else "fail",
                f"{report.median_s:.2f} s (runs: {', '.join(f'{s:.2f}' for s in report.seconds)})",
                report.median_s / GOAL_S),
        Verdict("finds exactly the planted records", "pass" if exact else "fail",
                f"found {report.found}, planted {report.planted}"),
    ]
