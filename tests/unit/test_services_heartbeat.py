"""The background services' heartbeat (infra.containers.services): a turning event loop renews it, a stuck one
does not, and the probe tells the two apart."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from infra.containers import services


def test_no_heartbeat_yet_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert services.main(["check", "--heartbeat", str(tmp_path / "beat")]) == 1
    assert "no heartbeat yet" in capsys.readouterr().err


def test_a_fresh_heartbeat_passes(tmp_path: Path) -> None:
    (tmp_path / "beat").touch()
    assert services.main(["check", "--heartbeat", str(tmp_path / "beat")]) == 0


def test_a_stale_heartbeat_fails_naming_its_age(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    beat = tmp_path / "beat"
    beat.touch()
    old = time.time() - 300
    os.utime(beat, (old, old))
    assert services.main(["check", "--heartbeat", str(beat), "--max-age", "60"]) == 1
    assert "last heartbeat 300 s ago" in capsys.readouterr().err


def test_the_beat_renews_the_file_while_the_loop_turns(tmp_path: Path) -> None:
    beat = tmp_path / "run" / "beat"

    async def scenario() -> list[int]:
        task = asyncio.create_task(services.beat(beat, 0.05))
        seen: list[int] = []
        for _ in range(3):
            await asyncio.sleep(0.2)
            seen.append(beat.stat().st_mtime_ns)
        task.cancel()
        return seen

    seen = asyncio.run(scenario())
    assert seen == sorted(set(seen))  # each look finds a newer beat


def test_a_blocked_loop_stops_the_beat(tmp_path: Path) -> None:
    """What the probe exists for: a call that blocks the event loop also stops the heartbeat."""
    beat = tmp_path / "beat"

    async def scenario() -> float | None:
        task = asyncio.create_task(services.beat(beat, 0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.5)  # a stuck, synchronous call on the loop
        age = services.heartbeat_age(beat)
        task.cancel()
        return age

    age = asyncio.run(scenario())
    assert age is not None and age >= 0.45


def test_prefects_services_coroutine_is_where_the_runner_takes_it() -> None:
    """The runner calls what `prefect server services start` calls: a Prefect upgrade that moves it fails here."""
    from prefect.cli._server_utils import _run_all_services

    assert asyncio.iscoroutinefunction(_run_all_services)
