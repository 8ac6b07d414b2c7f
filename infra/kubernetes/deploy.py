"""``invoke deploy`` for the kubernetes target: apply the rendering phase by phase, wait for each, then prune.

Phases (``objects.PHASES``): namespace (with its NetworkPolicies, then the Secrets the manifests reference), data
(the CloudNativePG Cluster, its Poolers, Redis), migrate (the schema Job), apps (Prefect), monitoring. Each phase
is one ``kubectl apply --server-side`` of its objects on standard input, then waits bounded together by
``kubernetes.wait_timeout_s``: a later phase never starts on a data layer that is not ready, and the API pods
never start before the migration completed. A failure names the phase, what did not become ready, and the
command that shows why.

Prune deletes what this stack applied earlier (its labels, and a server-side-apply entry of our field manager)
that the rendering no longer holds. It never deletes a Secret, a PersistentVolumeClaim or the Namespace, nor an
object some controller owns; a CloudNativePG Cluster that is no longer rendered is reported, not deleted: its
volumes go with it, and that is the operator's decision to make.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.config import StackConfig
from infra.errors import UserError
from infra.kubernetes import secret_hashes
from infra.kubernetes.kubectl import FIELD_MANAGER, Kubectl, KubectlError, resource, resource_of
from infra.kubernetes.objects import PHASES, Manifest, Names, Phase, flow_run_namespace, prune_selector
from infra.kubernetes.render import Rendering
from infra.progress import Progress

CNPG_GROUP = "postgresql.cnpg.io"
# How many of a failed migration's last log lines the error shows.
JOB_LOG_LINES = 30
# Every kind the stack may have applied, in the order prune deletes them (consumers before what they use).
# Kinds a rendering holds that are not listed here are pruned too; a kind listed here is pruned even when the
# rendering no longer has any object of it (monitoring turned off).
PRUNABLE_KINDS: tuple[tuple[str, str], ...] = (
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("networking.k8s.io/v1", "Ingress"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("batch/v1", "CronJob"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"),
    ("policy/v1", "PodDisruptionBudget"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("postgresql.cnpg.io/v1", "ScheduledBackup"),
    ("postgresql.cnpg.io/v1", "Pooler"),
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("barmancloud.cnpg.io/v1", "ObjectStore"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)
# Deploy created them from the generated secrets, or they hold data, or everything lives in it.
NEVER_PRUNED = frozenset({"Secret", "PersistentVolumeClaim", "Namespace"})
# Deleting one deletes its volumes (CloudNativePG owns the instances' PVCs): reported, left to the operator.
KEPT_HOLDING_DATA = frozenset({(CNPG_GROUP, "Cluster")})

_NO_MATCH = re.compile(r'no matches for kind "([^"]+)" in version "([^"/]+)/[^"]*"')
# What kubectl says about a resource the cluster does not serve (its CRD is not installed).
NOT_SERVED_MARKERS = ("doesn't have a resource type", "could not find the requested resource", "no matches for kind")


@dataclass(frozen=True)
class Operator:
    name: str
    install: str


def operators(config: StackConfig) -> dict[str, Operator]:
    """Who provides each custom resource group the stack uses, and how to install it."""
    ops = config.kubernetes.operator_namespace
    prom = config.kubernetes.prometheus_namespace
    return {
        CNPG_GROUP: Operator("CloudNativePG", f"install the CloudNativePG operator (1.30 or later): helm upgrade "
                             f"--install cnpg cnpg/cloudnative-pg --namespace {ops} --create-namespace "
                             f"(helm repo add cnpg https://cloudnative-pg.github.io/charts)"),
        "barmancloud.cnpg.io": Operator("the Barman Cloud plugin of CloudNativePG", f"install cert-manager, then the "
                                        f"Barman Cloud plugin: helm upgrade --install barman-cloud "
                                        f"cnpg/plugin-barman-cloud --namespace {ops}"),
        "monitoring.coreos.com": Operator("prometheus-operator (kube-prometheus-stack)", f"install "
                                          f"kube-prometheus-stack (helm upgrade --install kube-prometheus-stack "
                                          f"prometheus-community/kube-prometheus-stack --namespace {prom} "
                                          f"--create-namespace), or only its CRDs (the prometheus-operator-crds "
                                          f"chart); or turn monitoring off (monitoring.enabled: false)"),
        "cert-manager.io": Operator("cert-manager", "install cert-manager: helm upgrade --install cert-manager "
                                    "jetstack/cert-manager --namespace cert-manager --create-namespace "
                                    "--set crds.enabled=true"),
        "gateway.networking.k8s.io": Operator("the Gateway API", "install the Gateway API CRDs "
                                              "(https://gateway-api.sigs.k8s.io/guides/#installing-gateway-api)"),
    }


@dataclass
class KubernetesDeployReport:
    server_version: str = ""
    applied: dict[str, list[str]] = field(default_factory=dict)  # phase -> Kind/name
    secrets: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    # No longer rendered but holding data: left in place, named so the operator can delete them deliberately.
    kept: list[str] = field(default_factory=list)
    # What the Jobs that run at every deploy (the work pools' provisioning) said, by Job name.
    job_reports: dict[str, list[str]] = field(default_factory=dict)
    elapsed_s: float = 0.0


def kubectl_hint(config: StackConfig) -> str:
    """How the operator's own kubectl commands in a fix must start to reach the same objects."""
    context = f" --context={config.kubernetes.context}" if config.kubernetes.context else ""
    return f"kubectl{context} -n {config.kubernetes.namespace}"


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _label(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _secret_values(secrets: Sequence[dict[str, Any]]) -> list[str]:
    """Every secret value as it could appear in kubectl's messages: plain and base64."""
    values: list[str] = []
    for secret in secrets:
        values += [str(v) for v in (secret.get("stringData") or {}).values()]
        for encoded in (secret.get("data") or {}).values():
            values.append(str(encoded))
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                values.append(base64.b64decode(str(encoded), validate=True).decode())
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def _redact(text: str, values: Sequence[str]) -> str:
    for value in values:
        text = text.replace(value, "***")
    return text


def in_namespace(kubectl: Kubectl, namespace: str) -> Kubectl:
    """The same kubectl for another namespace (kubectl refuses an object whose namespace is not its --namespace)."""
    return kubectl if namespace == kubectl.namespace else dataclasses.replace(kubectl, namespace=namespace)


def _apply(kubectl: Kubectl, config: StackConfig, phase: Phase, objects: Sequence[dict[str, Any]],
           redact: Sequence[str] = ()) -> None:
    """One apply per namespace the objects live in, the stack's first (cluster-scoped objects go with it)."""
    by_namespace: dict[str, list[dict[str, Any]]] = {config.kubernetes.namespace: []}
    for obj in objects:
        namespace = obj.get("metadata", {}).get("namespace") or config.kubernetes.namespace
        by_namespace.setdefault(namespace, []).append(obj)
    for namespace, group in by_namespace.items():
        if not group:
            continue
        try:
            in_namespace(kubectl, namespace).apply(group)
        except KubectlError as exc:
            raise _apply_failed(config, phase, exc, redact) from None


def _apply_failed(config: StackConfig, phase: Phase, exc: KubectlError, redact: Sequence[str]) -> UserError:
    message = _redact(exc.tail(), redact)
    missing = sorted(set(_NO_MATCH.findall(exc.stderr)))
    if missing:
        known = operators(config)
        groups = sorted({group for _, group in missing})
        kinds = ", ".join(f"{kind} ({group})" for kind, group in missing)
        names = [known[g].name if g in known else f"the operator that serves {g}" for g in groups]
        fixes = [known[g].install if g in known else f"install the CRDs of {g}" for g in groups]
        return UserError(f"deploy stopped in phase {phase}: the cluster does not know {kinds}: "
                         f"{' and '.join(names)} is not installed", fix="; ".join(fixes) + ", then deploy again")
    if "field is immutable" in exc.stderr:
        fix = (f"an existing object cannot take the new definition (a Job's pod template, a StatefulSet's volume "
               f"claims): delete the object kubectl names ({kubectl_hint(config)} delete KIND NAME) and deploy "
               f"again; a StatefulSet can be deleted with --cascade=orphan to keep its pods and volumes")
    elif "failed calling webhook" in exc.stderr:
        fix = (f"an operator's admission webhook did not answer: check that its pods run (kubectl -n "
               f"{config.kubernetes.operator_namespace} get pods) and deploy again")
    elif f'namespaces "{flow_run_namespace(config)}" not found' in exc.stderr:
        fix = (f"create the flow-run namespace (kubernetes.flow_run_namespace) and label it for Pod Security "
               f"restricted: kubectl create namespace {flow_run_namespace(config)}; kubectl label namespace "
               f"{flow_run_namespace(config)} pod-security.kubernetes.io/enforce=restricted; then deploy again "
               f"(docs/workers.md)")
    elif "forbidden" in exc.stderr:
        fix = (f"the kubeconfig's user needs the right to create and patch these objects in namespace "
               f"{config.kubernetes.namespace} (and to create the namespace); ask the cluster's administrator")
    else:
        fix = (f"correct what kubectl names above; the cluster's side: {kubectl_hint(config)} get events "
               f"--sort-by=.lastTimestamp")
    return UserError(f"deploy stopped in phase {phase}: kubectl apply failed:\n    {message}", fix=fix)


@dataclass(frozen=True)
class _Wait:
    """One thing a phase waits for: what it is in an operator's words, how to wait, how to look into it."""

    what: str
    kind: str
    name: str
    resource: str


def _waits(manifests: Sequence[Manifest]) -> list[_Wait]:
    """What becomes ready asynchronously, database first (its Poolers and the apps need it)."""
    waits: list[_Wait] = []
    for m in manifests:
        group = _group(m.api_version)
        if (group, m.kind) in ((CNPG_GROUP, "Cluster"), (CNPG_GROUP, "Pooler"), ("apps", "Deployment"),
                               ("apps", "StatefulSet"), ("apps", "DaemonSet"), ("batch", "Job")):
            waits.append(_Wait(f"{m.kind} {m.name}", m.kind, m.name, resource(m.api_version, m.kind)))
    return sorted(waits, key=lambda w: w.kind != "Cluster")


def _job_logs(kubectl: Kubectl, name: str) -> str:
    try:
        text = kubectl.logs_tail(f"job/{name}", JOB_LOG_LINES)
    except KubectlError as exc:
        return f"(no log: {exc.tail(3)})"
    return "\n    ".join(text.rstrip().splitlines()[-JOB_LOG_LINES:]) or "(the log is empty)"


def _wait_one(kubectl: Kubectl, config: StackConfig, phase: Phase, wait: _Wait, timeout_s: float) -> None:
    hint = kubectl_hint(config)
    slow = f"; if the cluster is only slow, raise kubernetes.wait_timeout_s (now {config.kubernetes.wait_timeout_s})"
    target = f"{wait.resource}/{wait.name}"
    try:
        if wait.kind == "Cluster":
            kubectl.wait(target, "condition=Ready", timeout_s)
        elif wait.kind == "Pooler":
            # CloudNativePG creates a Deployment named like the Pooler, moments after the Pooler exists.
            kubectl.wait(f"deployment.apps/{wait.name}", "create", timeout_s)
            kubectl.rollout_status(f"deployment.apps/{wait.name}", timeout_s)
        elif wait.kind == "Job":
            outcome = kubectl.wait_any(target, ("condition=complete", "condition=failed"), timeout_s)
            if outcome == "condition=failed":
                raise UserError(f"deploy stopped in phase {phase}: Job {wait.name} failed; its last log lines:\n"
                                f"    {_job_logs(kubectl, wait.name)}",
                                fix=f"correct the cause the log shows (see also {hint} describe job {wait.name}), "
                                    f"then delete the failed Job ({hint} delete job {wait.name}) and deploy again")
            if outcome is None:
                raise KubectlError(["kubectl", "wait", target], None,
                                   f"timed out waiting for the condition on {target}")
        else:
            kubectl.rollout_status(target, timeout_s)
    except KubectlError as exc:
        if wait.kind == "Cluster":
            fix = (f"see why: {hint} describe {target}; {hint} get pods -l cnpg.io/cluster={wait.name}; the "
                   f"operator's log: kubectl -n {config.kubernetes.operator_namespace} logs "
                   f"deployment/cnpg-controller-manager")
        elif wait.kind == "Pooler":
            fix = f"see why: {hint} describe {target}; {hint} describe deployment.apps/{wait.name}"
        elif wait.kind == "Job":
            fix = f"see why: {hint} describe job {wait.name}; {hint} logs job/{wait.name} --all-containers"
        else:
            fix = f"see why: {hint} describe {target}; {hint} logs {target} --all-containers --prefix"
        state = f"is not ready after {timeout_s:.0f} s" if exc.timed_out else "could not be waited for"
        raise UserError(f"deploy stopped in phase {phase}: {wait.what} {state} ({exc.tail(3)})",
                        fix=fix + (slow if exc.timed_out else "")) from None


def _check_secret_objects(config: StackConfig, secret_objects: Sequence[dict[str, Any]]) -> None:
    allowed = {config.kubernetes.namespace, flow_run_namespace(config)}
    for obj in secret_objects:
        if obj.get("kind") != "Secret":
            raise ValueError(f"secret_objects holds a {obj.get('kind')}: only Secrets go there")
        namespace = obj.get("metadata", {}).get("namespace")
        if namespace not in allowed:
            raise ValueError(f"Secret {obj['metadata'].get('name')} is for namespace {namespace}, "
                             f"not {' or '.join(sorted(allowed))}")


def _rerun_jobs(kubectl: Kubectl, config: StackConfig, phase: Phase, manifests: Sequence[Manifest]) -> None:
    """Delete the finished runs of the Jobs that run at every deploy, so applying them starts a new one (a Job's pod
    template cannot change, and a completed Job never runs again)."""
    for m in manifests:
        if not m.rerun:
            continue
        try:
            kubectl.delete(resource(m.api_version, m.kind), m.name, timeout_s=config.kubernetes.wait_timeout_s)
        except KubectlError as exc:
            raise UserError(f"deploy stopped in phase {phase}: cannot delete the last run of Job {m.name}: "
                            f"{exc.tail(3)}", fix=f"{kubectl_hint(config)} delete job {m.name}, then deploy "
                                                  "again") from None


def _job_report(kubectl: Kubectl, name: str) -> list[str]:
    try:
        text = kubectl.logs_tail(f"job/{name}", JOB_LOG_LINES)
    except KubectlError as exc:
        return [f"(no log: {exc.tail(1)})"]
    # --prefix puts "[pod/NAME/CONTAINER] " before each line: the operator wants what the Job said.
    return [re.sub(r"^\[[^\]]*\] ", "", line) for line in text.rstrip().splitlines()[-JOB_LOG_LINES:]]


def _phase_objects(manifests: Sequence[Manifest]) -> list[dict[str, Any]]:
    # The Namespace first: everything else in the same apply lives in it.
    return [m.obj for m in sorted(manifests, key=lambda m: m.kind != "Namespace")]


def deploy(config: StackConfig, rendering: Rendering, secret_objects: Sequence[dict[str, Any]], progress: Progress,
           kubectl: Kubectl | None = None) -> KubernetesDeployReport:
    """Apply ``rendering`` phase by phase, wait for each, then prune.

    ``secret_objects``: the Secret objects the manifests reference, applied in the namespace phase (on stdin only).
    """
    started = time.monotonic()
    kubectl = kubectl or Kubectl.for_config(config)
    _check_secret_objects(config, secret_objects)
    manifests: list[Manifest] = list(rendering.manifests)
    report = KubernetesDeployReport(server_version=kubectl.ensure_reachable())
    progress(f"cluster: Kubernetes {report.server_version}, namespace {config.kubernetes.namespace}")
    timeout = float(config.kubernetes.wait_timeout_s)
    with progress.steps(f"deploying {config.kubernetes.name} to namespace {config.kubernetes.namespace}",
                        len(PHASES) + 1) as meter:
        for phase in PHASES:
            in_phase = [m for m in manifests if m.phase == phase]
            # A changed Secret rolls the pods that read it (their templates carry its digest).
            objects = secret_hashes.stamp(_phase_objects(in_phase), secret_objects)
            _rerun_jobs(kubectl, config, phase, in_phase)
            if objects:
                _apply(kubectl, config, phase, objects)
                report.applied[phase] = [_label(o) for o in objects]
            if phase == "namespace" and secret_objects:
                _apply(kubectl, config, phase, secret_objects, redact=_secret_values(secret_objects))
                report.secrets = [str(s["metadata"]["name"]) for s in secret_objects]
            deadline = time.monotonic() + timeout
            for wait in _waits(in_phase):
                progress(f"{phase}: waiting for {wait.what}")
                _wait_one(kubectl, config, phase, wait, max(deadline - time.monotonic(), 1.0))
            for m in in_phase:
                if m.rerun:
                    report.job_reports[m.name] = _job_report(kubectl, m.name)
            meter.step(f"{phase}: {len(objects)} objects applied" + (", ready" if _waits(in_phase) else ""))
        report.pruned, report.kept = prune(kubectl, config, manifests)
        # After prune: the monitors that read a retired Secret are gone by then.
        report.pruned += delete_retired_secrets(kubectl, config)
        meter.step(f"pruned {len(report.pruned)} objects no longer rendered")
    for label in report.kept:
        progress(f"kept {label}: no longer rendered, but deleting it deletes its data; delete it yourself "
                 f"({kubectl_hint(config)} delete {label.replace('/', ' ')}) once the data is safe")
    report.elapsed_s = time.monotonic() - started
    return report


def _applied_by_us(obj: dict[str, Any]) -> bool:
    return any(entry.get("manager") == FIELD_MANAGER for entry in obj["metadata"].get("managedFields") or [])


def _controlled(obj: dict[str, Any]) -> bool:
    """Made by a controller (a CronJob's Jobs, a Pooler's Deployment): its owner decides its life."""
    return any(ref.get("controller") for ref in obj["metadata"].get("ownerReferences") or [])


def prunable_kinds(manifests: Sequence[Manifest]) -> list[tuple[str, str]]:
    kinds = list(PRUNABLE_KINDS)
    known = {(_group(v), k) for v, k in kinds}
    for m in manifests:
        if (_group(m.api_version), m.kind) not in known and m.kind not in NEVER_PRUNED:
            kinds.insert(0, (m.api_version, m.kind))
            known.add((_group(m.api_version), m.kind))
    return kinds


def not_served(exc: KubectlError) -> bool:
    """kubectl failed because the cluster does not know the resource (its operator is not installed)."""
    return any(marker in exc.stderr for marker in NOT_SERVED_MARKERS)


def list_stack_objects(kubectl: Kubectl, config: StackConfig, kinds: Sequence[tuple[str, str]],
                       applied_only: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(resource, object) of every live object with the stack's labels, of ``kinds``, in the order of ``kinds``;
    none made by a controller (its owner decides its life), and with ``applied_only`` only those deploy applied.
    A kind the cluster does not serve (its operator is not installed) has none.

    One ``kubectl get`` per API group (an operator installs all kinds of its group at once), one per kind of a
    group the cluster does not fully serve."""
    by_group: dict[str, list[str]] = {}
    for api_version, kind in kinds:
        by_group.setdefault(_group(api_version), []).append(resource(api_version, kind))
    live: list[dict[str, Any]] = []
    for group_resources in by_group.values():
        try:
            live += _list(kubectl, config, ",".join(group_resources))
        except _NotServed:
            for what in group_resources:
                try:
                    live += _list(kubectl, config, what)
                except _NotServed:
                    continue
    order = {(_group(v), k): i for i, (v, k) in enumerate(kinds)}
    ours = [obj for obj in live if (_applied_by_us(obj) or not applied_only) and not _controlled(obj)]
    ours.sort(key=lambda o: order.get((_group(str(o["apiVersion"])), str(o["kind"])), len(order)))
    return [(resource_of(obj), obj) for obj in ours]


class _NotServed(Exception):
    pass


def _list(kubectl: Kubectl, config: StackConfig, what: str) -> list[dict[str, Any]]:
    try:
        return kubectl.get(what, selector=prune_selector(config), managed_fields=True)
    except KubectlError as exc:
        if not_served(exc):
            raise _NotServed(what) from None
        raise UserError(f"cannot list the stack's {what} objects: {exc.tail(3)}",
                        fix=f"check the kubeconfig user's right to list {what} in namespace "
                            f"{config.kubernetes.namespace}") from None


def delete_retired_secrets(kubectl: Kubectl, config: StackConfig) -> list[str]:
    """Delete the Secrets an earlier deploy created that nothing reads any more (``Names.retired_secrets``), when
    they carry the stack's labels; Secret/name of each one deleted."""
    deleted = []
    for name in Names.of(config).retired_secrets:
        try:
            gone = kubectl.delete_named_if_selected("secret", name, prune_selector(config),
                                                    timeout_s=config.kubernetes.wait_timeout_s)
        except KubectlError as exc:
            raise UserError(f"cannot delete Secret {name}, which deploy no longer uses: {exc.tail(3)}",
                            fix=f"{kubectl_hint(config)} delete secret {name}") from None
        if gone:
            deleted.append(f"Secret/{name}")
    return deleted


# What the stack puts in a flow-run namespace of its own (infra/kubernetes/workers.py): pruned there too.
FLOW_RUN_NAMESPACE_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


def prune(kubectl: Kubectl, config: StackConfig, manifests: Sequence[Manifest]) -> tuple[list[str], list[str]]:
    """Delete what this stack applied that ``manifests`` no longer hold, in its namespace and in a flow-run namespace
    of its own; (pruned, kept) as Kind/name."""
    pruned, kept = _prune_in(kubectl, config, manifests, prunable_kinds(manifests))
    runs = flow_run_namespace(config)
    if runs != config.kubernetes.namespace:
        more, _ = _prune_in(in_namespace(kubectl, runs), config, manifests, FLOW_RUN_NAMESPACE_KINDS)
        pruned += more
    return pruned, kept


def _prune_in(kubectl: Kubectl, config: StackConfig, manifests: Sequence[Manifest],
              kinds: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    namespace = kubectl.namespace
    rendered = {(_group(m.api_version), m.kind, m.name) for m in manifests
                if (m.obj["metadata"].get("namespace") or config.kubernetes.namespace) == namespace}
    pruned: list[str] = []
    kept: list[str] = []
    for what, obj in list_stack_objects(kubectl, config, kinds):
        group, kind, name = _group(str(obj["apiVersion"])), str(obj["kind"]), str(obj["metadata"]["name"])
        if (group, kind, name) in rendered or kind in NEVER_PRUNED:
            continue
        if (group, kind) in KEPT_HOLDING_DATA:
            kept.append(f"{what}/{name}")
            continue
        try:
            kubectl.delete(what, name, timeout_s=config.kubernetes.wait_timeout_s)
        except KubectlError as exc:
            raise UserError(f"prune: cannot delete {kind} {name}, no longer rendered: {exc.tail(3)}",
                            fix=f"{kubectl_hint(config)} describe {what} {name} (a finalizer may hold it)") from None
        pruned.append(f"{kind}/{name}")
    return pruned, kept

