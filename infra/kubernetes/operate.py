"""Operating a deployed Kubernetes stack through kubectl: status, logs, restart, destroy.

Status speaks the same ``ComponentStatus`` as the local and compose targets, so ``invoke status`` prints one table
for all three: one row per workload (the CloudNativePG Cluster, its Poolers, Redis, the Prefect Deployments, the
migration Job, the backup CronJob) and one per pod, each healthy only when Kubernetes (or the operator) says so.
Components are named as an operator would type them: ``api`` or ``prefect-api``, ``db``, ``pooler-session``,
``redis``; the CloudNativePG objects are found through their own labels (``cnpg.io/cluster``, ``cnpg.io/poolerName``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infra.config import StackConfig
from infra.errors import UserError
from infra.kubernetes.deploy import CNPG_GROUP, kubectl_hint, list_stack_objects, not_served, prunable_kinds
from infra.kubernetes.kubectl import Kubectl, KubectlError
from infra.kubernetes.objects import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_NAME,
    LABEL_VERSION,
    Names,
    prune_selector,
    selector,
)
from infra.logs.parse import format_time
from infra.logs.read import LogQuery, StreamFollower, read_and_show, stamped_records
from infra.status import ComponentStatus

CLUSTER = f"cluster.{CNPG_GROUP}"
POOLER = f"pooler.{CNPG_GROUP}"
# CloudNativePG labels its instance pods and its Poolers' pods with these.
CNPG_CLUSTER_LABEL = "cnpg.io/cluster"
CNPG_POOLER_LABEL = "cnpg.io/poolerName"
# CloudNativePG restarts a Cluster's instances one by one (the primary last, by switchover) when this changes.
RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# `kubectl logs --selector` follows at most this many pods' streams at once (kubectl's default, 5, is below a
# 3-instance Cluster plus its sidecars).
MAX_LOG_REQUESTS = 20


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def _since(timestamp: str | None) -> int | None:
    if not timestamp:
        return None
    return int((datetime.now(UTC) - datetime.fromisoformat(timestamp)).total_seconds())


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c.get("type") == kind), {})


def _component(obj: dict[str, Any]) -> str:
    labels = _labels(obj)
    return labels.get(LABEL_COMPONENT) or labels.get(CNPG_POOLER_LABEL) or labels.get(CNPG_CLUSTER_LABEL) \
        or str(obj["metadata"]["name"])


def _rollout_row(kind: str, obj: dict[str, Any], component: str | None = None) -> ComponentStatus:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    desired = int(spec.get("replicas", 1))
    ready, updated = int(status.get("readyReplicas", 0)), int(status.get("updatedReplicas", 0))
    current = status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
    healthy = ready >= desired and updated >= desired and current
    detail = ""
    if not healthy:
        progressing = _condition(obj, "Progressing")
        detail = progressing.get("message", "") if progressing.get("status") == "False" else \
            f"{updated}/{desired} updated"
    return ComponentStatus(f"{kind}/{obj['metadata']['name']}", component or _component(obj), healthy,
                           f"{ready}/{desired} ready", None, None, version=_labels(obj).get(LABEL_VERSION),
                           detail=detail)


def _cluster_row(obj: dict[str, Any]) -> ComponentStatus:
    status = obj.get("status", {})
    ready = _condition(obj, "Ready")
    healthy = ready.get("status") == "True"
    detail = (f"primary {status.get('currentPrimary', '?')}, {status.get('readyInstances', 0)}/"
              f"{obj.get('spec', {}).get('instances', '?')} instances ready")
    if not healthy and ready.get("message"):
        detail += f"; {ready['message']}"
    return ComponentStatus(f"cluster/{obj['metadata']['name']}", _component(obj), healthy,
                           str(status.get("phase", "unknown")), None, None, detail=detail)


def _pooler_row(pooler: dict[str, Any], deployment: dict[str, Any] | None) -> ComponentStatus:
    name = pooler["metadata"]["name"]
    mode = pooler.get("spec", {}).get("pgbouncer", {}).get("poolMode", "session")
    if deployment is None:
        return ComponentStatus(f"pooler/{name}", _component(pooler), False, "no Deployment", None, None,
                               detail="CloudNativePG has not created its Deployment (is the Cluster ready?)")
    row = _rollout_row("pooler", deployment, _component(pooler))
    row.detail = (f"pool mode {mode}; {row.detail}").rstrip("; ")
    return row


def _job_row(obj: dict[str, Any]) -> ComponentStatus:
    status = obj.get("status", {})
    if _condition(obj, "Complete").get("status") == "True":
        state, healthy, detail = "complete", True, ""
    elif _condition(obj, "Failed").get("status") == "True":
        state, healthy = "failed", False
        detail = f"see its log: invoke logs {_component(obj)} --target kubernetes"
    else:
        state, healthy, detail = "running", False, f"{status.get('active', 0)} pod(s) active"
    return ComponentStatus(f"job/{obj['metadata']['name']}", _component(obj), healthy, state, None, None,
                           version=_labels(obj).get(LABEL_VERSION), detail=detail)


def _cronjob_row(obj: dict[str, Any]) -> ComponentStatus:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    scheduled, succeeded = status.get("lastScheduleTime"), status.get("lastSuccessfulTime")
    running = bool(status.get("active"))
    # Timestamps are RFC 3339 in UTC: they compare as strings.
    last_failed = bool(scheduled) and not running and (not succeeded or succeeded < scheduled)
    detail = f"last success {succeeded}" if succeeded else "no successful run yet"
    if last_failed:
        detail = f"the run scheduled at {scheduled} did not succeed; {detail}"
    state = "suspended" if spec.get("suspend") else ("running" if running else f"schedule {spec.get('schedule')}")
    return ComponentStatus(f"cronjob/{obj['metadata']['name']}", _component(obj), not last_failed, state, None,
                           None, detail=detail)


def _pod_row(pod: dict[str, Any]) -> ComponentStatus:
    status = pod.get("status", {})
    containers = status.get("containerStatuses") or []
    waiting = next((c["state"]["waiting"].get("reason", "Waiting") for c in containers
                    if "waiting" in (c.get("state") or {})), None)
    phase = str(status.get("phase", "Unknown"))
    healthy = phase == "Running" and _condition(pod, "Ready").get("status") == "True"
    restarts = sum(int(c.get("restartCount", 0)) for c in containers)
    detail = f"restarted {restarts}x" if restarts else ""
    if not healthy:
        reason = _condition(pod, "Ready").get("reason") or ""
        detail = "; ".join(filter(None, [reason, detail]))
    images = [c.get("image", "") for c in pod.get("spec", {}).get("containers", [])]
    version = images[0].rsplit("@", 1)[0].rsplit(":", 1)[-1][:20] if images and ":" in images[0] else None
    return ComponentStatus(f"pod/{pod['metadata']['name']}", _component(pod), healthy, waiting or phase, None, None,
                           version=version, uptime_s=_since(status.get("startTime")) if healthy else None,
                           detail=detail)


def _get_optional(kubectl: Kubectl, what: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Objects of a custom resource; none when its operator is not installed (external PostgreSQL)."""
    try:
        return kubectl.get(what, **kwargs)
    except KubectlError as exc:
        if not_served(exc):
            return []
        raise


