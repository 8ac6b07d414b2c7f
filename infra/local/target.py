"""The local target behind the one Target interface: real processes on this host under supervisord."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.api_client import trusted_ca_file
from infra.backup.catalog import find_backup
from infra.backup.database import DatabaseAccess, local_database
from infra.backup.drill import DrillTarget
from infra.backup.storage import BackupStore
from infra.config import StackConfig
from infra.errors import UserError
from infra.faults.inject import FaultInjector
from infra.host_stack import HostStack
from infra.layout import StateLayout
from infra.local import operate
from infra.local.deploy import deploy, restart_component
from infra.local.drill import LocalDrillTarget
from infra.local.faults import LocalFaults
from infra.local.pgbackrest import PhysicalBackup, info, physical_backup, physical_restore
from infra.local.restore import restore_backup
from infra.local.workers import flow_code_dir
from infra.logs.read import LogQuery, read_local
from infra.progress import Progress
from infra.secrets import Secrets, load_secrets
from infra.status import ComponentStatus
from infra.targets import DeployOutcome, DestroyOutcome, RestoreOutcome, RestoreRequest, Target

SETTLE_TIMEOUT_S = 30


@dataclass
class LocalTarget(HostStack):
    """The local target: supervisord's programs on this host."""

    def check_supported(self, task: str) -> None:
        """Every task has a local form."""

    # The stack

    def deploy(self, progress: Progress) -> DeployOutcome:
        config = self.config
        plan, report = deploy(config)
        # The verdict is the stack's state once settled, within a bound.
        statuses = operate.settle(config, SETTLE_TIMEOUT_S)
        notes = [f"{label}: {', '.join(names)}" for label, names in (
            ("started", report.started), ("restarted", report.restarted), ("reloaded", report.reloaded),
            ("removed", report.removed)) if names]
        notes += report.notes
        summary = (f"nothing changed; nothing restarted ({report.elapsed_s:.1f}s)" if report.changed_nothing
                   else f"deployed in {report.elapsed_s:.1f}s")
        lb, layout = config.load_balancer, plan.layout
        ca_file = trusted_ca_file(config)
        trust = f"  TLS           clients trust {ca_file} (exported by invoke env)\n" if ca_file else ""
        stats_scheme = "https" if config.stats_tls_enabled else "http"
        guide = (
            f"\n  Prefect API   {config.api_url}  (UI: {config.api_url.removesuffix('/api')})\n{trust}"
            f"  Credentials   eval \"$(invoke env)\"   (basic auth; secrets in {layout.secrets}, mode 0600)\n"
            f"  HAProxy stats {stats_scheme}://{lb.bind_address}:{lb.stats_port}/stats  (user admin, password in "
            f"{layout.secrets / 'haproxy_stats'}); Prometheus: /metrics\n"
            f"  State         {layout.root}  (data {layout.data}, logs {layout.logs})\n"
            f"  Operate       invoke status | invoke logs COMPONENT | invoke stop\n"
        )
        if config.workers.enabled:
            pools = ", ".join(pool.name for pool in config.workers.pools) or "none"
            guide += (f"  Flow code     {flow_code_dir(config)}  (the workers' working directory; work pools: "
                      f"{pools})\n")
        return DeployOutcome(statuses, summary, notes, guide)

    def status(self) -> list[ComponentStatus]:
        return operate.status(self.config)

    def logs(self, query: LogQuery) -> int:
        return read_local(operate.log_files(self.config, query.component), query)

    def restart(self, component: str) -> float:
        return restart_component(self.config, component)

    def fault_injector(self) -> FaultInjector:
        return LocalFaults(self.config)

    def stop(self) -> bool:
        return operate.stop(self.config)

    def destroy(self, volumes: bool) -> DestroyOutcome:
        return DestroyOutcome(f"destroyed: {operate.destroy(self.config)} removed")

    def render(self, out: Path | None) -> list[str]:
        raise UserError("cannot render target 'local'", fix="use --target compose or --target kubernetes")

    # The backup operations: in this process, next to the database

    def run_elsewhere(self, task_argv: list[str]) -> int | None:
        return None

    def check_physical(self) -> None:
        """pgBackRest runs on this host."""

    def physical_backup(self, backup_type: str, progress: Progress) -> dict[str, Any]:
        taken = physical_backup(self.config, backup_type, progress)
        return {"id": taken.label, "method": "physical", "type": taken.type, "size": taken.size,
                "database_size": taken.database_size, "duration_s": taken.stopped - taken.started}

    def listed_physical_backups(self, store: BackupStore) -> tuple[list[dict[str, Any]], str | None]:
        if not self.config.backups.physical.enabled:
            return [], None
        rows = []
        for raw in info(self.config):
            taken = PhysicalBackup.from_info(raw)
            rows.append({
                "id": taken.label, "method": "physical", "type": taken.type,
                "time": datetime.fromtimestamp(taken.stopped, UTC).isoformat(), "size": taken.size,
                "duration_s": taken.stopped - taken.started, "verified": "checksummed by pgBackRest",
                "location": f"{store.location}/physical",
            })
        return rows, None

    def restore(self, request: RestoreRequest, progress: Progress,
                step: Callable[[str], None]) -> RestoreOutcome:
        config = self.config
        self.refuse_cleanup(request)
        secrets = load_secrets(StateLayout(config.state_dir).secrets)
        if request.to_time is not None or request.method == "physical":
            if not request.yes:
                raise UserError(f"this replaces the live PostgreSQL cluster with the physical backup "
                                f"({request.to_time or request.backup_id or 'latest'})",
                                fix="run again with --yes (a safety backup of the current database is taken first)")
            step(f"physical restore to {request.to_time or request.backup_id or 'the latest WAL'}")
            physical = physical_restore(config, secrets, progress, to_time=request.to_time, label=request.backup_id)
            summary = {"target": physical.target, "safety_backup_id": physical.safety_backup_id,
                       "downtime_s": round(physical.downtime_s, 2), "recovery_time_s": round(physical.total_s, 2),
                       "rows": sum(physical.row_counts.values())}
            return RestoreOutcome(summary=summary, print_summary_always=True,
                                  message=f"restored to {physical.target} in {physical.total_s:.1f}s "
                                          f"(API down {physical.downtime_s:.1f}s)")
        store = BackupStore.from_config(config, secrets)
        entry = find_backup(store, request.backup_id, request.latest)
        if not request.yes:
            raise UserError(f"this replaces the live Prefect database with backup {entry.manifest.id} "
                            f"({entry.manifest.finished_at:%Y-%m-%d %H:%M:%S} UTC)",
                            fix="run again with --yes (a safety backup of the current database is taken first)")
        step(f"restoring backup {entry.manifest.id} from {store.location}")
        report = restore_backup(config, secrets, store, entry, progress, request.keep_previous)
        return RestoreOutcome(report=report, expected_rows=entry.manifest.row_counts)

    def drill_target(self, secrets: Secrets) -> DrillTarget:
        return LocalDrillTarget(self.config, secrets)

    def database_access(self, secrets: Secrets) -> DatabaseAccess:
        return local_database(self.config)




def conforming(config: StackConfig) -> Target:
    """Type-checked against the interface: mypy fails here if LocalTarget drifts from Target."""
    return LocalTarget(config)
