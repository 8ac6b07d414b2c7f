"""Workers on Kubernetes: the model's pools as ``kubernetes`` pools whose flow runs are Jobs, provisioned by a Job
inside the cluster, and a worker Deployment per workers entry, each allowed exactly what the worker does.

- The pools' base job template: Prefect's default with the target's additions (``job_template_additions``): the
  project's image, the flow-run namespace and a flow-run ServiceAccount without a token, and a job manifest whose pod
  is as hardened as ours (Pod Security "restricted", read-only root filesystem with emptyDirs, resources from the
  template's variables), which reaches the API in the cluster with its credentials from a Secret, never a literal.
  The model's own ``job_variables`` and ``job_configuration`` win over these (``infra.work_pools.templates``).
- Provisioning: ``python -m infra.work_pools`` in a Job after the API is up and before the workers roll, with the
  plan (templates and automations, computed here where the configuration is) in a ConfigMap. It runs again at every
  deploy, so a pool edited in the UI is put back; its report reaches the deploy's notes through the Job's log.
- Workers: one Deployment per ``workers.workers`` entry (entries of one pool may differ in queues, limit and
  resources, which a pod template cannot), ``count`` replicas each, every replica a worker named after its pod.
  Each pool's workers have a ServiceAccount of their own with a Role in the flow-run namespace that grants what
  prefect-kubernetes 0.8.0 calls there (``WORKER_RULES``) and nothing cluster-wide: its observer (kopf) watches only
  that namespace (PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES) with resource scanning off.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from infra.config import StackConfig, WorkerConfig
from infra.kubernetes import database
from infra.kubernetes.objects import (
    APP_UID,
    CONTAINER_ROOT,
    FLOW_RUN_COMPONENT,
    POOL_TYPE,
    PYTHON,
    VENV_BIN,
    WORK_POOLS_COMPONENT,
    WORKER_COMPONENT,
    Manifest,
    Names,
    config_map_volume,
    container,
    container_security_context,
    dns_egress,
    empty_dir,
    flow_run_namespace,
    flow_run_selector,
    http_probe,
    kubernetes_pool_names,
    labels,
    metadata,
    namespace_peer,
    network_ports,
    pod_security_context,
    pod_spec,
    selector,
    topology_spread,
)
from infra.kubernetes.prefect import API_PORT, LAYOUT, LOGGING_DIR, logging_mounts, logging_volumes
from infra.render.prefect_logging import component_environment, logging_environment
from infra.render.workers import worker_command, worker_settings
from infra.work_pools.automations import desired_automations
from infra.work_pools.provision import plan_document
from infra.work_pools.templates import PoolSpec, desired_pools

# Which workers entry a worker pod belongs to (<pool>-<n>), and which pool: a Deployment's selector and a PDB's.
LABEL_WORKER = "prefect-stack.io/worker"
LABEL_POOL = "prefect-stack.io/work-pool"
HEALTH_PORT = 8080
# The stack's Secret key holding 'admin:<password>', as PREFECT_API_AUTH_STRING wants it.
AUTH_KEY = "prefect_auth"
PLAN_DIR = CONTAINER_ROOT / "plan"
PLAN_FILE = "plan.json"
# A finished flow-run Job (and its pod's log) stays a day for `kubectl logs`, then Kubernetes deletes it; without a
# TTL they pile up in the namespace forever. A pool's job_variables.finished_job_ttl overrides it.
FINISHED_JOB_TTL_S = 86400
# Flow-run pods' default requests and limits (the pool's job variables cpu_request, memory_request, memory_limit and
# cpu_limit override them): a Python process running Prefect's engine and a small flow.
FLOW_RUN_RESOURCES = {"cpu_request": "100m", "memory_request": "256Mi", "memory_limit": "1Gi"}
# Prefect's pod template must hold these two (its manifest check refuses a template without them) although they are
# Job fields, not pod fields: the API server drops them with a warning (field validation Warn for the worker's
# client), so the offline schema check removes them before validating.
PREFECT_POD_SPEC_EXTRAS = {"parallelism": 1, "completions": 1}

# What prefect-kubernetes 0.8.0 calls in the flow-run namespace, and why (checked in its worker.py and observer.py):
# - jobs: create (a flow run), delete (a cancellation: kill_infrastructure), get (the observer confirms a deleted
#   Job is gone), list and watch (the observer's kopf watch of Prefect's Jobs, and its look for a replacement Job).
# - pods: list and watch (the observer's watch that turns pod phases into Prefect events, and its reconciliation).
# - pods/log: get (the observer forwards a crashed pod's log to the flow run).
# Not granted: Secrets (only used with PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY or
# STORE_ENV_AS_SECRET, both off: the job template refers to the stack's Secret instead); Events (nothing in 0.8.0
# reads them, and kopf posts none: its logger-to-Event posting is off by default); namespaces (the observer is given
# its namespace, so kopf lists none; 0.8.0 reads no cluster UID from kube-system). API discovery (/api, /apis), which
# kopf does at start, is granted to every authenticated user by the cluster's system:discovery role.
WORKER_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
)


def in_cluster_api_url(config: StackConfig) -> str:
    """The API's Service by its namespace-qualified name: workers and flow-run pods call it directly (not through the
    Ingress), and a flow-run namespace other than the stack's resolves it too."""
    return f"http://{Names.of(config).api}.{config.kubernetes.namespace}.svc:{API_PORT}/api"


