"""The backup family on the compose target, from the host: the work runs in the project's backup container.

``invoke backup|backup.list|backup.verify|backup.prune --target compose`` run the same task in the
``backup-scheduler`` container (``docker compose exec``), where the backup code reaches PostgreSQL and the bucket by
their service names: the output streams through and the exit status is the task's.

``invoke restore --target compose`` is split between the two sides, because stopping and starting containers is the
host's job (the Docker socket is never mounted into a container): the data steps run in the container
(``python -m infra.backup.restore STAGE``), the downtime around the swap is driven here (``ComposeDowntime``), in
the one order of ``infra.backup.restore.restore_with_downtime``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infra.backup.drill import DrillBackup
from infra.backup.restore import RestoreReport, Swapped, previous_database, restore_with_downtime
from infra.compose.deploy import (
    HAPROXY_WAIT_S,
    UP_TIMEOUT_S,
    _wait_haproxy,
    compose_command,
    compose_env,
    containers,
    haproxy_command,
    run_compose,
    wait_container_healthy,
)
from infra.compose.project import BACKEND as BACKEND_NETWORK
from infra.compose.project import BACKUP_SCHEDULER, MIGRATE, PYTHON
from infra.config import StackConfig
from infra.containers.engine import docker_client
from infra.errors import UserError
from infra.progress import Progress
from infra.render.haproxy import BACKEND

STOP_TIMEOUT_S = 30


def _require_backup_container(config: StackConfig) -> None:
    found = containers(docker_client(config), config.compose.project).get(BACKUP_SCHEDULER)
    if found is None or found.status != "running":
        state = "does not exist" if found is None else f"is {found.status}"
        raise UserError(f"the backup container ({BACKUP_SCHEDULER}) of compose project "
                        f"{config.compose.project!r} {state}",
                        fix="deploy the stack: invoke deploy --target compose")


def exec_command(config: StackConfig, argv: list[str], tty: bool = False) -> list[str]:
    """``docker compose exec`` of ``argv`` in the backup container (its user, environment and working directory:
    /opt/prefect-stack, where tasks.py is)."""
    return compose_command(config, "exec", *([] if tty else ["-T"]), BACKUP_SCHEDULER, *argv)


def run_task(config: StackConfig, task_argv: list[str]) -> int:
    """``invoke TASK ARGS...`` in the backup container; its output streamed, its exit status returned."""
    _require_backup_container(config)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    command = exec_command(config, ["invoke", *task_argv], tty)
    return subprocess.run(command, env=compose_env(config), check=False).returncode


def capture_task(config: StackConfig, task_argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``invoke TASK ARGS...`` in the backup container, its stdout captured (its progress on stderr streamed)."""
    _require_backup_container(config)
    return subprocess.run(exec_command(config, ["invoke", *task_argv]), env=compose_env(config),
                          stdout=subprocess.PIPE, text=True, check=False)


