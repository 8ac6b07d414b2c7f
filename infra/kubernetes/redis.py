"""Redis on Kubernetes: a StatefulSet with a Sentinel beside every Redis (the default), one standalone Redis, or an
external one; the NetworkPolicy of the Redis pods, their PodDisruptionBudget and PodMonitor; and the URLs Prefect's
processes are given (``redis_environment``).

No secret is rendered here. The pods read the passwords at start from the mounted Secret ``Names.secret_redis``
and write the configuration into an emptyDir (the root filesystem is read-only). The start scripts and the
configuration templates live in one ConfigMap; the scripts are shipped files (infra/scripts/redis, under
shellcheck) that read their values from the containers' environment (``_script_env``); the redis.conf template is
the local target's own (``infra.render.redis.redis_settings``), so every target runs Redis with the same settings.

Sentinel bootstrap (start-redis.sh and start-sentinel.sh, same rule in both): ask the other pods' Sentinels which
Redis is the primary; if none answers (a first start, or every pod restarting at once), pod 0 is the primary and
the others replicate it. So a pod that comes back after a failover joins the new primary as a replica, and pods
may start in parallel. The one case it cannot judge: every pod down at once after a failover, when pod 0's data
may be older than the last primary's; pod 0 still wins (its replicas resynchronise from it).

A primary that is being stopped (rollout, drain) hands its role over first (pre-stop.sh: writes paused, a
Sentinel failover, the promoted replica followed), so a rollout costs clients a pause of about a second and the
one write in flight, not down-after-milliseconds of errors. An unplanned loss of the primary is a Sentinel
failover (DOWN_AFTER_MS, then a promotion); the background services' entrypoint (infra/containers/entrypoint.py
``--follow-redis``) sees the new primary's run id through the Sentinel URL and restarts them against it. A primary
cut off from the Sentinels' majority stops taking writes (min-replicas-to-write), so the writes a failover would
discard are refused instead. The project's exporter reads the streams on the primary the Sentinels name
(infra/kubernetes/monitoring.py), as the monitor user, which the Sentinels know too.
tests/unit/test_redis_sentinel_failover.py runs these scripts for real on loopback ports.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote, urlencode

from infra.config import ResourcesConfig, StackConfig
from infra.errors import UserError
from infra.exporter.event_streams import STREAMS
from infra.kubernetes.objects import (
    HOSTNAME_KEY,
    ZONE_KEY,
    Component,
    Manifest,
    Names,
    config_map_volume,
    container,
    dns_egress,
    empty_dir,
    exec_probe,
    labels,
    metadata,
    pod_spec,
    secret_volume,
    selector,
    topology_spread,
)
from infra.render.prefect import REDIS_BACKENDS
from infra.render.redis import DOCKET_DB, MESSAGING_DB, MONITOR_USER, redis_settings
from infra.scripts import script
from infra.secrets import Secrets

COMPONENT = "redis"  # the pods' app.kubernetes.io/name and component label
REDIS_PORT = 6379
SENTINEL_PORT = 26379
EXPORTER_PORT = 9121
# The Sentinels' name for the primary: part of every redis+sentinel:// URL (the scripts get it as MASTER_SET).
MASTER_SET = "prefect"
# A primary that answers nothing for this long is "subjectively down"; with the quorum agreeing, a replica is
# promoted. Shorter fails over faster but risks a failover on a slow disk's fsync stall.
DOWN_AFTER_MS = 5000
FAILOVER_TIMEOUT_MS = 60000
# A primary refuses writes once too few replicas have acknowledged its stream for this long (replicas acknowledge
# every second): as long as the Sentinels wait before they call it down, so a primary partitioned away from them
# stops taking writes about when the other side starts promoting a replica, and not a window of writes later
# (writes that the failover would discard when it rejoins as a replica).
MIN_REPLICAS_MAX_LAG_S = DOWN_AFTER_MS // 1000

# Where things are in the pod.
SCRIPTS_DIR = "/etc/redis-scripts"  # the ConfigMap: scripts and templates
SECRET_DIR = "/etc/redis-secret"  # noqa: S105 - a path; the Secret (password, monitor-password) is mounted there
RUN_DIR = "/run/redis"              # emptyDir: the configuration files with the passwords filled in
DATA_DIR = "/data"                  # the PersistentVolumeClaim: AOF and RDB
EXPORTER_RUN_DIR = "/run/redis-exporter"

# Key names in the Secret, and the file names under SECRET_DIR that the scripts read (common.sh's read_secret,
# start-exporter.sh): a fixed layout, like the file names under SCRIPTS_DIR and RUN_DIR.
SECRET_KEY_PASSWORD = "password"  # noqa: S105 - a key name in the Secret
SECRET_KEY_MONITOR = "monitor-password"  # noqa: S105 - a key name

# The sidecars get requests equal to limits too: a pod is Guaranteed QoS only if every container is.
SENTINEL_RESOURCES = ResourcesConfig(cpu_request="50m", memory_request="64Mi", cpu_limit="50m", memory_limit="64Mi")
EXPORTER_RESOURCES = ResourcesConfig(cpu_request="50m", memory_request="96Mi", cpu_limit="50m", memory_limit="96Mi")


# What the monitor user may ask a Sentinel: redis-py's discovery of the primary (SENTINEL MASTERS), the other
# read-only views of it, and a connection's handshake.
SENTINEL_MONITOR_COMMANDS = ("-@all +sentinel|masters +sentinel|master +sentinel|get-master-addr-by-name +ping +auth "
                             "+hello")


def quorum(replicas: int) -> int:
    """Sentinels that must agree the primary is down: a majority, so a partitioned minority never fails over."""
    return replicas // 2 + 1


def min_replicas_to_write(replicas: int) -> int:
    """Replicas a primary must reach to accept writes: the rest of a majority. A primary on the minority side of a
    partition reaches fewer and stops writing; one replica down (of 3) or two (of 5) does not stop writes."""
    return quorum(replicas) - 1


# --- configuration templates and scripts (the ConfigMap) ---------------------------------------------------------

# Filled in at start by common.sh's `fill`, from the mounted Secret and the pod's own name (common.sh spells
# @REDIS_PASSWORD@ itself; the other names are fill's arguments in the start scripts).
PASSWORD_PLACEHOLDER = "@REDIS_PASSWORD@"  # noqa: S105 - a placeholder
MONITOR_PLACEHOLDER = "@MONITOR_PASSWORD@"
ANNOUNCE_PLACEHOLDER = "@ANNOUNCE_HOST@"
MASTER_HOST_PLACEHOLDER = "@MASTER_HOST@"
MASTER_PORT_PLACEHOLDER = "@MASTER_PORT@"


def redis_conf_template(config: StackConfig, *, sentinel: bool, port: int = REDIS_PORT, bind: str = "* -::*",
                        data_dir: str = DATA_DIR) -> str:
    text = redis_settings(config, password=PASSWORD_PLACEHOLDER, monitor_password=MONITOR_PLACEHOLDER,
                          data_dir=data_dir, bind=bind, port=port)
    if sentinel:
        text += f"""\
