"""The building blocks every Kubernetes renderer shares: names, labels, hardened pods, and the Manifest record.

One object is one ``Manifest``: the object itself (a plain dict, as kubectl reads it), the kustomize component it
belongs to (``None``: the base) and the deploy phase that applies it. Names and labels come from here only, so a
Service, its workload, its PDB and its NetworkPolicies always agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

from infra.config import ResourcesConfig, StackConfig

# The order `invoke deploy --target kubernetes` applies them in, waiting between phases. pools: the work pools
# provisioned through the API once it is up; workers: then the workers that poll them.
Phase = Literal["namespace", "data", "migrate", "apps", "pools", "workers", "monitoring"]
PHASES: tuple[Phase, ...] = ("namespace", "data", "migrate", "apps", "pools", "workers", "monitoring")

# Optional features, one kustomize component each (k8s/components/<name>).
Component = Literal["gateway-api", "monitoring", "network-policies", "physical-backups", "redis-sentinel"]
COMPONENTS: tuple[Component, ...] = ("gateway-api", "monitoring", "network-policies", "physical-backups",
                                     "redis-sentinel")

PART_OF = "prefect-stack"
MANAGED_BY = "prefect-stack"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VERSION = "app.kubernetes.io/version"

# The uid of the project's images (compose/images): every container of ours runs as it.
APP_UID = 10001
CONTAINER_ROOT = PurePosixPath("/var/lib/prefect-stack")
APP_HOME = PurePosixPath("/opt/prefect-stack")
VENV_BIN = APP_HOME / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
ETC = PurePosixPath("/etc/prefect-stack")
# The database Cluster's CA certificate (CloudNativePG's <cluster>-ca, the certificate only), where every pod that
# talks to PostgreSQL mounts it to verify the server.
DB_CA_DIR = ETC / "db-ca"
DB_CA_FILE = DB_CA_DIR / "ca.crt"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Manifest:
    """One rendered object, where it lives in the kustomize tree, and when deploy applies it."""

    obj: dict[str, Any]
    phase: Phase
    component: Component | None = None  # None: the base
    # A Job that runs again at every deploy (deploy deletes the finished one first): work that must see the live
    # state each time, like the work pools' provisioning, which puts back what drifted since the last deploy.
    rerun: bool = False

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def api_version(self) -> str:
        return str(self.obj["apiVersion"])

    @property
    def file_name(self) -> str:
        """One object per file, named for the object and its kind: ``prefect-api-deployment.yaml``."""
        return f"{self.name}-{_kebab(self.kind)}.yaml"

    @property
    def directory(self) -> str:
        return "base" if self.component is None else f"components/{self.component}"


def _kebab(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", kind).lower()


def is_dns_label(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS_LABEL.match(name))


@dataclass(frozen=True)
class Names:
    """Every object name, derived from kubernetes.name (default ``prefect``).

    ``cluster``: the CloudNativePG Cluster that is current, when it is not ``<prefix>-db``. A point-in-time recovery
    makes a new Cluster beside the live one, named after its archive (kubernetes.postgres.recovery.server_name);
    this is the one place that decides which Cluster the Poolers, the apps, the backups, the monitors and the
    NetworkPolicies follow.
    """

    prefix: str
    cluster: str | None = None

    @classmethod
    def of(cls, config: StackConfig) -> Names:
        recovery = config.kubernetes.postgres.recovery
        recovered = recovery.server_name if recovery.enabled and config.kubernetes.postgres.mode == "cnpg" else None
        return cls(config.kubernetes.name, recovered)

    def __call__(self, part: str) -> str:
        return f"{self.prefix}-{part}"

    # Prefect
    @property
    def api(self) -> str:
        return self("api")

    @property
    def services(self) -> str:
        return self("services")

    @property
    def backup(self) -> str:
        return self("backup")

    # Workers (infra/kubernetes/workers.py)
    def worker(self, pool: str, entry: int = 1) -> str:
        """The Deployment of a pool's ``entry``-th workers entry (from 1): ``<prefix>-worker-<pool>``, then
        ``-2``, ``-3``... for the pool's further entries."""
        return self(f"worker-{pool}") + ("" if entry == 1 else f"-{entry}")

    def worker_account(self, pool: str) -> str:
        """The ServiceAccount (and its Role and RoleBinding) of a pool's workers."""
        return self(f"worker-{pool}")

    @property
    def flow_run(self) -> str:
        """The flow-run pods' ServiceAccount (no token) in the flow-run namespace."""
        return self("flow-run")

    @property
    def work_pools(self) -> str:
        """The provisioning Job and the ConfigMap holding its plan."""
        return self("work-pools")

    # PostgreSQL (CloudNativePG): the Cluster, its read-write Service, the two Poolers (each a Service too).
    @property
    def database(self) -> str:
        """The current Cluster (see ``cluster``)."""
        return self.cluster or self.original_database

    @property
    def original_database(self) -> str:
        """The Cluster a stack starts with, and the archive name (serverName) its WAL goes to."""
        return self("db")

    @property
    def database_rw(self) -> str:
        """CloudNativePG's Service for the current Cluster's primary."""
        return f"{self.database}-rw"

    @property
    def pooler_transaction(self) -> str:
        return self("pooler-transaction")

    @property
    def pooler_session(self) -> str:
        return self("pooler-session")

    @property
    def database_backups(self) -> str:
        """The Barman Cloud plugin's ObjectStore (physical backups: base backups and the WAL archive)."""
        return self("db-backups")

    # Redis
    @property
    def redis(self) -> str:
        return self("redis")

    @property
    def redis_headless(self) -> str:
        return self("redis-headless")

    @property
    def redis_sentinel(self) -> str:
        return self("redis-sentinel")

    # Secrets: created by `invoke deploy` from the generated secrets (infra/kubernetes/secrets.py), never
    # rendered into a file; the manifests only reference them by these names.
    @property
    def secret_db_superuser(self) -> str:
        """kubernetes.io/basic-auth: username postgres, password (CloudNativePG's superuserSecret)."""
        return self("db-superuser")

    @property
    def secret_db_app(self) -> str:
        """kubernetes.io/basic-auth: the role Prefect connects as (CloudNativePG's initdb owner secret and its
        managed role's passwordSecret)."""
        return self("db-app")

    @property
    def secret_db_monitor(self) -> str:
        """kubernetes.io/basic-auth: the monitor role (prefect_monitor) and its password (a CloudNativePG managed
        role's passwordSecret)."""
        return self("db-monitor")

    @property
    def secret_redis(self) -> str:
        """Keys ``password`` (requirepass, masterauth, Sentinel) and ``monitor-password`` (the exporters' user)."""
        return self("redis")

    @property
    def secret_s3(self) -> str:
        """Keys ``ACCESS_KEY_ID``, ``ACCESS_SECRET_KEY`` (kubernetes.s3_credentials: secret)."""
        return self("s3")

    @property
    def secret_prefect_env(self) -> str:
        """Keys ``api.env.json``, ``services.env.json``, ``migrate.env.json``: each Prefect process's environment,
        read by the entrypoint (infra/containers/entrypoint.py) so no credential is in a pod's env listing."""
        return self("env")

    @property
    def secret_stack(self) -> str:
        """Every generated secret (infra/secrets.py), one key each: the backup CronJob reads them as files."""
        return self("stack-secrets")

    @property
    def secret_flow_run_auth(self) -> str:
        """Key ``prefect_auth`` only: the API's credentials for flow-run pods, made by deploy in the flow-run namespace
        when it is not the stack's (a pod can only read a Secret of its own namespace)."""
        return self("flow-run-auth")

    @property
    def retired_secrets(self) -> tuple[str, ...]:
        """Secrets an earlier deploy created that nothing reads any more; deploy deletes them (prune never touches
        Secrets). ``api-metrics-auth``: the API admin's password, which Prometheus scraped /api/metrics with."""
        return (self("api-metrics-auth"),)

    # Observability
    @property
    def jaeger(self) -> str:
        return self("jaeger")

    @property
    def exporter(self) -> str:
        return self("exporter")

    @property
    def loki(self) -> str:
        return self("loki")

    @property
    def grafana_datasources(self) -> str:
        return self("grafana-datasources")


