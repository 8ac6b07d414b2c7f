"""The background load of `invoke test --stress` really burns CPU, and nothing of it survives the block."""

from __future__ import annotations

import os
import time
from pathlib import Path

from infra.busy_machine import cpu_load


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_the_load_uses_cpu_and_is_gone_afterwards() -> None:
    with cpu_load(1) as pids:
        (pid,) = pids
        deadline = time.monotonic() + 30
        while _cpu_ticks(pid) < 10 and time.monotonic() < deadline:  # 0.1 s of CPU time, polled
            time.sleep(0.05)
        assert _cpu_ticks(pid) >= 10
    assert not os.path.exists(f"/proc/{pid}")


def test_default_is_one_worker_per_core() -> None:
    with cpu_load() as pids:
        assert len(pids) == (os.cpu_count() or 1)