# Replication: any pod may be a replica of whichever pod the Sentinels name the primary (start-redis.sh appends
# replicaof). Replicas announce their pod DNS name, so Sentinel and clients find them after a pod moves.
masterauth {PASSWORD_PLACEHOLDER}
replica-announce-ip {ANNOUNCE_PLACEHOLDER}
replica-announce-port {port}
# Writes need a majority: a primary with fewer replicas acknowledging within the lag (partitioned from the
# Sentinels, which promote a replica on the other side) answers NOREPLICAS instead of taking writes the
# failover would discard. Only replicas count, so a single Redis (standalone, compose, local) has none of this.
min-replicas-to-write {min_replicas_to_write(config.kubernetes.redis.replicas)}
min-replicas-max-lag {MIN_REPLICAS_MAX_LAG_S}
"""
    return text


def sentinel_conf_template(config: StackConfig, *, port: int = SENTINEL_PORT, bind: str = "* -::*",
                           run_dir: str = RUN_DIR) -> str:
    q = quorum(config.kubernetes.redis.replicas)
    return f"""\
# Rendered by prefect-stack from the configuration model; edit the model, not this file.
# Sentinel rewrites this file (known replicas and Sentinels, epochs): it lives in the pod's emptyDir.
port {port}
bind {bind}
daemonize no
logfile ""
dir {run_dir}
# Clients and the other Sentinels authenticate, with the data nodes' password.
requirepass {PASSWORD_PLACEHOLDER}
# The project's exporter asks, as the monitor user, where the primary is; nothing else (no failover, no SET).
user {MONITOR_USER} on >{MONITOR_PLACEHOLDER} resetchannels {SENTINEL_MONITOR_COMMANDS}
sentinel sentinel-pass {PASSWORD_PLACEHOLDER}
# Pods are found by their stable DNS names (the headless Service), not by IPs that change when a pod moves.
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip {ANNOUNCE_PLACEHOLDER}
sentinel announce-port {port}
sentinel monitor {MASTER_SET} {MASTER_HOST_PLACEHOLDER} {MASTER_PORT_PLACEHOLDER} {q}
sentinel auth-pass {MASTER_SET} {PASSWORD_PLACEHOLDER}
sentinel down-after-milliseconds {MASTER_SET} {DOWN_AFTER_MS}
sentinel failover-timeout {MASTER_SET} {FAILOVER_TIMEOUT_MS}
sentinel parallel-syncs {MASTER_SET} 1
"""


def config_files(config: StackConfig, *, sentinel: bool, redis_port: int = REDIS_PORT,
                 sentinel_port: int = SENTINEL_PORT, bind: str = "* -::*", data_dir: str = DATA_DIR,
                 run_dir: str = RUN_DIR) -> dict[str, str]:
    """The ConfigMap's files: the shipped scripts (infra/scripts/redis, their values in ``_script_env``) and the
    configuration templates. The parameters exist for the real-process test (loopback ports, temp dirs)."""
    files = {name: script(f"redis/{name}") for name in ("common.sh", "start-redis.sh", "probe.sh")}
    files["redis.conf"] = redis_conf_template(config, sentinel=sentinel, port=redis_port, bind=bind,
                                              data_dir=data_dir)
    if sentinel:
        files["start-sentinel.sh"] = script("redis/start-sentinel.sh")
        files["pre-stop.sh"] = script("redis/pre-stop.sh")
        files["sentinel.conf"] = sentinel_conf_template(config, port=sentinel_port, bind=bind, run_dir=run_dir)
    if config.monitoring.enabled:
        files["start-exporter.sh"] = script("redis/start-exporter.sh")
    return files


# --- addresses ---------------------------------------------------------------------------------------------------


def pod_names(config: StackConfig) -> list[str]:
    names = Names.of(config)
    replicas = config.kubernetes.redis.replicas if config.kubernetes.redis.mode == "sentinel" else 1
    return [f"{names.redis}-{i}" for i in range(replicas)]


def pod_host(config: StackConfig, pod: str) -> str:
    """A pod's stable DNS name through the headless Service. Without the cluster domain: it is not in the model,
    and every pod's resolv.conf search list completes ``<pod>.<service>.<namespace>.svc``."""
    return f"{pod}.{Names.of(config).redis_headless}.{config.kubernetes.namespace}.svc"