def status(config: StackConfig, kubectl: Kubectl | None = None) -> list[ComponentStatus]:
    """One row per workload and per pod of the stack: Cluster, Poolers, StatefulSets, Deployments, Jobs, CronJobs."""
    kubectl = kubectl or Kubectl.for_config(config)
    kubectl.ensure_reachable()
    stack = prune_selector(config)
    workloads = kubectl.get("deployment.apps,statefulset.apps,job.batch,cronjob.batch", selector=stack)
    cnpg = _get_optional(kubectl, f"{CLUSTER},{POOLER}", selector=stack)
    clusters = [o for o in cnpg if o["kind"] == "Cluster"]
    poolers = [o for o in cnpg if o["kind"] == "Pooler"]
    pooler_names = [str(p["metadata"]["name"]) for p in poolers]
    pooler_deployments = {str(d["metadata"]["name"]): d for d in kubectl.get("deployment.apps", *pooler_names)} \
        if pooler_names else {}
    cluster_names = {str(c["metadata"]["name"]) for c in clusters}
    pods = [p for p in kubectl.get("pod") if _ours(config, p, cluster_names, set(pooler_names))
            and not any(ref.get("kind") == "Job" for ref in p["metadata"].get("ownerReferences") or [])]
    if not (workloads or cnpg or pods):
        raise UserError(f"no object of stack {config.kubernetes.name!r} in namespace {config.kubernetes.namespace}",
                        fix="deploy it: invoke deploy --target kubernetes")
    rows = [_cluster_row(c) for c in clusters]
    rows += [_pooler_row(p, pooler_deployments.get(str(p["metadata"]["name"]))) for p in poolers]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in workloads:
        by_kind.setdefault(str(obj["kind"]), []).append(obj)
    rows += [_rollout_row("statefulset", o) for o in by_kind.get("StatefulSet", [])]
    rows += [_rollout_row("deployment", o) for o in by_kind.get("Deployment", [])
             if str(o["metadata"]["name"]) not in pooler_deployments]
    # A CronJob's runs are its row's business (a failed backup long ago must not keep the stack red forever).
    rows += [_job_row(o) for o in by_kind.get("Job", [])
             if not any(ref.get("kind") == "CronJob" for ref in o["metadata"].get("ownerReferences") or [])]
    rows += [_cronjob_row(o) for o in by_kind.get("CronJob", [])]
    rows += [_pod_row(p) for p in sorted(pods, key=lambda p: str(p["metadata"]["name"]))]
    return rows