def auth_secret(config: StackConfig) -> str:
    """The Secret flow-run pods read PREFECT_API_AUTH_STRING from (key ``AUTH_KEY``), in the flow-run namespace: the
    stack's own there, else the copy deploy makes (``Names.secret_flow_run_auth``, only that key)."""
    names = Names.of(config)
    return names.secret_stack if flow_run_namespace(config) == config.kubernetes.namespace \
        else names.secret_flow_run_auth


def _auth_env(secret: str) -> dict[str, Any]:
    return {"name": "PREFECT_API_AUTH_STRING", "valueFrom": {"secretKeyRef": {"name": secret, "key": AUTH_KEY}}}


# --- the pools' base job template -------------------------------------------------------------------------------


def flow_run_pod_manifest(config: StackConfig) -> dict[str, Any]:
    """The pools' job manifest: Prefect's default Job with its ``{{ ... }}`` placeholders, and a hardened pod."""
    home = str(LAYOUT.prefect_home)
    env = [
        {"name": "PREFECT_API_URL", "value": in_cluster_api_url(config)},
        _auth_env(auth_secret(config)),
        # Every flow run beats, so the zombie-run automation can tell a dead one (infra/work_pools/automations.py).
        {"name": "PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "value": str(config.workers.flow_heartbeat_s)},
        # The root filesystem is read-only: Prefect's home, the home directory and the working directory (where a
        # deployment's pull steps clone or download its code) are on an emptyDir.
        {"name": "PREFECT_HOME", "value": home},
        {"name": "HOME", "value": str(CONTAINER_ROOT)},
    ]
    job_container = {
        "name": "prefect-job",
        "image": "{{ image }}",
        "imagePullPolicy": "{{ image_pull_policy }}",
        "args": "{{ command }}",
        # Prefect puts the run's own variables (PREFECT__FLOW_RUN_ID, the worker's settings, the deployment's env)
        # before these and drops a name of these it sets itself.
        "env": env,
        "workingDir": str(CONTAINER_ROOT),
        "resources": {"requests": {"cpu": "{{ cpu_request }}", "memory": "{{ memory_request }}"},
                      "limits": {"cpu": "{{ cpu_limit }}", "memory": "{{ memory_limit }}"}},
        "securityContext": container_security_context(APP_UID),
        "volumeMounts": [{"name": "state", "mountPath": str(CONTAINER_ROOT)},
                         {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
    }
    pod: dict[str, Any] = {
        **PREFECT_POD_SPEC_EXTRAS,
        "restartPolicy": "Never",
        # No automountServiceAccountToken here: the flow-run ServiceAccount says false, and a pool whose
        # job_variables name another account gets that account's token, as asked.
        "serviceAccountName": "{{ service_account_name }}",
        "enableServiceLinks": False,
        "securityContext": pod_security_context(APP_UID),
        "containers": [job_container],
        "volumes": [empty_dir("state", "1Gi"), empty_dir("tmp", "1Gi")],
    }
    # The project's image comes from kubernetes.image_registry like the stack's: the same pull credentials (a Secret
    # of that name must exist in the flow-run namespace). Placement (node selector, tolerations, priority) is the
    # stack's, not the flows': a pool sets its own through job_configuration.
    if config.kubernetes.scheduling.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in config.kubernetes.scheduling.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"annotations": "{{ annotations }}", "labels": "{{ labels }}", "namespace": "{{ namespace }}",
                     "generateName": "{{ name }}-"},
        "spec": {
            "backoffLimit": "{{ backoff_limit }}",
            "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
            "template": {"metadata": {"labels": flow_run_selector(config)}, "spec": pod},
        },
    }


def job_template_additions(config: StackConfig, image: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variable defaults, job configuration) the target adds to every kubernetes pool's template."""
    variables: dict[str, Any] = {
        "image": image,
        "namespace": flow_run_namespace(config),
        "service_account_name": Names.of(config).flow_run,
        "finished_job_ttl": FINISHED_JOB_TTL_S,
        **FLOW_RUN_RESOURCES,
    }
    return variables, {"job_manifest": flow_run_pod_manifest(config)}


def kubernetes_pools(config: StackConfig, image: str) -> list[PoolSpec]:
    """The model's pools as the server should hold them on this target; raises UserError naming a bad field (the
    renderer calls it, so a deploy refuses a bad template before it changes anything)."""
    variables, configuration = job_template_additions(config, image)
    return desired_pools(config, {POOL_TYPE: variables}, {POOL_TYPE: configuration})


def plan(config: StackConfig, image: str) -> dict[str, Any]:
    """What the provisioning Job brings the server to: the pools and the stack's automations."""
    return plan_document(kubernetes_pools(config, image), desired_automations(config))


# --- provisioning ------------------------------------------------------------------------------------------------


def _provisioning(config: StackConfig, image: str, version: str) -> list[Manifest]:
    names = Names.of(config)
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(config, names.work_pools, WORK_POOLS_COMPONENT),
        "data": {PLAN_FILE: json.dumps(plan(config, image), indent=2, sort_keys=True) + "\n"},
    }
    env = [{"name": "PREFECT_API_URL", "value": in_cluster_api_url(config)},
           _auth_env(names.secret_stack),
           {"name": "PREFECT_HOME", "value": str(LAYOUT.prefect_home)},
           {"name": "HOME", "value": str(CONTAINER_ROOT)}]
    job_container = container(
        "provision", image, None, config.kubernetes.services_resources,
        args=[PYTHON, "-m", "infra.work_pools", str(PLAN_DIR / PLAN_FILE)],
        mounts={"plan": str(PLAN_DIR), "state": str(CONTAINER_ROOT), "tmp": "/tmp"},  # noqa: S108 - an emptyDir
        read_only_mounts=frozenset({"plan"}))
    job_container["env"] = env
    spec = pod_spec([job_container], [config_map_volume("plan", names.work_pools), empty_dir("state", "64Mi"),
                                      empty_dir("tmp", "64Mi")], restartPolicy="Never")
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": metadata(config, names.work_pools, WORK_POOLS_COMPONENT, version=version),
        "spec": {
            # A refused change (a pool whose type changed) fails at once and the same way each time; a few retries
            # cover an API replica restarting under it.
            "backoffLimit": 2,
            "activeDeadlineSeconds": 600,
            "template": {"metadata": {"labels": labels(config, WORK_POOLS_COMPONENT, version)}, "spec": spec},
        },
    }
    return [Manifest(config_map, "pools"), Manifest(job, "pools", rerun=True)]