def run_stage(config: StackConfig, stage: str, *args: str) -> dict[str, Any]:
    """One restore stage in the backup container: its progress streamed (stderr), its JSON result returned."""
    command = exec_command(config, [PYTHON, "-m", "infra.backup.restore", stage, *args])
    result = subprocess.run(command, env=compose_env(config), stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise UserError(f"the restore's {stage} step failed in the {BACKUP_SCHEDULER} container (its error is above)",
                        fix="nothing was swapped unless the swap step ran; fix the cause, then run the restore again")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise UserError(f"the restore's {stage} step printed no result", fix=f"see invoke logs {BACKUP_SCHEDULER}")
    document: dict[str, Any] = json.loads(lines[-1])
    return document


@dataclass
class ContainerRestore:
    """``RestoreData`` whose steps run in the backup container. ``prepare`` there does the checks, the safety
    backup and the restore beside the live database at once, under the container's backup lock; the swap and
    the end run after the host stopped Prefect (the lock is not held across the downtime: the nightly run is at
    backups.schedule, and a manual backup in that minute would only back up the stopped server)."""

    config: StackConfig
    backup_id: str
    prepared: dict[str, Any] = field(default_factory=dict)

    def check(self) -> int:
        self.prepared = run_stage(self.config, "prepare", "--id", self.backup_id)
        return int(self.prepared["objects"])

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def safety_backup(self) -> str | None:
        safety = self.prepared["safety_backup_id"]
        return str(safety) if safety else None

    def restore_beside(self) -> str:
        return str(self.prepared["side"])

    def swap(self, side: str, previous: str) -> Swapped:
        return Swapped(**run_stage(self.config, "swap", "--side", side, "--previous", previous))

    def finish(self, previous: str, keep_previous: bool) -> dict[str, int]:
        flags = ["--keep-previous"] if keep_previous else []
        counts: dict[str, int] = run_stage(self.config, "finish", "--previous", previous, *flags)["row_counts"]
        return counts


@dataclass
class ComposeDowntime:
    """The compose target's downtime: HAProxy's runtime API in its container, Compose for the Prefect services."""

    config: StackConfig
    progress: Progress

    def __post_init__(self) -> None:
        self.client = docker_client(self.config)
        self.project = self.config.compose.project
        self.replicas = [f"api-{i}" for i in range(1, self.config.api.replicas + 1)]
        self.services = [f"services-{i}" for i in range(1, self.config.services_replicas + 1)]

    def _haproxy(self, replica: str, setting: str) -> None:
        haproxy_command(self.client, self.project, f"set server {BACKEND}/{replica} {setting}")

    def stop(self) -> None:
        for replica in self.replicas:
            self._haproxy(replica, "state maint")  # clients get a clean 503 meanwhile
        found = containers(self.client, self.project)
        # The engine's own stop and start, not Compose's: those bring a service's dependencies along (the
        # one-shot migration would run again at every start).
        for service in [*self.replicas, *self.services]:
            found[service].stop(timeout=STOP_TIMEOUT_S)

    def migrate_if_needed(self, swapped: Swapped) -> bool:
        # The replaced database carried the schema of the deployed Prefect (the deploy's migration brought it
        # there); none replaced (a drill destroyed it): migrate to be sure, it changes nothing on a current schema.
        if swapped.replaced_revision is not None and swapped.restored_revision == swapped.replaced_revision:
            return False
        self.progress(f"migrating: backup schema {swapped.restored_revision}, "
                      f"deployed {swapped.replaced_revision or 'unknown'}")
        run_compose(self.config, "up", "--no-deps", "--exit-code-from", MIGRATE, MIGRATE)
        return True

    def _point_haproxy_at(self, replica: str, port: int) -> None:
        """A stopped container gives its address back, and a started one may get another (even a stopped
        neighbour's): HAProxy resolved the service names once, at its start, so it is told the new address."""
        container = containers(self.client, self.project)[replica]
        networks = container.attrs.get("NetworkSettings", {}).get("Networks", {})
        address = next((n.get("IPAddress") for name, n in networks.items() if name.endswith(f"_{BACKEND_NETWORK}")),
                       None)
        if not address:
            raise UserError(f"{replica} has no address on the {BACKEND_NETWORK} network after its start",
                            fix=f"see its log: invoke logs {replica} --target compose")
        self._haproxy(replica, f"addr {address} port {port}")

    def start(self) -> None:
        found = containers(self.client, self.project)
        for service in [*self.replicas, *self.services]:
            found[service].start()
        for service in [*self.replicas, *self.services]:
            wait_container_healthy(self.client, self.project, service, UP_TIMEOUT_S)
        # Done when clients can use it: through the load balancer, whose checks must see every replica up.
        for i, replica in enumerate(self.replicas, start=1):
            self._point_haproxy_at(replica, self.config.api_port(i))
            self._haproxy(replica, "state ready")
        for replica in self.replicas:
            _wait_haproxy(self.client, self.project, replica, "UP", HAPROXY_WAIT_S)


@dataclass(frozen=True)
class ComposeRestore:
    report: RestoreReport
    expected_rows: dict[str, int]


def describe_backup(config: StackConfig, backup_id: str | None, latest: bool) -> dict[str, Any]:
    """The backup a restore would use (id, finished_at, objects, row_counts), read in the backup container."""
    _require_backup_container(config)
    return run_stage(config, "describe", *(["--id", backup_id] if backup_id else []),
                     *(["--latest"] if latest else []))


def restore(config: StackConfig, described: dict[str, Any], progress: Progress,
            keep_previous: bool = False) -> ComposeRestore:
    """Restore the backup ``describe_backup`` found into the running compose stack."""
    data = ContainerRestore(config, str(described["id"]))
    report = restore_with_downtime(str(described["id"]), int(described["objects"]), data,
                                   ComposeDowntime(config, progress), progress, previous_database(config),
                                   keep_previous)
    return ComposeRestore(report, dict(described["row_counts"]))


@dataclass
class ComposeDrillTarget:
    """``invoke drill --target compose``: the backup and its verification run in the backup container, the
    disaster is Prefect stopped by Compose and the database dropped there, the restore is ``restore`` above."""

    config: StackConfig

    def backup_and_verify(self, progress: Progress) -> DrillBackup:
        taken = capture_task(self.config, ["backup", "--json"])
        if taken.returncode != 0:
            raise UserError("the drill's backup failed in the backup container (its error is above)",
                            fix="the database was NOT destroyed; investigate the backup pipeline first")
        backup_id = str(json.loads(taken.stdout.strip().splitlines()[-1])["id"])
        progress(f"backup {backup_id} taken")
        verified = run_task(self.config, ["backup.verify", "--id", backup_id]) == 0
        described = describe_backup(self.config, backup_id, False)
        return DrillBackup(backup_id, datetime.fromisoformat(described["started_at"]), dict(described["row_counts"]),
                           verified, "verified" if verified else "verification failed (its report is above)")

    def destroy_database(self, progress: Progress) -> None:
        ComposeDowntime(self.config, progress).stop()
        run_stage(self.config, "destroy")

    def restore(self, backup_id: str, progress: Progress) -> RestoreReport:
        return restore(self.config, describe_backup(self.config, backup_id, False), progress).report