def sentinel_members(config: StackConfig) -> list[str]:
    return [f"{pod_host(config, pod)}:{SENTINEL_PORT}" for pod in pod_names(config)]


# --- Prefect's environment ---------------------------------------------------------------------------------------


def redis_environment(config: StackConfig, secrets: Secrets) -> dict[str, str]:
    """Prefect's Redis settings for this mode, with the password in the URLs: the prefect-redis backends, the
    connection URLs, a connect timeout.

    One URL per database: ``PREFECT_REDIS_MESSAGING_URL`` (prefect-redis: messaging, ordering, lease storage) and
    ``PREFECT_SERVER_DOCKET_URL``; both libraries parse ``redis+sentinel://`` the same way. The Sentinel URL lists
    every pod's Sentinel rather than the Sentinel Service: the client tries them in turn, so no Service endpoint
    state (a pod not ready during a failover) stands between a client and a Sentinel that can answer.
    """
    password = secrets.get("redis")
    mode = config.kubernetes.redis.mode
    if mode == "sentinel":
        members = ",".join(sentinel_members(config))
        # prefect-redis and docket read the Sentinels' password from this query option; the userinfo is the data
        # nodes' (the same password here).
        query = urlencode({"sentinel_password": password})
        urls = {db: f"redis+sentinel://:{quote(password, safe='')}@{members}/{MASTER_SET}/{db}?{query}"
                for db in (MESSAGING_DB, DOCKET_DB)}
    elif mode == "standalone":
        host = f"{Names.of(config).redis}.{config.kubernetes.namespace}.svc"
        urls = {db: f"redis://:{quote(password, safe='')}@{host}:{REDIS_PORT}/{db}" for db in (MESSAGING_DB, DOCKET_DB)}
    else:
        urls = {db: _external_url(config, password, db) for db in (MESSAGING_DB, DOCKET_DB)}
    return {
        **REDIS_BACKENDS,
        "PREFECT_REDIS_MESSAGING_URL": urls[MESSAGING_DB],
        "PREFECT_SERVER_DOCKET_URL": urls[DOCKET_DB],
        # prefect-redis connects without a timeout by default: a connection to the address of a pod that is
        # gone would hang for minutes of SYN retries instead of moving on to the next Sentinel or the new
        # primary. (Docket bounds its connects itself.)
        "PREFECT_REDIS_MESSAGING_SOCKET_CONNECT_TIMEOUT": "5",
    }


