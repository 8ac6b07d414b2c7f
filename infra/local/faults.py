"""Faults injected into the local target's programs: signals to the processes supervisord runs, and supervisord's
own stop and start to hold a component down."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from infra.config import StackConfig
from infra.errors import UserError
from infra.local.deploy import restart_component
from infra.local.operate import deployed_plan
from infra.local.supervisor import Supervisor


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The process and every process below it (PostgreSQL's backends, a worker's flow runs), parents first."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The field after the parenthesised command name (which may hold spaces) is the state, then the ppid.
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue += children.get(current, [])
    return found


def _signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, signum)


@dataclass
class LocalFaults:
    config: StackConfig

    def __post_init__(self) -> None:
        self.plan, self.layout = deployed_plan(self.config)
        self.supervisor = Supervisor(self.layout)
        if not self.supervisor.is_running():
            raise UserError("the stack is not running", fix="start it with invoke deploy")
        self._frozen: dict[str, list[int]] = {}

    @property
    def stack_name(self) -> str:
        return str(self.layout.root)

    def components(self) -> list[str]:
        return [program.name for program in self.plan.programs]

    def _pid(self, component: str) -> int:
        info = self.supervisor.processes().get(component)
        if info is None or not info.running:
            raise UserError(f"{component} is not running, so it cannot be hurt",
                            fix="bring the stack back first: invoke deploy, then invoke status")
        return info.pid

    def instance(self, component: str) -> str:
        info = self.supervisor.processes().get(component)
        return str(info.pid) if info is not None and info.running else ""

    def crash(self, component: str) -> None:
        # The main process only, as a crash takes it: PostgreSQL's backends then see their postmaster die.
        os.kill(self._pid(component), signal.SIGKILL)

    def freeze(self, component: str) -> None:
        pids = descendants(self._pid(component))
        self._frozen[component] = pids
        _signal_all(pids, signal.SIGSTOP)

    def thaw(self, component: str) -> None:
        _signal_all(self._frozen.pop(component, []), signal.SIGCONT)

    def restart(self, component: str) -> None:
        restart_component(self.config, component)

    def hold_down(self, component: str) -> None:
        self.supervisor.stop(component)

    def release(self, component: str) -> None:
        self.supervisor.start(component, wait=False)