# --- workers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerDeployment:
    """One workers entry as a Deployment: the pool's ``entry``-th entry (from 1)."""

    pool: str
    entry: int
    worker: WorkerConfig

    @property
    def label(self) -> str:
        return f"{self.pool}-{self.entry}"


def worker_deployments(config: StackConfig) -> list[WorkerDeployment]:
    pools = set(kubernetes_pool_names(config))
    seen: dict[str, int] = {}
    result = []
    for worker in config.workers.workers:
        if worker.pool not in pools:
            continue
        seen[worker.pool] = seen.get(worker.pool, 0) + 1
        result.append(WorkerDeployment(worker.pool, seen[worker.pool], worker))
    return result


def worker_selector(config: StackConfig, deployment: WorkerDeployment | None = None) -> dict[str, str]:
    """Every worker pod of the stack, or one entry's."""
    base = selector(config, WORKER_COMPONENT)
    return {**base, LABEL_WORKER: deployment.label} if deployment else base


def worker_environment(config: StackConfig) -> list[dict[str, Any]]:
    """The worker's environment: the model's settings, the API in the cluster, the credentials from the stack's
    Secret; and where its flow runs read theirs, which it writes into each Job instead of its own value."""
    plain = {
        **worker_settings(config, "0.0.0.0", HEALTH_PORT),  # noqa: S104 - the pod's own address: the kubelet probes it
        "PREFECT_API_URL": in_cluster_api_url(config),
        "PREFECT_HOME": str(LAYOUT.prefect_home),
        "HOME": str(CONTAINER_ROOT),
        # kopf watches only the flow-run namespace: no cluster-wide list of pods and Jobs, no namespace listing.
        "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": flow_run_namespace(config),
        # Prefect copies its own settings into every flow run's environment, the auth string included; with these
        # two it writes a secretKeyRef to this Secret instead of the value into the Job.
        "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME": auth_secret(config),
        "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY": AUTH_KEY,
        **logging_environment(config, LOGGING_DIR),
        **component_environment("$(POD_NAME)"),
    }
    return [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            _auth_env(Names.of(config).secret_stack),
            *({"name": k, "value": v} for k, v in sorted(plain.items()))]


