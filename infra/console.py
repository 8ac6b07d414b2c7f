"""Operator-facing output: progress on stderr (so stdout stays parseable), readable on a terminal and in logs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

from infra.errors import UserError
from infra.progress import Progress, for_console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def step(message: str) -> None:
    err.print(f"[bold]==>[/bold] {message}")


def progress() -> Progress:
    """Progress of long work on stderr: bars on a terminal, plain lines in logs and pipes."""
    return for_console(err)


def note(message: str) -> None:
    err.print(f"    {message}")


@contextmanager
def timed(message: str) -> Iterator[None]:
    started = time.monotonic()
    step(message)
    yield
    note(f"[green]done[/green] in {time.monotonic() - started:.1f}s")


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, fix: str, interval_s: float = 0.3) -> float:
    """Poll ``check`` until it is true; returns the seconds waited, or raises a UserError naming ``what``."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # noqa: S110 - any failure of a probe only means "not yet"
            pass
        if time.monotonic() - started > timeout_s:
            raise UserError(f"{what} not healthy after {timeout_s:.0f}s", fix=fix)
        time.sleep(interval_s)
