"""Faults injected into the compose target's containers: SIGKILL of the container's main process is the crash (as
the kernel's OOM killer does it; Docker's restart policy brings the container back, where ``docker kill`` would
count as a manual stop and leave it down), a pause is the freeze (the cgroup freezer stops every process of the
container at once), a stop holds it down (a stopped container is not restarted by its policy)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from docker.models.containers import Container

from infra.compose.deploy import containers
from infra.compose.operate import restart, service_container
from infra.config import StackConfig
from infra.containers.engine import docker_client
from infra.errors import UserError

# Stopping a held-down container: as long as compose's own stop may take.
STOP_TIMEOUT_S = 120


@dataclass
class ComposeFaults:
    config: StackConfig

    def __post_init__(self) -> None:
        # One client for the drill: instance() is polled several times a second while the drill waits.
        self.docker = docker_client(self.config)

    @property
    def stack_name(self) -> str:
        return self.config.compose.project

    def _container(self, component: str) -> Container:
        return service_container(self.config, component, self.docker)

    def components(self) -> list[str]:
        found = containers(self.docker, self.config.compose.project)
        if not found:
            raise UserError(f"no container of compose project {self.config.compose.project!r} exists",
                            fix="deploy it: invoke deploy --target compose")
        return sorted(found)

    def instance(self, component: str) -> str:
        container = self._container(component)
        container.reload()
        state = container.attrs.get("State", {})
        # A restart keeps the container's id; its process and start time change.
        return f"{state.get('Pid')}@{state.get('StartedAt')}" if state.get("Running") else ""

    def crash(self, component: str) -> None:
        container = self._container(component)
        container.reload()
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        try:
            if pid <= 0:
                raise ProcessLookupError(pid)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            raise UserError(f"cannot crash {component}: its process ({pid}) is not one this host can signal (a remote "
                            "Docker engine, or not root)",
                            fix="run the drill on the Docker host as root, or drill other faults: --fault freeze "
                                "--fault restart") from None

    def freeze(self, component: str) -> None:
        self._container(component).pause()

    def thaw(self, component: str) -> None:
        self._container(component).unpause()

    def restart(self, component: str) -> None:
        restart(self.config, component)

    def hold_down(self, component: str) -> None:
        self._container(component).stop(timeout=STOP_TIMEOUT_S)

    def release(self, component: str) -> None:
        self._container(component).start()
