"""Point-in-time recovery on Kubernetes: the live CloudNativePG Cluster replaced by one recovered from its archive.

`invoke restore --target kubernetes --yes` with ``kubernetes.postgres.recovery`` set: it checks that the archive
holds a completed base backup, stops Prefect's writers (the API and services Deployments to zero), deletes the live
Cluster (its volumes go with it; its archive in S3 stays whole, so nothing archived is lost and this recovery
can be repeated with another target time) and the completed migration Job, then deploys: the Cluster is
re-created from the archive up to the target time, the migration runs again on it (the recovered schema may
predate the image), and the Poolers and Prefect come back as on any deploy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from infra.config import StackConfig
from infra.errors import UserError
from infra.kubernetes.deploy import KubernetesDeployReport, deploy, kubectl_hint
from infra.kubernetes.kubectl import Kubectl, KubectlError
from infra.kubernetes.objects import LABEL_COMPONENT, LABEL_INSTANCE, Names
from infra.kubernetes.render import Rendering
from infra.progress import Progress

CLUSTER = "cluster.postgresql.cnpg.io"
BACKUP = "backup.postgresql.cnpg.io"
CNPG_CLUSTER_LABEL = "cnpg.io/cluster"


@dataclass(frozen=True)
class RecoveryReport:
    base_backup: str  # the newest completed base backup the archive holds
    target_time: str | None
    downtime_s: float  # writers stopped until Prefect served again
    deploy: KubernetesDeployReport


def _completed_backups(kubectl: Kubectl, cluster: str) -> list[dict[str, Any]]:
    try:
        backups = kubectl.get(BACKUP, selector=f"{CNPG_CLUSTER_LABEL}={cluster}")
    except KubectlError as exc:
        raise UserError(f"cannot list the base backups of Cluster {cluster}: {exc.tail(3)}",
                        fix="check that CloudNativePG is installed and kubectl can read backups") from None
    done = [b for b in backups if b.get("status", {}).get("phase") == "completed"]
    return sorted(done, key=lambda b: str(b.get("status", {}).get("stoppedAt", "")))


def recover(config: StackConfig, rendering: Rendering, secret_objects: Sequence[dict[str, Any]], progress: Progress,
            kubectl: Kubectl | None = None) -> RecoveryReport:
    """Replace the live Cluster with the one ``rendering`` recovers from the archive (see the module docstring)."""
    recovery = config.kubernetes.postgres.recovery
    names = Names.of(config)
    hint = kubectl_hint(config)
    if config.kubernetes.postgres.mode != "cnpg" or not recovery.enabled:
        raise UserError("a point-in-time recovery on Kubernetes needs kubernetes.postgres.recovery.enabled (and a "
                        "CloudNativePG Cluster with backups.physical.enabled)",
                        fix="set kubernetes.postgres.recovery: enabled: true, target_time: '<RFC 3339 time>', "
                            "server_name: <a new archive name, e.g. prefect-db-r1>; then run this again")
    kubectl = kubectl or Kubectl.for_config(config)
    kubectl.ensure_reachable()
    source = recovery.source_server or names.database
    completed = _completed_backups(kubectl, source)
    if not completed:
        raise UserError(f"the archive of {source} holds no completed base backup: there is nothing to recover from",
                        fix=f"wait for the ScheduledBackup (or take one: kubectl cnpg backup {source}), check it with "
                            f"`{hint} get backups`, then run this again")
    base = str(completed[-1]["metadata"]["name"])
    timeout = float(config.kubernetes.wait_timeout_s)
    progress(f"recovering {names.database} from the archive of {source} (newest base backup {base}) up to "
             f"{recovery.target_time or 'the last archived WAL'}")
    stopped = time.monotonic()
    for deployment in (names.api, names.services):
        # Writers first: nothing may write to the Cluster being replaced (and fail loudly meanwhile).
        kubectl.run("scale", f"deployment.apps/{deployment}", "--replicas=0")
    for deployment in (names.api, names.services):
        kubectl.rollout_status(f"deployment.apps/{deployment}", timeout)
    progress(f"Prefect stopped; deleting Cluster {names.database} (its archive in S3 is kept)")
    kubectl.delete(CLUSTER, names.database, timeout_s=timeout)
    # The recovered schema may predate the running image (a target time before an upgrade): the migration Job,
    # complete for the old database, runs again on the recovered one (a no-op when the schema is current).
    migration = f"{LABEL_COMPONENT}=migrate,{LABEL_INSTANCE}={config.kubernetes.name}"
    kubectl.run("delete", "job.batch", f"--selector={migration}", "--ignore-not-found", f"--timeout={timeout:.0f}s")
    report = deploy(config, rendering, secret_objects, progress, kubectl)
    return RecoveryReport(base, recovery.target_time, time.monotonic() - stopped, report)