def _external_url(config: StackConfig, password: str, db: int) -> str:
    """kubernetes.redis.external_url with the password (for the data nodes) and the database number.

    A Sentinel URL gets no ``sentinel_password``: Sentinels without a password reject an AUTH, and the model
    keeps no second password; Sentinels that require one need the URL given in full to Prefect instead.
    """
    url = config.kubernetes.redis.external_url or ""  # the config validator requires it in external mode
    scheme, _, rest = url.partition("://")
    netloc, _, path_and_query = rest.partition("/")
    path, question, query = path_and_query.partition("?")
    segments = [s for s in path.split("/") if s]
    wanted = 1 if scheme.endswith("+sentinel") else 0
    if len(segments) != wanted:
        example = "redis+sentinel://host1:26379,host2:26379/<name>" if wanted else "redis://host:6379"
        raise UserError(f"kubernetes.redis.external_url {url!r} must not name a database: the stack uses "
                        f"databases {MESSAGING_DB} (messaging) and {DOCKET_DB} (Docket)",
                        fix=f"set it to {example}")
    tail = f"?{query}" if question else ""
    return f"{scheme}://:{quote(password, safe='')}@{netloc}/{'/'.join([*segments, str(db)])}{tail}"


# --- objects -----------------------------------------------------------------------------------------------------


def redis_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    mode = config.kubernetes.redis.mode
    if mode == "external":
        return []
    sentinel = mode == "sentinel"
    component: Component | None = "redis-sentinel" if sentinel else None
    names = Names.of(config)
    files = config_files(config, sentinel=sentinel)
    scripts = Manifest({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": metadata(config, names("redis-scripts"), COMPONENT),
                        "data": files}, "data", component)
    manifests = [scripts]
    if sentinel:
        manifests += [
            Manifest(_headless_service(config), "data", component),
            Manifest(_sentinel_service(config), "data", component),
            Manifest(_stateful_set(config, images.system, files), "data", component),
            Manifest(_disruption_budget(config), "data", component),
        ]
    else:
        manifests += [
            Manifest(_standalone_service(config), "data", component),
            Manifest(_stateful_set(config, images.system, files), "data", component),
        ]
    if config.kubernetes.network_policies:
        manifests.append(Manifest(_network_policy(config), "namespace", "network-policies"))
    if config.monitoring.enabled:
        manifests.append(Manifest(_pod_monitor(config), "monitoring", "monitoring"))
    return manifests


def _service_port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


def _headless_service(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(config, Names.of(config).redis_headless, COMPONENT),
            "spec": {"clusterIP": "None",
                     # Every pod's DNS name exists from its start, ready or not: the bootstrap and the Sentinels
                     # find each other by these names before anything is ready.
                     "publishNotReadyAddresses": True,
                     "selector": selector(config, COMPONENT),
                     "ports": [_service_port("redis", REDIS_PORT), _service_port("sentinel", SENTINEL_PORT)]}}


def _sentinel_service(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(config, Names.of(config).redis_sentinel, COMPONENT),
            "spec": {"type": "ClusterIP",
                     # A replica is not ready while its primary is down: during a failover every pod may be
                     # unready, exactly when clients ask the Sentinels where the new primary is.
                     "publishNotReadyAddresses": True,
                     "selector": selector(config, COMPONENT),
                     "ports": [_service_port("sentinel", SENTINEL_PORT)]}}


