"""`invoke restore` on the local target: supervisord and HAProxy's socket around the swap.

The data steps and their order are target-independent (``infra.backup.restore``); what is local is the downtime:
HAProxy's runtime socket puts every replica in maintenance, supervisord stops and starts the API replicas and the
services, and the schema is migrated (as the service user) when the backup predates the installed Prefect.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra import console, haproxy_runtime
from infra.backup.catalog import BackupEntry
from infra.backup.restore import DatabaseRestore, RestoreReport, Swapped, previous_database, restore_with_downtime
from infra.backup.storage import BackupStore
from infra.config import StackConfig
from infra.database.admin import run_as_ids
from infra.errors import UserError
from infra.layout import StateLayout
from infra.local.health import api_ready, wait_for_load_balancer
from infra.local.plan import build_plan
from infra.local.supervisor import Supervisor
from infra.progress import Progress
from infra.secrets import Secrets

__all__ = ["RestoreReport", "SupervisorDowntime", "restore_backup"]


def _migrate(config: StackConfig, secrets: Secrets) -> None:
    plan = build_plan(config, secrets)
    uid, gid = run_as_ids(plan.run_as)
    result = subprocess.run(
        [sys.executable, "-m", "infra.database.migrate"],
        env={**plan.migration_env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
             "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True, text=True, check=False, cwd="/", user=uid, group=gid,
        extra_groups=[] if uid is not None else None,
    )
    if result.returncode != 0:
        raise UserError(f"migrating the restored database failed: {result.stderr.strip()[-800:]}",
                        fix="the backup may come from a newer Prefect than the one installed")


@dataclass
class SupervisorDowntime:
    """The local target's downtime: HAProxy's runtime socket and supervisord's API replicas and services."""

    config: StackConfig
    secrets: Secrets
    progress: Progress

    def __post_init__(self) -> None:
        self.layout = StateLayout(self.config.state_dir)
        self.supervisor = Supervisor(self.layout)
        self.programs = [p for p in build_plan(self.config, self.secrets).programs
                         if p.component in ("api", "services")]

    def stop(self) -> None:
        haproxy_runtime.set_all_servers(self.layout.haproxy_socket, "maint")  # clients get a clean 503 meanwhile
        for program in self.programs:
            self.supervisor.stop(program.name)

    def migrate_if_needed(self, swapped: Swapped) -> bool:
        deployed = json.loads(self.layout.deployed_state.read_text()).get("versions", {})
        if swapped.restored_revision == deployed.get("alembic_revision"):
            return False
        self.progress(f"migrating: backup schema {swapped.restored_revision}, "
                      f"installed {deployed.get('alembic_revision')}")
        _migrate(self.config, self.secrets)
        return True

    def start(self) -> None:
        for program in self.programs:
            self.supervisor.start(program.name, wait=False)
        for program in self.programs:
            if program.port is not None:
                console.wait_until(functools.partial(api_ready, program.port), 120,
                                   f"{program.name} after the restore", fix=f"read invoke logs {program.name}")
        # Done when clients can use it: through the load balancer, whose checks must see the replicas up.
        haproxy_runtime.set_all_servers(self.layout.haproxy_socket, "ready")
        wait_for_load_balancer(self.config, self.layout)


def restore_backup(
    config: StackConfig, secrets: Secrets, store: BackupStore, entry: BackupEntry, progress: Progress,
    keep_previous: bool = False,
) -> RestoreReport:
    if not Supervisor(StateLayout(config.state_dir)).is_running():
        raise UserError("the stack is not running", fix="start it first with invoke deploy (an empty database is fine)")
    data = DatabaseRestore(config, secrets, store, entry, progress)
    return restore_with_downtime(entry.manifest.id, len(entry.manifest.objects), data,
                                 SupervisorDowntime(config, secrets, progress), progress,
                                 previous_database(config), keep_previous)
