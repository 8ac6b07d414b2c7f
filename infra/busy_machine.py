"""A busy machine on demand: background processes that keep every core at 100 % while the test suite runs.

CI and operators' hosts are rarely idle, and a test that only passes on an idle machine is a flaky test. The
load is started and stopped by the caller (``invoke test --stress``); nothing outlives the context, also on
failure or interruption.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# A pure-Python spin: one process holds one core, at the same priority as the tests.
_SPIN = "while True:\n    pass\n"


@contextmanager
def cpu_load(workers: int | None = None) -> Iterator[list[int]]:
    """Keep ``workers`` cores (default: all of them) busy until the block ends; yields the load's pids."""
    count = workers if workers is not None else (os.cpu_count() or 1)
    processes = [
        subprocess.Popen([sys.executable, "-c", _SPIN], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield [p.pid for p in processes]
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()