def _ours(config: StackConfig, pod: dict[str, Any], clusters: set[str], poolers: set[str]) -> bool:
    labels = _labels(pod)
    return (labels.get(LABEL_INSTANCE) == config.kubernetes.name or labels.get(CNPG_CLUSTER_LABEL) in clusters
            or labels.get(CNPG_POOLER_LABEL) in poolers)


def _full_name(config: StackConfig, component: str) -> str:
    names = Names.of(config)
    return component if component.startswith(f"{names.prefix}-") else names(component)


def component_selector(kubectl: Kubectl, config: StackConfig, component: str) -> str:
    """The label selector of a component's pods: ``db`` (the Cluster's instances), ``pooler-transaction``, or any
    component label of the stack's pods (``api``, ``redis``...)."""
    names = Names.of(config)
    full = _full_name(config, component)
    if full == names.database:
        return f"{CNPG_CLUSTER_LABEL}={full}"
    if full in (names.pooler_transaction, names.pooler_session):
        return f"{CNPG_POOLER_LABEL}={full}"
    pods = kubectl.get("pod", selector=f"{LABEL_INSTANCE}={config.kubernetes.name}")
    available = sorted({_labels(p)[LABEL_NAME] for p in pods if LABEL_NAME in _labels(p)})
    short = full.removeprefix(f"{names.prefix}-")
    for candidate in (component, full, short):
        if candidate in available:
            return ",".join(f"{k}={v}" for k, v in selector(config, candidate).items())
    cnpg = [names.database, names.pooler_transaction, names.pooler_session] \
        if config.kubernetes.postgres.mode == "cnpg" else []
    raise UserError(f"no pod of component {component!r} in namespace {config.kubernetes.namespace}",
                    fix=f"choose one of: {', '.join(available + cnpg) or '(none: deploy first)'}")


