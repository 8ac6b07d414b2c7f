"""The compose target behind the one Target interface: the stack in containers on one Docker host.

The backup tasks run where the database is: the host hands each one to the project's backup container, where the
same task runs again (``run_elsewhere``); a restore's downtime is driven from the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.backup.database import DatabaseAccess
from infra.backup.drill import DrillTarget
from infra.backup.storage import BackupStore
from infra.compose import backups, operate
from infra.compose import deploy as compose_deploy
from infra.compose.faults import ComposeFaults
from infra.config import COMPOSE_POSTGRES_SERVICE, REPO_ROOT, StackConfig, in_project_container
from infra.errors import UserError
from infra.faults.inject import FaultInjector
from infra.host_stack import HostStack
from infra.logs.read import LogQuery
from infra.progress import Progress
from infra.secrets import Secrets
from infra.status import ComponentStatus
from infra.targets import DeployOutcome, DestroyOutcome, RestoreOutcome, RestoreRequest, Target

SETTLE_TIMEOUT_S = 30


def _physical_on_compose() -> UserError:
    return UserError("physical (pgBackRest) backups and restores are not supported on the compose target",
                     fix="use logical backups there (--method logical, the default), or the local target for "
                         "pgBackRest and point-in-time recovery")


@dataclass
class ComposeTarget(HostStack):
    """The compose target: one Compose project on one Docker engine."""

    def check_supported(self, task: str) -> None:
        """Every task has a compose form."""

    # The stack

    def deploy(self, progress: Progress) -> DeployOutcome:
        config = self.config
        _, report = compose_deploy.deploy(config, progress)
        statuses = operate.settle(config, SETTLE_TIMEOUT_S)
        notes = [f"{label}: {', '.join(names)}" for label, names in (
            ("created", report.created), ("recreated", report.recreated), ("replaced one at a time", report.rolled),
            ("removed", report.removed)) if names]
        notes += report.provisioned
        summary = (f"nothing changed; no container recreated ({report.elapsed_s:.1f}s)" if report.changed_nothing
                   else f"deployed in {report.elapsed_s:.1f}s")
        directory = compose_deploy.project_dir(config)
        guide = (
            f"\n  Prefect API   {config.api_url}  (UI: {config.api_url.removesuffix('/api')})\n"
            f"  Credentials   eval \"$(invoke env --target compose)\"   (secrets in {config.state_dir / 'secrets'}, "
            f"0600)\n"
            f"  Project       {config.compose.project} (compose file {directory / 'compose.yaml'})\n"
            f"  Operate       invoke status|logs SERVICE|restart SERVICE|stop --target compose\n"
        )
        return DeployOutcome(statuses, summary, notes, guide,
                             unhealthy="deployed, but some services are unhealthy (see the table above)")

    def status(self) -> list[ComponentStatus]:
        return operate.status(self.config)

    def logs(self, query: LogQuery) -> int:
        return operate.logs(self.config, query)

    def restart(self, component: str) -> float:
        return operate.restart(self.config, component)

    def fault_injector(self) -> FaultInjector:
        return ComposeFaults(self.config)

    def stop(self) -> bool:
        return operate.stop(self.config)

    def destroy(self, volumes: bool) -> DestroyOutcome:
        gone = operate.destroy(self.config)
        return DestroyOutcome(f"destroyed compose project {self.config.compose.project}: {len(gone)} objects removed",
                              gone)

    def render(self, out: Path | None) -> list[str]:
        from infra.compose.project import reference_rendering, write_reference

        directory = out or REPO_ROOT / "compose"
        written = write_reference(reference_rendering(self.config), directory)
        return [f"rendered {len(written)} files into {directory} (secrets are generated at deploy, not here)"]

    # The backup operations: in the backup container

    def run_elsewhere(self, task_argv: list[str]) -> int | None:
        """From the host, the task runs again in the backup container; in there, it runs in that process."""
        return None if in_project_container() else backups.run_task(self.config, task_argv)

    def check_physical(self) -> None:
        raise _physical_on_compose()

    def physical_backup(self, backup_type: str, progress: Progress) -> dict[str, Any]:
        raise _physical_on_compose()

    def listed_physical_backups(self, store: BackupStore) -> tuple[list[dict[str, Any]], str | None]:
        return [], None

    def restore(self, request: RestoreRequest, progress: Progress,
                step: Callable[[str], None]) -> RestoreOutcome:
        self.refuse_cleanup(request)
        if request.to_time is not None or request.method == "physical":
            raise _physical_on_compose()
        if in_project_container():
            raise UserError("a restore stops and starts containers: it runs from the host, not in a container",
                            fix="run on the host: invoke restore --target compose")
        described = backups.describe_backup(self.config, request.backup_id, request.latest)
        if not request.yes:
            raise UserError(f"this replaces the live Prefect database with backup {described['id']} "
                            f"({described['finished_at'][:19].replace('T', ' ')} UTC)",
                            fix="run again with --yes (a safety backup of the current database is taken first)")
        step(f"restoring backup {described['id']} from {described['location']}")
        done = backups.restore(self.config, described, progress, request.keep_previous)
        return RestoreOutcome(report=done.report, expected_rows=done.expected_rows)

    def drill_target(self, secrets: Secrets) -> DrillTarget:
        return backups.ComposeDrillTarget(self.config)

    def database_access(self, secrets: Secrets) -> DatabaseAccess:
        """TCP to the ``postgres`` service with the superuser's password (pg_hba.conf allows SCRAM from the
        project's networks), from the backup container."""
        config = self.config
        return DatabaseAccess(host=COMPOSE_POSTGRES_SERVICE, port=config.postgres.port, user="postgres",
                              dbname=config.postgres.database, bin_dir=config.postgres.bin_dir,
                              password=secrets.get("postgres_superuser"))




def conforming(config: StackConfig) -> Target:
    """Type-checked against the interface: mypy fails here if ComposeTarget drifts from Target."""
    return ComposeTarget(config)
