"""Prefect's background services, as ``prefect server services start`` runs them, with a heartbeat a probe can read.

A services process that hangs (an event loop blocked by a stuck call) still has its process and its database
connections, so neither a process check nor a TCP connect notices. Here a task on the same event loop rewrites a
file every ``--interval`` seconds; the liveness probe (``python -m infra.containers.services check``) fails once the
file is older than ``--max-age``: only a loop that keeps turning keeps the pod alive.

It runs the same coroutine as Prefect's CLI (Docket's worker and every enabled Service): this module only adds the
beat beside it; nothing of Prefect is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

DEFAULT_INTERVAL_S = 10.0
# Six missed beats: a busy loop (a long scheduler pass) is not a hung one; the probe's period adds to it.
DEFAULT_MAX_AGE_S = 60.0


def heartbeat_age(path: Path, now: float | None = None) -> float | None:
    """Seconds since the last beat, or None when there has been none."""
    try:
        beat = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - beat


async def beat(path: Path, interval_s: float) -> None:
    """Touch ``path`` every ``interval_s`` seconds, for as long as the event loop runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path.touch()
        await asyncio.sleep(interval_s)


async def run_services(path: Path, interval_s: float) -> None:
    # Prefect's own coroutine behind `prefect server services start` (private: a unit test checks it is there, so
    # an upgrade that moves it fails the suite, not a deployment).
    from prefect.cli._server_utils import _run_all_services

    beating = asyncio.create_task(beat(path, interval_s))
    try:
        await _run_all_services()
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.containers.services",
                                     description="Prefect's background services with a heartbeat file.")
    parser.add_argument("command", choices=["run", "check"])
    parser.add_argument("--heartbeat", type=Path, required=True, help="the file the beat rewrites")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between beats")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_S,
                        help="check: the oldest beat that still counts as alive (seconds)")
    args = parser.parse_args(argv)
    if args.command == "check":
        age = heartbeat_age(args.heartbeat)
        if age is None or age > args.max_age:
            seen = "no heartbeat yet" if age is None else f"last heartbeat {age:.0f} s ago"
            sys.stderr.write(f"services: {seen} (limit {args.max_age:.0f} s): the event loop is stuck\n")
            return 1
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_services(args.heartbeat, args.interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
