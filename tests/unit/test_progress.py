"""Progress of long work: plain lines in logs and pipes, rich bars on a terminal, never on stdout."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from infra.progress import PlainProgress, TerminalProgress, for_console, human_bytes

MIB = 1024 * 1024


def test_plain_steps_count_out_of_the_total() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append)
    with progress.steps("verifying backup X", 3) as steps:
        steps.step("checksums match")
        steps.step("restored")
    assert lines == ["verifying backup X (3 steps)", "[1/3] checksums match", "[2/3] restored"]


def test_plain_transfer_reports_bytes_rate_and_time_left() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval_s=0)
    with progress.transfer("fetching", 4 * MIB) as meter:
        meter.advance(MIB)
    assert lines[0].startswith("fetching: 1.0 MiB of 4.0 MiB (25%), ")
    assert "/s" in lines[0] and "left" in lines[0]
    assert "done in" in lines[-1]


def test_plain_transfer_lines_are_rate_limited() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval_s=3600)
    with progress.transfer("uploading", None) as meter:
        for _ in range(1000):
            meter.advance(1)
    assert len(lines) == 1  # only the closing line
    assert lines[0].startswith("uploading: 1000 B, ")


def test_terminal_bars_nest_in_one_live_display() -> None:
    buffer = io.StringIO()
    progress = TerminalProgress(Console(file=buffer, force_terminal=True, width=100))
    with progress.steps("restoring", 2) as steps:
        steps.step("checksums match")
        with progress.transfer("safety backup", 10 * MIB) as meter:  # a second live display would raise
            meter.advance(10 * MIB)
        steps.step("swapped")
    text = buffer.getvalue()
    assert "checksums match" in text and "safety backup: 10.0 MiB in" in text and "restoring: done" in text
    assert progress.bars is None  # the display is stopped once the outermost work is done


def test_bars_on_a_terminal_and_plain_lines_elsewhere() -> None:
    assert isinstance(for_console(Console(file=io.StringIO(), force_terminal=True)), TerminalProgress)
    assert isinstance(for_console(Console(file=io.StringIO(), force_terminal=False)), PlainProgress)


@pytest.mark.parametrize(("size", "shown"), [(0, "0 B"), (1536, "1.5 KiB"), (3 * MIB, "3.0 MiB")])
def test_human_bytes(size: int, shown: str) -> None:
    assert human_bytes(size) == shown
