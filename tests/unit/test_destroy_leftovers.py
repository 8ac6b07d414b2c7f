"""destroy leaves nothing of the deployment running, and nothing else is touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infra.local.operate import _kill_leftovers

SLEEP = "import time; time.sleep(120)"


def test_the_stacks_own_leftovers_are_killed_and_an_operators_process_is_not(tmp_path: Path) -> None:
    root = tmp_path / "state"
    # argv[0] is what /proc shows as the program: a stand-in named pgbackrest, as PostgreSQL's archiver runs it.
    leftover = subprocess.Popen(["pgbackrest", "-c", SLEEP, f"--config={root}/etc/pgbackrest.conf"],
                                executable=sys.executable)
    operators = subprocess.Popen(["tail", "-c", SLEEP, f"{root}/log/postgres.log"], executable=sys.executable)
    elsewhere = subprocess.Popen(["pgbackrest", "-c", SLEEP, f"--config={tmp_path}/other/etc/pgbackrest.conf"],
                                 executable=sys.executable)
    try:
        killed = _kill_leftovers(root)
        assert killed == [leftover.pid]
        assert leftover.wait(timeout=30) != 0
        assert operators.poll() is None and elsewhere.poll() is None
    finally:
        for process in (leftover, operators, elsewhere):
            process.kill()
            process.wait()


def test_a_flow_run_of_the_stacks_workers_is_killed_and_one_of_another_deployment_is_not(tmp_path: Path) -> None:
    """Flow runs live in their own sessions: supervisord's stop of a worker's group does not reach them."""
    root = tmp_path / "state"

    def flow_run(state: Path) -> subprocess.Popen[bytes]:
        env = {"TMPDIR": str(state / "home" / "tmp"), "PREFECT__FLOW_RUN_ID": "0b7c5f0e-0000-4000-8000-000000000000"}
        return subprocess.Popen([sys.executable, "-c", SLEEP], env=env)

    ours, other = flow_run(root), flow_run(tmp_path / "other")
    try:
        assert _kill_leftovers(root) == [ours.pid]
        assert ours.wait(timeout=30) != 0
        assert other.poll() is None
    finally:
        for process in (ours, other):
            process.kill()
            process.wait()
