"""The one interface every target implements, and the registry that chooses it from the configuration.

A target (this host under supervisord, Docker Compose, Kubernetes) is a sibling package with a ``target.py`` whose
class implements ``Target``. Tasks and the shared code ask ``target_for(config)`` and call the interface: what differs
per target is a method of the target, never a comparison of ``config.target`` with a name. An operation a target
does not have raises ``UserError`` naming what to use instead.

The registry names each implementation by module path and imports it on use: a task on the local target never
imports the Docker SDK or the Kubernetes code, and no shared package imports a target package. A fourth target is
one sibling package, one entry here and one section (and name) in the configuration model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from infra.config import StackConfig
from infra.errors import UserError
from infra.logs.read import LogQuery
from infra.progress import Progress
from infra.status import ComponentStatus

if TYPE_CHECKING:
    from infra.alerts import FiringAlert
    from infra.backup.database import DatabaseAccess
    from infra.backup.drill import DrillTarget
    from infra.backup.restore import RestoreReport
    from infra.backup.storage import BackupStore
    from infra.faults.inject import FaultInjector
    from infra.secrets import Secrets

# Target name (config.target) -> "module:class" of its implementation.
REGISTRY: dict[str, str] = {
    "local": "infra.local.target:LocalTarget",
    "compose": "infra.compose.target:ComposeTarget",
    "kubernetes": "infra.kubernetes.target:KubernetesTarget",
}


@dataclass(frozen=True)
class DeployOutcome:
    """What a deploy did, for the task to report: the settled status, what changed, where things are."""

    statuses: list[ComponentStatus]
    summary: str  # one line: what happened and how long it took
    notes: list[str] = field(default_factory=list)  # what was started, recreated, pruned, kept...
    guide: str = ""  # the URLs, credentials and commands an operator needs next
    unhealthy: str = "deployed, but some components are unhealthy (see the table above)"
    notes_before_table: bool = False  # Kubernetes: what was applied, then what runs

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.statuses)


@dataclass(frozen=True)
class DestroyOutcome:
    summary: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreRequest:
    """`invoke restore`'s options, as the operator gave them."""

    backup_id: str | None
    latest: bool
    yes: bool
    keep_previous: bool
    to_time: str | None
    method: str
    cleanup: bool = False  # kubernetes: delete the Clusters a recovery left behind, nothing restored


@dataclass(frozen=True)
class RestoreOutcome:
    """A restore's result. A logical restore carries its report and the rows the backup's manifest promised (the
    task prints and checks them); a physical or cluster recovery carries a summary instead."""

    report: RestoreReport | None = None
    expected_rows: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    print_summary_always: bool = False  # the physical restore prints its JSON or an empty line, as it always has


class Target(Protocol):
    """What every target does. Each method either does it or raises UserError naming the alternative."""

    config: StackConfig

    def check_supported(self, task: str) -> None:
        """Refuse a task (its invoke name: 'stop', 'backup.verify', ...) this target has no form of."""

    # The stack
    def before_deploy(self) -> list[str]:
        """What an operator should read before the deploy starts (which images it will run, ...)."""
    def deploy(self, progress: Progress) -> DeployOutcome: ...
    def status(self) -> list[ComponentStatus]: ...
    def logs(self, query: LogQuery) -> int:
        """Print the records the query chooses (one component, or all merged in time order); exit status."""
    def restart(self, component: str) -> float: ...
    def stop(self) -> bool: ...
    def destroy_refusal(self, volumes: bool) -> UserError:
        """What destroy would delete, said when --yes is missing."""
    def destroy(self, volumes: bool) -> DestroyOutcome: ...
    def render(self, out: Path | None) -> list[str]: ...

    # Clients and observability
    def client_environment(self) -> dict[str, str]: ...
    def backup_environment(self) -> dict[str, str]: ...
    def monitoring_environment(self) -> dict[str, str]: ...
    def firing_alerts(self) -> list[FiringAlert]: ...
    def fault_injector(self) -> FaultInjector:
        """What `invoke fault-drill` hurts the components with (crash, freeze, graceful restart, hold down)."""

    # The backup operations' runner
    def run_elsewhere(self, task_argv: list[str]) -> int | None:
        """Run a backup task where this target runs backup work (exit status), or None: here, in this process."""
    def check_physical(self) -> None:
        """Refuse physical (pgBackRest) backups where this target has none."""
    def physical_backup(self, backup_type: str, progress: Progress) -> dict[str, Any]:
        """Take a physical backup (full, diff or incr): id, method, type, size, database_size, duration_s."""
    def listed_physical_backups(self, store: BackupStore) -> tuple[list[dict[str, Any]], str | None]:
        """Rows for backup.list, and a note to print instead where another tool lists them."""
    def restore(self, request: RestoreRequest, progress: Progress, step: Callable[[str], None]) -> RestoreOutcome:
        """Restore as the request says; refuses without ``request.yes``, saying what it would replace."""
    def drill_target(self, secrets: Secrets) -> DrillTarget: ...
    def database_access(self, secrets: Secrets) -> DatabaseAccess:
        """The superuser's way into PostgreSQL from where the backup code runs on this target."""
    def load_secrets(self, directory: Path) -> Secrets:
        """The stack's secrets as this target lays them out where the backup code runs."""


def target_for(config: StackConfig) -> Target:
    """The configuration's target, its implementation imported on use."""
    try:
        module_name, _, class_name = REGISTRY[config.target].partition(":")
    except KeyError:
        raise UserError(f"unknown target {config.target!r}", fix=f"use one of: {', '.join(REGISTRY)}") from None
    implementation: Callable[[StackConfig], Target] = getattr(importlib.import_module(module_name), class_name)
    return implementation(config)
