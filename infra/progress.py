"""Progress of long work (backup, verify, restore, benchmarks), shown the way the reader can use it.

On a terminal: rich progress bars on stderr with bytes done, rate and ETA, or steps done out of the total.
Elsewhere (a log file, CI, the nightly scheduler): plain lines at a bounded rate, so logs stay readable and
stdout (``--json``) is never touched. Library code takes a ``Progress`` and never knows which one it got.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress

# Plain output: one line per transfer at most this often, so a long upload does not flood a log.
PLAIN_INTERVAL_S = 10.0


class ByteMeter(Protocol):
    def advance(self, size: int) -> None: ...


class StepMeter(Protocol):
    def step(self, message: str) -> None: ...


class Progress(Protocol):
    """What long work reports: news lines, steps out of a known total, bytes moved."""

    def __call__(self, message: str) -> None: ...

    def steps(self, what: str, total: int) -> AbstractContextManager[StepMeter]: ...

    def transfer(self, what: str, total_bytes: int | None) -> AbstractContextManager[ByteMeter]: ...


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


class _NoMeter:
    def advance(self, size: int) -> None:
        pass

    def step(self, message: str) -> None:
        pass


class QuietProgress:
    """Reports nothing: for library callers and tests that only want the result."""

    def __call__(self, message: str) -> None:
        pass

    @contextmanager
    def steps(self, what: str, total: int) -> Iterator[StepMeter]:
        yield _NoMeter()

    @contextmanager
    def transfer(self, what: str, total_bytes: int | None) -> Iterator[ByteMeter]:
        yield _NoMeter()


Emit = Callable[[str], None]


class _PlainSteps:
    def __init__(self, emit: Emit, what: str, total: int) -> None:
        self.emit, self.what, self.total, self.done = emit, what, total, 0

    def step(self, message: str) -> None:
        self.done += 1
        self.emit(f"[{self.done}/{self.total}] {message}")


class _PlainBytes:
    def __init__(self, emit: Emit, what: str, total: int | None, interval_s: float) -> None:
        self.emit, self.what, self.total, self.interval_s = emit, what, total, interval_s
        self.done = 0
        self.started = self.last_line = time.monotonic()
        self.lock = threading.Lock()  # uploads and downloads advance from several threads

    def advance(self, size: int) -> None:
        with self.lock:
            self.done += size
            now = time.monotonic()
            if now - self.last_line < self.interval_s:
                return
            self.last_line = now
        self.emit(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        text = f"{self.what}: {human_bytes(self.done)}"
        if self.total:
            share = min(self.done / self.total, 1.0)
            text += f" of {human_bytes(self.total)} ({share:.0%})"
        text += f", {human_bytes(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", about {(self.total - self.done) / rate:.0f}s left"
        return text

    def finish(self) -> None:
        now = time.monotonic()
        self.emit(f"{self.line(now)}, done in {now - self.started:.1f}s")


class PlainProgress:
    """Plain lines, one per event and at most one per ``interval_s`` per transfer: for logs, CI and pipes."""

    def __init__(self, emit: Emit, interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.emit, self.interval_s = emit, interval_s

    def __call__(self, message: str) -> None:
        self.emit(message)

    @contextmanager
    def steps(self, what: str, total: int) -> Iterator[StepMeter]:
        self.emit(f"{what} ({total} steps)")
        yield _PlainSteps(self.emit, what, total)

    @contextmanager
    def transfer(self, what: str, total_bytes: int | None) -> Iterator[ByteMeter]:
        meter = _PlainBytes(self.emit, what, total_bytes, self.interval_s)
        yield meter
        meter.finish()


class _RichSteps:
    def __init__(self, bars: RichProgress, task: TaskID) -> None:
        self.bars, self.task = bars, task

    def step(self, message: str) -> None:
        self.bars.console.print(f"    {message}", markup=False, highlight=False)
        self.bars.update(self.task, advance=1)


class _RichBytes:
    def __init__(self, bars: RichProgress, task: TaskID) -> None:
        self.bars, self.task = bars, task

    def advance(self, size: int) -> None:
        self.bars.update(self.task, advance=size)


class _ByKind(ProgressColumn):
    """One live display shows step tasks (M/N, elapsed) and byte tasks (size, rate, ETA) together."""

    def __init__(self, steps: ProgressColumn, transfer: ProgressColumn) -> None:
        super().__init__()
        self.steps, self.transfer = steps, transfer

    def render(self, task: Task) -> RenderableType:
        return (self.transfer if task.fields.get("kind") == "bytes" else self.steps).render(task)


class TerminalProgress:
    """rich progress bars on a terminal: bytes, rate and ETA, or steps done out of the total.

    Work nests (a restore's safety backup is a transfer inside the restore's steps) and a terminal holds one live
    display at a time: every bar of this reporter shares one display, started by the outermost one.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars: RichProgress | None = None
        self.depth = 0

    def __call__(self, message: str) -> None:
        self.console.print(f"    {message}", markup=False, highlight=False)

    @contextmanager
    def _task(self, what: str, total: float | None, kind: str) -> Iterator[tuple[RichProgress, TaskID]]:
        if self.bars is None:
            self.bars = RichProgress(
                TextColumn("    {task.description}"), BarColumn(),
                _ByKind(MofNCompleteColumn(), DownloadColumn()),
                _ByKind(TimeElapsedColumn(), TransferSpeedColumn()),
                _ByKind(TextColumn(""), TimeRemainingColumn()),
                console=self.console, transient=True,
            )
            self.bars.start()
        bars = self.bars
        self.depth += 1
        task = bars.add_task(what, total=total, kind=kind)
        try:
            yield bars, task
        finally:
            bars.remove_task(task)
            self.depth -= 1
            if self.depth == 0:
                bars.stop()
                self.bars = None

    @contextmanager
    def steps(self, what: str, total: int) -> Iterator[StepMeter]:
        with self._task(what, total, "steps") as (bars, task):
            yield _RichSteps(bars, task)
        self.console.print(f"    {what}: done", markup=False, highlight=False)

    @contextmanager
    def transfer(self, what: str, total_bytes: int | None) -> Iterator[ByteMeter]:
        started = time.monotonic()
        with self._task(what, total_bytes, "bytes") as (bars, task):
            yield _RichBytes(bars, task)
            done = next(t.completed for t in bars.tasks if t.id == task)
        seconds = time.monotonic() - started
        self.console.print(f"    {what}: {human_bytes(done)} in {seconds:.1f}s "
                           f"({human_bytes(done / max(seconds, 1e-6))}/s)", markup=False, highlight=False)


def for_console(console: Console) -> Progress:
    """Bars when a person watches the terminal, plain lines otherwise (logs, CI, pipes)."""
    if console.is_terminal:
        return TerminalProgress(console)
    return PlainProgress(lambda line: console.print(f"    {line}", markup=False, highlight=False))