def logs(config: StackConfig, component: str, follow: bool = False, tail: int = 100,
         kubectl: Kubectl | None = None) -> int:
    """Every container log of the component's pods, each line prefixed with its pod and container; kubectl's exit
    status."""
    kubectl = kubectl or Kubectl.for_config(config)
    chosen = component_selector(kubectl, config, component)
    args = ["logs", f"--selector={chosen}", "--all-containers", "--prefix", f"--tail={tail}",
            f"--max-log-requests={MAX_LOG_REQUESTS}"]
    if follow:
        args.append("--follow")
    return kubectl.stream(*args)


def log_components(kubectl: Kubectl, config: StackConfig) -> list[str]:
    """Every component with a pod of the stack (the component label), and the database's and poolers'."""
    pods = kubectl.get("pod", selector=f"{LABEL_INSTANCE}={config.kubernetes.name}")
    names = Names.of(config)
    found = sorted({_labels(p)[LABEL_NAME] for p in pods if LABEL_NAME in _labels(p)})
    if config.kubernetes.postgres.mode == "cnpg":
        found += [names.database, names.pooler_transaction, names.pooler_session]
    return found


def _log_args(chosen: str, query: LogQuery) -> list[str]:
    args = ["logs", f"--selector={chosen}", "--all-containers", "--prefix", "--timestamps",
            f"--max-log-requests={MAX_LOG_REQUESTS}"]
    if query.tail is not None:
        args.append(f"--tail={query.tail}")
    if query.since is not None:
        args.append(f"--since-time={format_time(query.since)}")
    return args


def _unprefixed(lines: Iterator[str] | list[str]) -> Iterator[str]:
    """kubectl's lines without their ``[pod/NAME/CONTAINER]`` prefix."""
    for line in lines:
        yield line.partition("] ")[2] if line.startswith("[") else line


def _followed(kubectl: Kubectl, chosen: str) -> Iterator[str]:
    """New lines of the component's pods until interrupted (kubectl logs --follow, from now on)."""
    process = subprocess.Popen(kubectl.argv("logs", f"--selector={chosen}", "--all-containers", "--prefix",
                                            "--timestamps", "--follow", "--since=1s",
                                            f"--max-log-requests={MAX_LOG_REQUESTS}"),
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, errors="replace")
    assert process.stdout is not None  # noqa: S101 - stdout=PIPE above
    yield from _unprefixed(line.rstrip("\n") for line in process.stdout)


def read_logs(config: StackConfig, query: LogQuery, kubectl: Kubectl | None = None) -> int:
    """The component's pods' logs, or every component's merged in time order, through ``kubectl logs
    --timestamps`` (the kubelet's time of each line: Prefect's console lines carry no date)."""
    kubectl = kubectl or Kubectl.for_config(config)
    components = [query.component] if query.component else log_components(kubectl, config)
    if not components:
        raise UserError(f"no pod of the stack in namespace {config.kubernetes.namespace}",
                        fix="deploy first: invoke deploy --target kubernetes")
    selectors = {name: component_selector(kubectl, config, name) for name in components}
    sources = {name: stamped_records(name, _unprefixed(kubectl.run(*_log_args(chosen, query)).splitlines()))
               for name, chosen in selectors.items()}
    followers = None
    if query.follow:
        followers = [StreamFollower({name: _followed(kubectl, chosen) for name, chosen in selectors.items()}).poll]
    return read_and_show(sources, query, followers)


def _restart_target(kubectl: Kubectl, config: StackConfig, component: str) -> str:
    names = Names.of(config)
    full = _full_name(config, component)
    if full == names.database:
        return f"{CLUSTER}/{full}"
    if full in (names.pooler_transaction, names.pooler_session):
        return f"deployment.apps/{full}"  # CloudNativePG's Deployment of the Pooler, named like it
    workloads = kubectl.get("deployment.apps,statefulset.apps", selector=prune_selector(config))
    for obj in workloads:
        if obj["metadata"]["name"] in (component, full) or _labels(obj).get(LABEL_NAME) == component:
            return f"{str(obj['kind']).lower()}.apps/{obj['metadata']['name']}"
    choices = sorted(str(o["metadata"]["name"]) for o in workloads)
    raise UserError(f"no Deployment or StatefulSet of component {component!r} in namespace "
                    f"{config.kubernetes.namespace}",
                    fix=f"choose one of: {', '.join([*choices, names.database]) or '(none: deploy first)'}")