def _worker_deployment(config: StackConfig, image: str, version: str, entry: WorkerDeployment) -> dict[str, Any]:
    names = Names.of(config)
    # Each replica is a worker of its own, named after its pod (Kubernetes expands $(POD_NAME) from the env):
    # the name `kubectl get pods` shows is the one the UI lists.
    command = worker_command(str(VENV_BIN / "prefect"), POOL_TYPE, "$(POD_NAME)", entry.worker)
    worker = container(
        "worker", image, None, entry.worker.resources, args=list(command), ports={"health": HEALTH_PORT},
        mounts={"state": str(CONTAINER_ROOT), "tmp": "/tmp", **logging_mounts(config)},  # noqa: S108 - an emptyDir
        read_only_mounts=frozenset({"logging"}),
        # Importing Prefect and the first poll take seconds on a busy node; the endpoint answers 503 once polling
        # has stalled, which only a restart cures.
        startupProbe=http_probe("/health", "health", period_s=5, failures=24),
        readinessProbe=http_probe("/health", "health", period_s=10, failures=3),
        livenessProbe=http_probe("/health", "health", period_s=15, timeout_s=5, failures=4),
    )
    worker["env"] = worker_environment(config)
    pod_labels = {**labels(config, WORKER_COMPONENT, version), LABEL_WORKER: entry.label, LABEL_POOL: entry.pool}
    spec = pod_spec([worker], [empty_dir("state", "256Mi"), empty_dir("tmp", "256Mi"), *logging_volumes(config)],
                    service_account=names.worker_account(entry.pool),
                    # Flow runs are Jobs of their own: a stopping worker only finishes its current poll.
                    terminationGracePeriodSeconds=30,
                    topologySpreadConstraints=topology_spread(config, WORKER_COMPONENT,
                                                              worker_selector(config, entry)))
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(config, names.worker(entry.pool, entry.entry), WORKER_COMPONENT, version=version,
                             extra_labels={LABEL_POOL: entry.pool}),
        "spec": {
            "replicas": entry.worker.count,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "minReadySeconds": 5,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": worker_selector(config, entry)},
            "template": {"metadata": {"labels": pod_labels}, "spec": spec},
        },
    }


def _worker_pdb(config: StackConfig, entry: WorkerDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": metadata(config, Names.of(config).worker(entry.pool, entry.entry), WORKER_COMPONENT),
        # A drain takes one worker of the entry at a time; the others keep polling (runs already started are Jobs
        # of their own and do not depend on it).
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": worker_selector(config, entry)},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def _in_flow_run_namespace(config: StackConfig, name: str, component: str) -> dict[str, Any]:
    meta = metadata(config, name, component)
    meta["namespace"] = flow_run_namespace(config)
    return meta


def _rbac(config: StackConfig, pool: str) -> list[Manifest]:
    """The pool's workers' identity, and their rights in the flow-run namespace only (a Role, not a ClusterRole)."""
    names = Names.of(config)
    account = names.worker_account(pool)
    service_account = {"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": metadata(config, account, WORKER_COMPONENT, extra_labels={LABEL_POOL: pool})}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _in_flow_run_namespace(config, account, WORKER_COMPONENT),
            "rules": copy.deepcopy(list(WORKER_RULES))}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": _in_flow_run_namespace(config, account, WORKER_COMPONENT),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
               "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": config.kubernetes.namespace}]}
    return [Manifest(service_account, "workers"), Manifest(role, "workers"), Manifest(binding, "workers")]


