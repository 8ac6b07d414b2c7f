"""The Kubernetes target behind the one Target interface: the stack across a cluster's nodes, with CloudNativePG.

Tasks that have no Kubernetes form (stop, alerts, drill, the backup family but backup.list) say so and name what
does it there: kubectl and the operators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from infra.alerts import FiringAlert
from infra.backup.database import DatabaseAccess
from infra.backup.drill import DrillTarget
from infra.backup.environment import backup_environment
from infra.backup.storage import BackupStore
from infra.config import REPO_ROOT, StackConfig
from infra.errors import UserError
from infra.faults.inject import FaultInjector
from infra.kubernetes import operate
from infra.kubernetes.database import database_endpoints
from infra.kubernetes.prefect import public_api_url
from infra.kubernetes.render import KubernetesImages
from infra.logs.read import LogQuery
from infra.progress import Progress
from infra.secrets import Secrets, ensure_secrets, load_secrets, mounted_secrets
from infra.status import ComponentStatus
from infra.targets import DeployOutcome, DestroyOutcome, RestoreOutcome, RestoreRequest, Target

# The tasks with a Kubernetes form; every other one is refused with what to use instead.
TASKS = frozenset({"deploy", "status", "logs", "restart", "destroy", "env", "render", "backup.list", "restore"})


def _no_kubernetes_form() -> UserError:
    return UserError("this task has no kubernetes form: on Kubernetes, kubectl and the operators do it",
                     fix="use kubectl (docs/kubernetes.md, 'Operating it', maps each task), or "
                         "invoke deploy|status|logs|restart|destroy --target kubernetes")


@dataclass
class KubernetesTarget:
    config: StackConfig

    def check_supported(self, task: str) -> None:
        if task not in TASKS:
            raise _no_kubernetes_form()

    @cached_property
    def images(self) -> KubernetesImages:
        """The image references deploy, restore and render use; computed once (they hash the project's code)."""
        from infra.kubernetes.render import kubernetes_images

        return kubernetes_images(self.config)

    # The stack

    def before_deploy(self) -> list[str]:
        config, images = self.config, self.images
        return [f"images: {images.prefect}, {images.system} (invoke images.build; pushed to "
                f"{config.kubernetes.image_registry or 'the nodes (kubernetes.image_registry is null)'})"]

    def deploy(self, progress: Progress) -> DeployOutcome:
        from infra.kubernetes import deploy as kubernetes_deploy
        from infra.kubernetes.recovery import refuse_deploy_before_recovery
        from infra.kubernetes.render import render
        from infra.kubernetes.secrets import secret_objects

        config = self.config
        refuse_deploy_before_recovery(config)
        secrets = ensure_secrets(config.state_dir / "secrets")
        report = kubernetes_deploy.deploy(config, render(config, self.images), secret_objects(config, secrets),
                                          progress)
        notes = [f"{phase}: {len(applied)} objects applied" for phase, applied in report.applied.items()]
        if report.pruned:
            notes.append(f"pruned (no longer rendered): {', '.join(report.pruned)}")
        notes += [f"kept, holds data (delete it yourself if you mean it): {kept}" for kept in report.kept]
        # The work pools' provisioning Job: created, put back, left alone (infra/work_pools/provision.py).
        notes += [f"{job}: {line}" for job, lines in report.job_reports.items() for line in lines]
        edges = [edge for edge, on in (("Ingress", config.kubernetes.ingress.enabled),
                                       ("HTTPRoute", config.kubernetes.gateway.enabled)) if on]
        guide = (
            f"\n  Prefect API   {public_api_url(config)}  ({' and '.join(edges) or 'not exposed'}; "
            f"kubectl -n {config.kubernetes.namespace} port-forward svc/{config.kubernetes.name}-api 4200 otherwise)\n"
            f"  Credentials   basic auth 'admin' and the password in {config.state_dir / 'secrets' / 'prefect_auth'}\n"
            f"  Operate       invoke status|logs COMPONENT|restart COMPONENT --target kubernetes\n"
        )
        return DeployOutcome(operate.status(config),
                             f"deployed to namespace {config.kubernetes.namespace} on Kubernetes "
                             f"{report.server_version} in {report.elapsed_s:.1f}s",
                             notes, guide, notes_before_table=True,
                             unhealthy="deployed, but some components are not ready (see the table above)")

    def status(self) -> list[ComponentStatus]:
        return operate.status(self.config)

    def logs(self, query: LogQuery) -> int:
        return operate.read_logs(self.config, query)

    def restart(self, component: str) -> float:
        return operate.restart(self.config, component)

    def fault_injector(self) -> FaultInjector:
        # Not built yet for Kubernetes (pod deletes and a CloudNativePG switchover through kubectl).
        raise _no_kubernetes_form()

    def stop(self) -> bool:
        raise _no_kubernetes_form()

    def destroy_refusal(self, volumes: bool) -> UserError:
        config = self.config
        keep = "the database Cluster and every volume" if volumes else "every object but the database and volumes"
        return UserError(f"this deletes {keep} of stack {config.kubernetes.name} in namespace "
                         f"{config.kubernetes.namespace}",
                         fix=f"take a backup first, then run: invoke destroy --yes --target kubernetes"
                             f"{' --volumes' if volumes else ''}")

    def destroy(self, volumes: bool) -> DestroyOutcome:
        destroyed = operate.destroy(self.config, delete_volumes=volumes)
        return DestroyOutcome(
            f"destroyed {len(destroyed.removed)} objects in namespace {self.config.kubernetes.namespace}",
            [f"kept (holds data; invoke destroy --yes --volumes deletes it): {kept}" for kept in destroyed.kept])

    def render(self, out: Path | None) -> list[str]:
        from infra.kubernetes.render import reference_rendering, write_tree
        from infra.kubernetes.render import render as render_manifests

        config = self.config
        rendering = render_manifests(config, self.images) if out else reference_rendering(config)
        directory = out or REPO_ROOT / "k8s"
        written = write_tree(rendering, directory)
        return [f"rendered {len(rendering.manifests)} objects ({len(written)} files) into {directory}; "
                f"build them with: kubectl kustomize {directory / 'overlays' / 'example'}",
                "no Secret is rendered; the manifests reference these, made at deploy (by invoke deploy, "
                "CloudNativePG or cert-manager): " + ", ".join(sorted(rendering.external_secrets))]

    # Clients and observability

    def client_environment(self) -> dict[str, str]:
        """Through the Ingress, whose certificate is a public CA's (cert-manager) or the operator's own."""
        secrets = load_secrets(self.config.state_dir / "secrets")
        return {"PREFECT_API_URL": public_api_url(self.config), "PREFECT_API_AUTH_STRING": secrets.get("prefect_auth")}

    def backup_environment(self) -> dict[str, str]:
        return backup_environment(self.config)

    def monitoring_environment(self) -> dict[str, str]:
        raise UserError("on Kubernetes, Prometheus and Alertmanager are kube-prometheus-stack's, not the stack's",
                        fix=f"kubectl -n {self.config.kubernetes.prometheus_namespace} port-forward "
                            "svc/kube-prometheus-stack-prometheus 9090")

    def firing_alerts(self) -> list[FiringAlert]:
        raise _no_kubernetes_form()

    # The backup operations: the CronJob runs them in the cluster; here only listing and recovery

    def run_elsewhere(self, task_argv: list[str]) -> int | None:
        return None

    def check_physical(self) -> None:
        """Physical backups are CloudNativePG's (the Barman Cloud plugin)."""

    def physical_backup(self, backup_type: str, progress: Progress) -> dict[str, Any]:
        raise _no_kubernetes_form()

    def listed_physical_backups(self, store: BackupStore) -> tuple[list[dict[str, Any]], str | None]:
        if not self.config.backups.physical.enabled:
            return [], None
        # CloudNativePG's base backups are Backup objects of the cluster: kubectl lists them, not pgBackRest.
        return [], f"physical backups: kubectl -n {self.config.kubernetes.namespace} get backups.postgresql.cnpg.io"

    def restore(self, request: RestoreRequest, progress: Progress,
                step: Callable[[str], None]) -> RestoreOutcome:
        """Point-in-time recovery of the CloudNativePG Cluster into a new one, driven by kubernetes.postgres.recovery;
        with ``cleanup``, the deletion of the old Cluster it kept."""
        from infra.kubernetes.recovery import cleanup, recover
        from infra.kubernetes.render import render
        from infra.kubernetes.secrets import secret_objects

        config = self.config
        recovery = config.kubernetes.postgres.recovery
        if request.to_time is not None or request.backup_id is not None:
            raise UserError("on Kubernetes the recovery target is configuration, not an option: every later deploy "
                            "must render the Cluster the same way",
                            fix="set kubernetes.postgres.recovery.target_time (and enabled, server_name), then run "
                                "invoke restore --target kubernetes --yes")
        if request.cleanup:
            if not request.yes:
                raise UserError("this deletes every database Cluster of the stack but the current one, with its "
                                "volumes (their archives in S3 stay)",
                                fix="run again with --yes once Prefect works on the recovered Cluster")
            deleted = cleanup(config, progress)
            return RestoreOutcome(summary={"deleted": deleted},
                                  message=f"deleted {', '.join(deleted)}" if deleted else "no old Cluster to delete")
        if not request.yes:
            raise UserError(f"this stops Prefect, creates the Cluster {recovery.server_name} from the archive up to "
                            f"{recovery.target_time or 'the last archived WAL'} and moves Prefect to it; the live "
                            "Cluster is kept (stopped being used) until --cleanup",
                            fix="run again with --yes (the archive itself is kept, so this can be repeated)")
        secrets = ensure_secrets(config.state_dir / "secrets")
        rendering = render(config, self.images)
        done = recover(config, rendering, secret_objects(config, secrets), progress,
                       BackupStore.from_config(config, secrets))
        summary = {"cluster": done.cluster, "base_backup": done.base_backup, "target_time": done.target_time,
                   "downtime_s": round(done.downtime_s, 2), "backup": done.backup,
                   "backup_completed": done.backup_completed, "old_clusters": done.old_clusters,
                   "pruned": done.deploy.pruned}
        backup = (f"base backup {done.backup} of the new timeline taken" if done.backup_completed else
                  f"base backup {done.backup} still running (kubectl -n {config.kubernetes.namespace} get "
                  f"backups.postgresql.cnpg.io {done.backup})")
        old = (f"; kept {', '.join(done.old_clusters)}: once Prefect works, delete with "
               "invoke restore --target kubernetes --cleanup --yes" if done.old_clusters else "")
        return RestoreOutcome(summary=summary,
                              message=f"recovered Cluster {done.cluster} to "
                                      f"{done.target_time or 'the last archived WAL'} from base backup "
                                      f"{done.base_backup}; Prefect was stopped for {done.downtime_s:.0f}s; "
                                      f"{backup}{old}")

    def drill_target(self, secrets: Secrets) -> DrillTarget:
        raise _no_kubernetes_form()

    def database_access(self, secrets: Secrets) -> DatabaseAccess:
        """From the CronJob's pod: the Cluster's primary (or the external server) over TLS, the server verified
        against the Cluster's CA as the apps do, as the superuser."""
        config = self.config
        endpoints = database_endpoints(config)
        host, port = endpoints.direct
        return DatabaseAccess(host=host, port=port, user="postgres", dbname=config.postgres.database,
                              bin_dir=config.postgres.bin_dir, password=secrets.get("postgres_superuser"),
                              sslmode=endpoints.sslmode, sslrootcert=endpoints.root_cert)

    def load_secrets(self, directory: Path) -> Secrets:
        """In the CronJob the secrets are a mounted Secret volume (read-only, group-readable by design)."""
        return mounted_secrets(directory)


def conforming(config: StackConfig) -> Target:
    """Type-checked against the interface: mypy fails here if KubernetesTarget drifts from Target."""
    return KubernetesTarget(config)
