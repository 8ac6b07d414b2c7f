"""Point-in-time recovery on Kubernetes: a new CloudNativePG Cluster recovered from the archive, beside the old one.

`invoke restore --target kubernetes --yes` with ``kubernetes.postgres.recovery`` set. Nothing in the cluster
changes until the archive in S3 (not the Backup objects, which a disaster or a previous recovery may have taken)
shows a completed base backup that ended before the target time, and WAL. Then: Prefect's writers stop (the API
and services Deployments to zero); the Cluster named recovery.server_name is created from the archive up to the
target time, and waited for; the rendering whose current Cluster is the new one is deployed, which moves the
Poolers, the apps, the backups, the monitors and the NetworkPolicies to it and runs the migration again; an
on-demand base backup of the new timeline is taken at once. The old Cluster is kept (stopped writers, its volumes,
its archive) until `invoke restore --target kubernetes --cleanup --yes` deletes it, in the foreground.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from infra.backup.barman_archive import base_backup_for
from infra.backup.storage import BackupStore
from infra.config import StackConfig
from infra.errors import UserError
from infra.kubernetes.database import on_demand_backup, recovery_source
from infra.kubernetes.deploy import KubernetesDeployReport, deploy, kubectl_hint
from infra.kubernetes.kubectl import WAIT_GRACE_S, Kubectl, KubectlError
from infra.kubernetes.objects import LABEL_COMPONENT, LABEL_INSTANCE, Names
from infra.kubernetes.render import Rendering
from infra.progress import Progress

CLUSTER = "cluster.postgresql.cnpg.io"
BACKUP = "backup.postgresql.cnpg.io"


@dataclass(frozen=True)
class RecoveryReport:
    cluster: str             # the recovered Cluster, now current
    base_backup: str         # the base backup in the archive it starts from (the newest before the target)
    target_time: str | None
    downtime_s: float        # writers stopped until Prefect served again
    backup: str              # the on-demand base backup of the new timeline
    backup_completed: bool   # False: still running when the wait ended (its name says where to look)
    old_clusters: list[str]  # kept until --cleanup
    deploy: KubernetesDeployReport


def _stack_clusters(kubectl: Kubectl, config: StackConfig) -> list[str]:
    """The names of this stack's Clusters (ours by label: the one rendered now and those rendered before)."""
    try:
        found = kubectl.get(CLUSTER, selector=f"{LABEL_COMPONENT}=database,{LABEL_INSTANCE}={config.kubernetes.name}")
    except KubectlError as exc:
        raise UserError(f"cannot list the CloudNativePG Clusters: {exc.tail(3)}",
                        fix="check that CloudNativePG is installed and kubectl can read clusters") from None
    return sorted(str(c["metadata"]["name"]) for c in found)


def _check_configured(config: StackConfig) -> None:
    recovery = config.kubernetes.postgres.recovery
    if config.kubernetes.postgres.mode != "cnpg" or not recovery.enabled:
        raise UserError("a point-in-time recovery on Kubernetes needs kubernetes.postgres.recovery.enabled (and a "
                        "CloudNativePG Cluster with backups.physical.enabled)",
                        fix="set kubernetes.postgres.recovery: enabled: true, target_time: '<RFC 3339 time>', "
                            "server_name: <a new archive name, e.g. prefect-db-r1>; then run this again")
    names = Names.of(config)
    if names.database == recovery_source(config):
        raise UserError(f"kubernetes.postgres.recovery.server_name {names.database} is the archive it would recover "
                        "from: a new timeline must not be archived into it",
                        fix="choose a new server_name (e.g. the source's name with -r1, -r2)")


def refuse_deploy_before_recovery(config: StackConfig, kubectl: Kubectl | None = None) -> None:
    """A deploy with recovery enabled keeps the recovered Cluster current; it must not be the one that creates it
    (that would skip the archive's check and move Prefect to it while it writes)."""
    recovery = config.kubernetes.postgres.recovery
    if config.kubernetes.postgres.mode != "cnpg" or not recovery.enabled:
        return
    names = Names.of(config)
    kubectl = kubectl or Kubectl.for_config(config)
    kubectl.ensure_reachable()
    if not kubectl.get(CLUSTER, names.database):
        raise UserError(f"kubernetes.postgres.recovery is enabled but Cluster {names.database} does not exist yet: "
                        "a deploy does not recover",
                        fix="run invoke restore --target kubernetes --yes (it checks the archive, stops Prefect, "
                            "recovers, then deploys); or set kubernetes.postgres.recovery.enabled false")