def _flow_run_account(config: StackConfig) -> Manifest:
    account = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": _in_flow_run_namespace(config, Names.of(config).flow_run, FLOW_RUN_COMPONENT),
               # A flow has no business with the Kubernetes API unless its pool asks (job_variables
               # service_account_name naming an account of the operator's).
               "automountServiceAccountToken": False}
    return Manifest(account, "workers")


def worker_manifests(config: StackConfig, image: str, version: str) -> list[Manifest]:
    """Provisioning, the workers of every kubernetes pool and their RBAC, the flow-run ServiceAccount."""
    pools = kubernetes_pool_names(config)
    if not pools:
        return []
    manifests = _provisioning(config, image, version)
    for pool in pools:
        manifests += _rbac(config, pool)
    manifests.append(_flow_run_account(config))
    for entry in worker_deployments(config):
        manifests.append(Manifest(_worker_deployment(config, image, version, entry), "workers"))
        # Like the other Deployments: a PDB only where a second replica serves during a drain.
        if entry.worker.count >= 2:
            manifests.append(Manifest(_worker_pdb(config, entry), "workers"))
    return manifests


# --- network policies --------------------------------------------------------------------------------------------


def _policy(config: StackConfig, name: str, namespace: str, pod_selector: dict[str, str], component: str,
            egress: list[dict[str, Any]], *, deny_ingress: bool) -> Manifest:
    meta = metadata(config, Names.of(config)(name), component)
    meta["namespace"] = namespace
    spec: dict[str, Any] = {"podSelector": {"matchLabels": pod_selector},
                            "policyTypes": ["Ingress", "Egress"] if deny_ingress else ["Egress"]}
    if deny_ingress:
        spec["ingress"] = []
    spec["egress"] = egress
    obj = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}
    return Manifest(obj, "namespace", "network-policies")


def _to_api(config: StackConfig, from_namespace: str) -> dict[str, Any]:
    peer: dict[str, Any] = {"podSelector": {"matchLabels": selector(config, "api")}}
    if from_namespace != config.kubernetes.namespace:
        peer.update(namespace_peer(config.kubernetes.namespace))
    return {"to": [peer], "ports": network_ports(API_PORT)}


def network_policies(config: StackConfig) -> list[Manifest]:
    """Out of the workers: the API and the Kubernetes API server; of the provisioning Job and the flow-run pods:
    the API. DNS for each (the namespace-wide allow-dns covers the stack's namespace; a flow-run namespace of its own
    gets it in its policy). Nothing comes in to any of them (the kubelet's probes are not subject to policies)."""
    if not config.kubernetes.network_policies or not kubernetes_pool_names(config):
        return []
    namespace, runs = config.kubernetes.namespace, flow_run_namespace(config)
    policies = [
        _policy(config, "workers", namespace, selector(config, WORKER_COMPONENT), WORKER_COMPONENT,
                # The API server is not a pod: its ports with no peer (see database._common_egress).
                [_to_api(config, namespace), {"ports": network_ports(*database.API_SERVER_PORTS)}],
                deny_ingress=True),
        _policy(config, "work-pools", namespace, selector(config, WORK_POOLS_COMPONENT), WORK_POOLS_COMPONENT,
                [_to_api(config, namespace)], deny_ingress=True),
        # Only the API: a flow that needs more (its code from git or S3, a database) gets it from a policy of the
        # operator's selecting the same pods (policies add up).
        _policy(config, "flow-runs", runs, flow_run_selector(config), FLOW_RUN_COMPONENT,
                [_to_api(config, runs), *([dns_egress()] if runs != namespace else [])], deny_ingress=True),
    ]
    return policies


def manifests(config: StackConfig, images: Any, version: str) -> list[Manifest]:
    return [*worker_manifests(config, images.prefect, version), *network_policies(config)]