def labels(config: StackConfig, component: str, version: str | None = None) -> dict[str, str]:
    """The recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels)."""
    result = {
        LABEL_NAME: component,
        LABEL_INSTANCE: config.kubernetes.name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    if version:
        result[LABEL_VERSION] = version
    return result


def selector(config: StackConfig, component: str) -> dict[str, str]:
    """What a Service, PDB or NetworkPolicy selects a workload's pods by: stable across versions."""
    return {LABEL_NAME: component, LABEL_INSTANCE: config.kubernetes.name}


# Prefect sets app.kubernetes.io/name (the flow or deployment), managed-by, part-of and version on flow-run pods and
# replaces ours: the flow-run pods are known by the two it leaves alone.
FLOW_RUN_COMPONENT = "flow-run"
WORKER_COMPONENT = "worker"
WORK_POOLS_COMPONENT = "work-pools"
POOL_TYPE = "kubernetes"


def kubernetes_pool_names(config: StackConfig) -> list[str]:
    """The model's pools that run flows as Jobs here (all of them on this target, while workers are enabled)."""
    if not config.workers.enabled:
        return []
    return [pool.name for pool in config.workers.pools if config.pool_type(pool) == POOL_TYPE]


def flow_run_namespace(config: StackConfig) -> str:
    """Where the kubernetes pools' flow-run Jobs go: kubernetes.flow_run_namespace, else the stack's namespace."""
    return config.kubernetes.flow_run_namespace or config.kubernetes.namespace


def flow_run_selector(config: StackConfig) -> dict[str, str]:
    """The labels of the stack's flow-run pods (set in the pools' job template), as NetworkPolicies select them."""
    return {LABEL_COMPONENT: FLOW_RUN_COMPONENT, LABEL_INSTANCE: config.kubernetes.name}


def worker_side_api_peers(config: StackConfig) -> list[dict[str, Any]]:
    """NetworkPolicy peers of what calls the API for the workers: the provisioning Job, the workers and the flow-run
    pods (from their namespace). None without kubernetes pools."""
    if not kubernetes_pool_names(config):
        return []
    flow_runs: dict[str, Any] = {"podSelector": {"matchLabels": flow_run_selector(config)}}
    if flow_run_namespace(config) != config.kubernetes.namespace:
        flow_runs.update(namespace_peer(flow_run_namespace(config)))
    return [{"podSelector": {"matchLabels": selector(config, WORK_POOLS_COMPONENT)}},
            {"podSelector": {"matchLabels": selector(config, WORKER_COMPONENT)}}, flow_runs]


def prune_selector(config: StackConfig) -> str:
    """The label selector of everything deploy manages for this stack (what prune may delete)."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={config.kubernetes.name}"


def metadata(config: StackConfig, name: str, component: str, *, version: str | None = None,
             annotations: dict[str, str] | None = None, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name, "namespace": config.kubernetes.namespace,
                              "labels": {**labels(config, component, version), **(extra_labels or {})}}
    if annotations:
        result["annotations"] = dict(annotations)
    return result


def resources(spec: ResourcesConfig) -> dict[str, dict[str, str]]:
    limits = {"memory": spec.memory_limit}
    if spec.cpu_limit:
        limits["cpu"] = spec.cpu_limit
    return {"requests": {"cpu": spec.cpu_request, "memory": spec.memory_request}, "limits": limits}


def container_security_context(uid: int | None = APP_UID) -> dict[str, Any]:
    """Pod Security "restricted", plus a read-only root filesystem: what every container of the stack gets."""
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if uid is not None:
        context["runAsUser"] = uid
        context["runAsGroup"] = uid
    return context


def pod_security_context(uid: int | None = APP_UID) -> dict[str, Any]:
    context: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if uid is not None:
        context.update({"runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
                        "fsGroupChangePolicy": "OnRootMismatch"})
    return context


def container(name: str, image: str, command: list[str] | None, spec: ResourcesConfig, *,
              args: list[str] | None = None, env: dict[str, str] | None = None,
              ports: dict[str, int] | None = None, mounts: dict[str, str] | None = None,
              read_only_mounts: frozenset[str] = frozenset(), uid: int | None = APP_UID,
              **probes_and_more: Any) -> dict[str, Any]:
    """A hardened container. ``mounts``: volume name -> mount path; ``probes_and_more``: readinessProbe,
    livenessProbe, startupProbe, lifecycle... as Kubernetes spells them.

    ``command`` replaces the image's ENTRYPOINT: the project's images pass None and their program in ``args``, so
    their tini stays PID 1 (it forwards SIGTERM to the program and reaps its children's zombies)."""
    result: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent"}
    if command is not None:
        result["command"] = command
    if args:
        result["args"] = args
    if env:
        result["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    if ports:
        result["ports"] = [{"name": port_name, "containerPort": port, "protocol": "TCP"}
                           for port_name, port in ports.items()]
    if mounts:
        result["volumeMounts"] = [{"name": volume, "mountPath": path, **({"readOnly": True}
                                                                          if volume in read_only_mounts else {})}
                                  for volume, path in mounts.items()]
    result["resources"] = resources(spec)
    result["securityContext"] = container_security_context(uid)
    result.update(probes_and_more)
    return result


def http_probe(path: str, port: int | str, *, period_s: int = 5, timeout_s: int = 3, failures: int = 3,
               scheme: str = "HTTP") -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port, "scheme": scheme}, "periodSeconds": period_s,
            "timeoutSeconds": timeout_s, "failureThreshold": failures}


def exec_probe(command: list[str], *, period_s: int = 10, timeout_s: int = 5, failures: int = 3) -> dict[str, Any]:
    return {"exec": {"command": command}, "periodSeconds": period_s, "timeoutSeconds": timeout_s,
            "failureThreshold": failures}


def secret_volume(volume: str, secret_name: str, items: dict[str, str] | None = None) -> dict[str, Any]:
    """A Secret as files (0400 to the pod's fsGroup): how every credential reaches a container."""
    source: dict[str, Any] = {"secretName": secret_name, "defaultMode": 0o440}
    if items:
        source["items"] = [{"key": key, "path": path} for key, path in items.items()]
    return {"name": volume, "secret": source}


def config_map_volume(volume: str, config_map: str) -> dict[str, Any]:
    return {"name": volume, "configMap": {"name": config_map, "defaultMode": 0o444}}


def empty_dir(volume: str, size_limit: str | None = None) -> dict[str, Any]:
    return {"name": volume, "emptyDir": {"sizeLimit": size_limit} if size_limit else {}}


HOSTNAME_KEY, ZONE_KEY = "kubernetes.io/hostname", "topology.kubernetes.io/zone"


def topology_spread(config: StackConfig, component: str,
                    match_labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A Deployment's replicas across nodes (required) and zones (preferred). ``match_labels``: the pods' own labels
    when an operator makes them (CloudNativePG's ``cnpg.io/poolerName``), else the component's.

    Nodes: DoNotSchedule, so two replicas never share a node while another node could take one (a preferred spread
    let the scheduler stack them, and one node's loss took both). A single-node cluster still schedules them all (one
    domain has no skew). Tainted nodes the pods cannot run on are not counted (nodeTaintsPolicy Honor: a control-plane
    node would otherwise hold the minimum at 0 and block the second replica), and only the current ReplicaSet's pods
    are (matchLabelKeys pod-template-hash), so a rolling update's surge pod is never blocked by the old ones.
    Zones: ScheduleAnyway, as clusters in one zone are common."""
    labels = match_labels or selector(config, component)
    # A fresh selector per constraint: a dict shared between two places is written as a YAML anchor and alias.
    return [
        {"maxSkew": 1, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": dict(labels)}, "matchLabelKeys": ["pod-template-hash"],
         "nodeTaintsPolicy": "Honor"},
        {"maxSkew": 1, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": dict(labels)}},
    ]


def dns_egress() -> dict[str, Any]:
    """DNS (port 53, UDP and TCP) to any peer. The cluster's resolver is not always a pod in kube-system: NodeLocal
    DNSCache answers on the host network (always on in GKE Autopilot), OpenShift's lives in openshift-dns; a pod or
    namespace selector would cut every pod off from DNS there."""
    return {"ports": network_ports(53, protocol="UDP") + network_ports(53)}


def pod_spec(containers: list[dict[str, Any]], volumes: list[dict[str, Any]], *,
             init_containers: list[dict[str, Any]] | None = None, uid: int | None = APP_UID,
             service_account: str | None = None, **more: Any) -> dict[str, Any]:
    """A pod with no service-account token unless it names a service account that needs one."""
    # No service links: Kubernetes would inject every Service's address as environment variables (noise in every
    # process's environment, and names like REDIS_PORT that some clients read as their own settings).
    spec: dict[str, Any] = {"automountServiceAccountToken": service_account is not None, "enableServiceLinks": False}
    if service_account:
        spec["serviceAccountName"] = service_account
    spec["securityContext"] = pod_security_context(uid)
    if init_containers:
        spec["initContainers"] = init_containers
    spec["containers"] = containers
    if volumes:
        spec["volumes"] = volumes
    spec.update(more)
    return spec


# --- NetworkPolicy building blocks, shared by every part's policies. ---


def namespace_peer(namespace: str) -> dict[str, Any]:
    """Every pod of a namespace (the label the API server sets on each namespace)."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def anywhere() -> list[dict[str, Any]]:
    """Any address, IPv4 and IPv6: for what is not a pod (the API server, S3, an external database)."""
    return [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]


def network_ports(*ports: int, protocol: str = "TCP") -> list[dict[str, Any]]:
    return [{"protocol": protocol, "port": port} for port in ports]


def url_port(url: str) -> int:
    """The port a URL names, else its scheme's (443 for https, 80 otherwise)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)