def _standalone_service(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(config, Names.of(config).redis, COMPONENT),
            "spec": {"type": "ClusterIP", "selector": selector(config, COMPONENT),
                     "ports": [_service_port("redis", REDIS_PORT)]}}


def exporter_env(listen_port: int = EXPORTER_PORT) -> dict[str, str]:
    """What start-exporter.sh reads besides the paths and REDIS_PORT. The parameter exists for the real-process
    test."""
    return {"EXPORTER_PORT": str(listen_port), "MONITOR_USER": MONITOR_USER,
            "EXPORTER_STREAMS": ",".join(f"db{MESSAGING_DB}={s}" for s in STREAMS)}


def _script_env(config: StackConfig, sentinel: bool) -> list[dict[str, Any]]:
    """What the scripts read (infra/scripts/redis: common.sh lists it). POD_NAME first: the others refer to it."""
    names = Names.of(config)
    announce = pod_host(config, "$(POD_NAME)") if sentinel else names.redis
    values = {
        "ANNOUNCE_HOST": announce,
        "REDIS_PORT": str(REDIS_PORT),
        "SENTINEL_PORT": str(SENTINEL_PORT),
        "REDIS_NODES": " ".join(f"{pod_host(config, pod)}:{REDIS_PORT}" for pod in pod_names(config))
        if sentinel else f"{names.redis}:{REDIS_PORT}",
        "SENTINELS": " ".join(sentinel_members(config)) if sentinel else "",
        "MASTER_SET": MASTER_SET,
        "SCRIPTS_DIR": SCRIPTS_DIR,
        "SECRET_DIR": SECRET_DIR,
        "RUN_DIR": RUN_DIR,
        "EXPORTER_RUN_DIR": EXPORTER_RUN_DIR,
    }
    if config.monitoring.enabled:
        values |= exporter_env()
    return [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *({"name": k, "value": v} for k, v in values.items())]


def _probe(check: str, **timing: int) -> dict[str, Any]:
    return exec_probe(["sh", f"{SCRIPTS_DIR}/probe.sh", check], **timing)