def restart(config: StackConfig, component: str, kubectl: Kubectl | None = None) -> float:
    """Rolling restart of one component, waiting until it is ready again; the seconds it took.

    Deployments and StatefulSets: ``kubectl rollout restart`` (the rollout keeps the PDB's and the strategy's
    guarantees). The database: CloudNativePG's own restart annotation (``kubectl cnpg restart`` sets the same),
    with which the operator restarts the replicas first and the primary by switchover."""
    started = time.monotonic()
    kubectl = kubectl or Kubectl.for_config(config)
    timeout = float(config.kubernetes.wait_timeout_s)
    target = _restart_target(kubectl, config, component)
    hint = kubectl_hint(config)
    try:
        if target.startswith(f"{CLUSTER}/"):
            moment = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            kubectl.run("annotate", target, f"{RESTART_ANNOTATION}={moment}", "--overwrite")
            kubectl.wait(target, "condition=Ready", timeout)
        else:
            kubectl.run("rollout", "restart", target)
            kubectl.rollout_status(target, timeout)
    except KubectlError as exc:
        raise UserError(f"{target} is not ready {timeout:.0f} s after its restart ({exc.tail(3)})",
                        fix=f"see why: {hint} describe {target}; invoke logs {component} --target kubernetes") \
            from None
    return time.monotonic() - started


@dataclass
class KubernetesDestroyReport:
    removed: list[str] = field(default_factory=list)  # Kind/name
    # Left in place because deleting them deletes data (delete_volumes=False).
    kept: list[str] = field(default_factory=list)


def destroy(config: StackConfig, delete_volumes: bool = False, kubectl: Kubectl | None = None) \
        -> KubernetesDestroyReport:
    """Delete every object of the stack (its labels), its Secrets included; never the Namespace.

    ``delete_volumes=False`` keeps the data: the CloudNativePG Cluster (its volumes are deleted with it) and every
    PersistentVolumeClaim (Redis's). ``True`` deletes those too.
    """
    kubectl = kubectl or Kubectl.for_config(config)
    kubectl.ensure_reachable()
    kinds = [*prunable_kinds([]), ("v1", "Secret")]
    if delete_volumes:
        kinds.append(("v1", "PersistentVolumeClaim"))
    report = KubernetesDestroyReport()
    doomed: dict[str, list[str]] = {}
    clusters: list[str] = []
    for what, obj in list_stack_objects(kubectl, config, kinds, applied_only=False):
        name = str(obj["metadata"]["name"])
        if what == CLUSTER:
            if not delete_volumes:
                report.kept.append(f"Cluster/{name}")
                continue
            clusters.append(name)
        doomed.setdefault(what, []).append(name)
        report.removed.append(f"{obj['kind']}/{name}")
    for cluster in clusters:  # CloudNativePG labels its volumes with its own labels only
        for claim in kubectl.get("persistentvolumeclaim", selector=f"{CNPG_CLUSTER_LABEL}={cluster}"):
            doomed.setdefault("persistentvolumeclaim", []).append(str(claim["metadata"]["name"]))
            report.removed.append(f"PersistentVolumeClaim/{claim['metadata']['name']}")
    for what, names in doomed.items():
        try:
            kubectl.delete(what, *_unique(names), timeout_s=config.kubernetes.wait_timeout_s)
        except KubectlError as exc:
            raise UserError(f"destroy: cannot delete {what} {', '.join(names)}: {exc.tail(3)}",
                            fix=f"{kubectl_hint(config)} describe {what} NAME (a finalizer may hold it)") from None
    return report


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))

