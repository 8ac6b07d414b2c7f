"""The drill's local form: the backup jobs in this process, supervisord for Prefect's processes."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from infra.backup.catalog import find_backup
from infra.backup.database import database_access
from infra.backup.drill import DrillBackup
from infra.backup.jobs import backup_job, verify_job
from infra.backup.restore import RestoreReport
from infra.backup.storage import BackupStore
from infra.config import StackConfig
from infra.layout import StateLayout
from infra.local.plan import build_plan
from infra.local.restore import restore_backup
from infra.local.supervisor import Supervisor
from infra.progress import Progress
from infra.secrets import Secrets


@dataclass
class LocalDrillTarget:
    """The local target: the jobs in this process, supervisord for Prefect's processes."""

    config: StackConfig
    secrets: Secrets

    def backup_and_verify(self, progress: Progress) -> DrillBackup:
        manifest = backup_job(self.config, self.secrets, progress)
        progress(f"backup {manifest.id} taken")
        _, verdict = verify_job(self.config, self.secrets, manifest.id, progress)
        return DrillBackup(manifest.id, manifest.started_at, manifest.row_counts, verdict.ok, verdict.detail)

    def destroy_database(self, progress: Progress) -> None:
        config = self.config
        supervisor = Supervisor(StateLayout(config.state_dir))
        for program in build_plan(config, self.secrets).programs:
            if program.component in ("api", "services"):
                supervisor.stop(program.name)
        with database_access(config, self.secrets).connect("postgres") as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(config.postgres.database)))

    def restore(self, backup_id: str, progress: Progress) -> RestoreReport:
        store = BackupStore.from_config(self.config, self.secrets)
        return restore_backup(self.config, self.secrets, store, find_backup(store, backup_id, False), progress)