def recover(config: StackConfig, rendering: Rendering, secret_objects: Sequence[dict[str, Any]], progress: Progress,
            store: BackupStore, kubectl: Kubectl | None = None) -> RecoveryReport:
    """Recover into the Cluster ``rendering`` makes current and move Prefect to it (see the module docstring)."""
    _check_configured(config)
    recovery = config.kubernetes.postgres.recovery
    names = Names.of(config)
    source = recovery_source(config)
    hint = kubectl_hint(config)
    kubectl = kubectl or Kubectl.for_config(config)
    kubectl.ensure_reachable()
    # Every check before the first change: the archive is the truth, the cluster only says what exists.
    base = base_backup_for(store, source, recovery.target_time)
    existing = _stack_clusters(kubectl, config)
    if names.database in existing:
        raise UserError(f"Cluster {names.database} exists already: a recovery into it has run (bootstrap acts only "
                        "when a Cluster is created)",
                        fix=f"to recover again, set kubernetes.postgres.recovery.source_server: {names.database} "
                            f"(or the archive to go back to) and a new server_name; to remove it: "
                            f"{hint} delete cluster {names.database} --cascade=foreground")
    timeout = float(config.kubernetes.wait_timeout_s)
    progress(f"recovering Cluster {names.database} beside {', '.join(existing) or 'no live Cluster'} from archive "
             f"{source} (base backup {base.backup_id}, ended {base.end_time.isoformat()}) up to "
             f"{recovery.target_time or 'the last archived WAL'}")
    stopped = time.monotonic()
    for deployment in (names.api, names.services):
        # Writers first: nothing may write to the old Cluster once the recovery has read its archive.
        kubectl.run("scale", f"deployment.apps/{deployment}", "--replicas=0")
    for deployment in (names.api, names.services):
        kubectl.rollout_status(f"deployment.apps/{deployment}", timeout)
    # The new Cluster alone first: until it is ready the Poolers still lead to the old one (a failed recovery is
    # undone by setting recovery.enabled false and deploying).
    [new_cluster] = [m.obj for m in rendering.manifests if m.kind == "Cluster"]
    kubectl.apply([new_cluster])
    progress(f"Prefect stopped; waiting for Cluster {names.database} to replay the archive")
    try:
        kubectl.wait(f"{CLUSTER}/{names.database}", "condition=Ready", timeout)
    except KubectlError as exc:
        raise UserError(f"Cluster {names.database} is not ready after {timeout:.0f} s ({exc.tail(3)}); Prefect is "
                        "stopped and the old Cluster is untouched",
                        fix=f"see why: {hint} describe {CLUSTER}/{names.database}; {hint} get pods -l "
                            f"cnpg.io/cluster={names.database}; to go back: set kubernetes.postgres.recovery.enabled "
                            "false, invoke deploy --target kubernetes, then delete the new Cluster") from None
    # The recovered schema may predate the running image (a target time before an upgrade): the migration Job,
    # complete for the old database, runs again on the recovered one (a no-op when the schema is current).
    migration = f"{LABEL_COMPONENT}=migrate,{LABEL_INSTANCE}={config.kubernetes.name}"
    kubectl.run("delete", "job.batch", f"--selector={migration}", "--ignore-not-found", f"--timeout={timeout:.0f}s")
    report = deploy(config, rendering, secret_objects, progress, kubectl)
    downtime = time.monotonic() - stopped
    backup, completed = take_base_backup(config, kubectl, progress)
    return RecoveryReport(names.database, base.backup_id, recovery.target_time, downtime, backup, completed,
                          [name for name in existing if name != names.database], report)


def take_base_backup(config: StackConfig, kubectl: Kubectl, progress: Progress) -> tuple[str, bool]:
    """An on-demand base backup of the current Cluster, waited for within kubernetes.wait_timeout_s; (its name,
    whether it completed in that time)."""
    names = Names.of(config)
    name = f"{names.database}-{datetime.now(UTC):%Y%m%d%H%M%S}"
    kubectl.apply([on_demand_backup(config, name)])
    progress(f"base backup {name} of the new timeline started")
    try:
        kubectl.wait(f"{BACKUP}/{name}", "jsonpath={.status.phase}=completed", float(config.kubernetes.wait_timeout_s))
    except KubectlError:
        return name, False
    return name, True


def cleanup(config: StackConfig, progress: Progress, kubectl: Kubectl | None = None) -> list[str]:
    """Delete this stack's Clusters other than the current one, in the foreground (their instances and volumes
    gone before this returns); the current one must be ready first. Returns the deleted names."""
    names = Names.of(config)
    hint = kubectl_hint(config)
    kubectl = kubectl or Kubectl.for_config(config)
    kubectl.ensure_reachable()
    existing = _stack_clusters(kubectl, config)
    if names.database not in existing:
        raise UserError(f"the current Cluster {names.database} does not exist: nothing may be deleted in its favour",
                        fix="run the recovery first (invoke restore --target kubernetes --yes), or check "
                            "kubernetes.postgres.recovery")
    timeout = float(config.kubernetes.wait_timeout_s)
    try:
        kubectl.wait(f"{CLUSTER}/{names.database}", "condition=Ready", timeout)
    except KubectlError as exc:
        raise UserError(f"the current Cluster {names.database} is not ready ({exc.tail(3)}): the old ones are kept",
                        fix=f"see why: {hint} describe {CLUSTER}/{names.database}") from None
    old = [name for name in existing if name != names.database]
    for name in old:
        progress(f"deleting Cluster {name} (foreground: its instances and volumes first; its archive in S3 stays)")
        kubectl.run("delete", CLUSTER, name, "--cascade=foreground", "--wait=true", "--ignore-not-found",
                    f"--timeout={timeout:.0f}s", timeout_s=timeout + WAIT_GRACE_S)
    return old