def _stateful_set(config: StackConfig, image: str, files: dict[str, str]) -> dict[str, Any]:
    names = Names.of(config)
    redis_config = config.kubernetes.redis
    sentinel = redis_config.mode == "sentinel"
    env = _script_env(config, sentinel)
    mounts = {"scripts": SCRIPTS_DIR, "secret": SECRET_DIR, "run": RUN_DIR}
    read_only = frozenset({"scripts", "secret"})
    # command None: the image's entrypoint (tini) stays PID 1 and forwards SIGTERM to redis-server.
    redis = container("redis", image, None, redis_config.resources, args=["sh", f"{SCRIPTS_DIR}/start-redis.sh"],
                      ports={"redis": REDIS_PORT}, mounts={**mounts, "data": DATA_DIR}, read_only_mounts=read_only,
                      readinessProbe=_probe("redis-ready", period_s=5, timeout_s=5, failures=2),
                      livenessProbe=_probe("redis-alive", period_s=10, timeout_s=5, failures=6))
    if sentinel:
        redis["lifecycle"] = {"preStop": {"exec": {"command": ["sh", f"{SCRIPTS_DIR}/pre-stop.sh"]}}}
    containers = [redis]
    if sentinel:
        containers.append(container(
            "sentinel", image, None, SENTINEL_RESOURCES, args=["sh", f"{SCRIPTS_DIR}/start-sentinel.sh"],
            ports={"sentinel": SENTINEL_PORT}, mounts=mounts, read_only_mounts=read_only,
            readinessProbe=_probe("sentinel", period_s=5, timeout_s=5, failures=2),
            livenessProbe=_probe("sentinel", period_s=10, timeout_s=5, failures=6)))
    if config.monitoring.enabled:
        containers.append(container(
            "exporter", image, None, EXPORTER_RESOURCES, args=["sh", f"{SCRIPTS_DIR}/start-exporter.sh"],
            ports={"metrics": EXPORTER_PORT},
            mounts={"scripts": SCRIPTS_DIR, "secret": SECRET_DIR, "exporter-run": EXPORTER_RUN_DIR},
            read_only_mounts=read_only,
            # Liveness only: a readiness probe of a sidecar decides whether the whole pod is Ready, and a Redis
            # must not leave rotation (nor count as disrupted) because its exporter is slow. A hung exporter is
            # restarted alone.
            livenessProbe={"tcpSocket": {"port": "metrics"}, "periodSeconds": 10, "timeoutSeconds": 3,
                           "failureThreshold": 6}))
    for c in containers:
        c["env"] = env
    volumes = [config_map_volume("scripts", names("redis-scripts")),
               secret_volume("secret", names.secret_redis,
                             {SECRET_KEY_PASSWORD: SECRET_KEY_PASSWORD, SECRET_KEY_MONITOR: SECRET_KEY_MONITOR}),
               empty_dir("run", "16Mi")]
    if config.monitoring.enabled:
        volumes.append(empty_dir("exporter-run", "1Mi"))
    # Room for pre-stop.sh (at most about 25 s, usually 2) and then Redis's own shutdown (it waits for replicas).
    spec = pod_spec(containers, volumes, enableServiceLinks=False, terminationGracePeriodSeconds=45)
    if sentinel:
        # One Redis (and its Sentinel) per node, required: two of three on one node lose the Sentinels' majority
        # with that node, and then no failover can happen. Sentinel mode therefore needs three schedulable nodes
        # (redis mode standalone runs on one). Zones stay preferred.
        spec["topologySpreadConstraints"] = [c for c in topology_spread(config, COMPONENT)
                                             if c["topologyKey"] == ZONE_KEY]
        spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": HOSTNAME_KEY, "labelSelector": {"matchLabels": selector(config, COMPONENT)}}]}}
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                  "resources": {"requests": {"storage": redis_config.storage_size}}}
    if config.kubernetes.storage_class:
        claim_spec["storageClassName"] = config.kubernetes.storage_class
    # A change of the scripts or templates restarts the pods (one at a time) to take effect.
    files_hash = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": metadata(config, names.redis, COMPONENT),
        "spec": {
            "serviceName": names.redis_headless if sentinel else names.redis,
            "replicas": len(pod_names(config)),
            # The bootstrap does not need pod 0 first (see the module docstring): all pods start at once.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector(config, COMPONENT)},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": labels(config, COMPONENT),
                             "annotations": {"prefect-stack/config-hash": files_hash}},
                "spec": spec,
            },
            "volumeClaimTemplates": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                      "metadata": {"name": "data", "labels": labels(config, COMPONENT)},
                                      "spec": claim_spec}],
        },
    }


def _disruption_budget(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(config, Names.of(config).redis, COMPONENT),
            # A drain takes one Redis at a time: the quorum of Sentinels and a replica to promote always remain.
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(config, COMPONENT)}}}


def _port(port: int, protocol: str = "TCP") -> dict[str, Any]:
    return {"port": port, "protocol": protocol}


def _network_policy(config: StackConfig) -> dict[str, Any]:
    sentinel = config.kubernetes.redis.mode == "sentinel"
    redis_ports = [_port(REDIS_PORT), *([_port(SENTINEL_PORT)] if sentinel else [])]
    own_pods = {"podSelector": {"matchLabels": selector(config, COMPONENT)}}
    # Prefect's processes, and with monitoring the project's exporter (stream lengths and consumer-group lag).
    users = ("api", "services", *(("exporter",) if config.monitoring.enabled else ()))
    clients = [{"podSelector": {"matchLabels": selector(config, name)}} for name in users]
    ingress: list[dict[str, Any]] = [
        # Prefect's processes, and the Redis pods themselves (replication, Sentinel gossip and bootstrap).
        {"from": [*clients, own_pods], "ports": redis_ports},
    ]
    if config.monitoring.enabled:
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": config.kubernetes.prometheus_namespace}}}],
            "ports": [_port(EXPORTER_PORT)]})
    egress: list[dict[str, Any]] = [
        dns_egress(),
    ]
    if sentinel:
        egress.append({"to": [own_pods], "ports": redis_ports})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(config, Names.of(config).redis, COMPONENT),
            "spec": {"podSelector": {"matchLabels": selector(config, COMPONENT)},
                     "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress}}


def _pod_monitor(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": metadata(config, Names.of(config).redis, COMPONENT,
                                 extra_labels={"release": config.kubernetes.prometheus_release}),
            "spec": {"selector": {"matchLabels": selector(config, COMPONENT)},
                     "podMetricsEndpoints": [{"port": "metrics", "interval": "30s"}]}}

