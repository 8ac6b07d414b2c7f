"""Observability on Kubernetes, in kube-prometheus-stack's conventions: the stack's alert rules as a
``PrometheusRule``, a ``ServiceMonitor`` for the project's exporter, the exporter itself, Grafana dashboards as
ConfigMaps for Grafana's sidecar, an optional Jaeger and Loki (with a Grafana datasource for Loki that links a
record's trace id to Jaeger), and the NetworkPolicies of the exporter's, Jaeger's and Loki's pods.

The API replicas are not scraped: their /api/metrics sits behind Prefect's single auth string, the admin's, which
Prometheus must not hold, and no HAProxy stands in front of them here to swap credentials (the other targets scrape
through its metrics-only listener). What the API dashboard showed from those scrapes (replicas up, memory, CPU)
comes from kube-prometheus-stack's kube-state-metrics and cAdvisor series instead (infra/render/dashboards.py).

Everything is rendered from the same sources as the other targets: the rules from infra/render/alert_rules.py
(its Kubernetes variant), the dashboards from infra/render/dashboards.py, Jaeger's and Loki's configurations from
the compose target's ``jaeger_yaml`` and ``loki_yaml``, the exporter from infra/exporter. The PostgreSQL/PgBouncer
PodMonitors and the Redis exporter's monitor belong to infra/kubernetes/database.py and redis.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import urlsplit

import yaml

from infra.config import ResourcesConfig, StackConfig
from infra.kubernetes import database
from infra.kubernetes import redis as redis_pods
from infra.kubernetes.objects import (
    APP_HOME,
    DB_CA_DIR,
    PYTHON,
    Manifest,
    Names,
    config_map_volume,
    container,
    dns_egress,
    empty_dir,
    metadata,
    namespace_peer,
    network_ports,
    pod_spec,
    secret_volume,
    selector,
)
from infra.render.alert_rules import kubernetes_alert_groups
from infra.render.dashboards import dashboards, jaeger_datasource, loki_datasource
from infra.render.jaeger import JAEGER_DATA_DIR, JAEGER_OTLP_HTTP, JAEGER_UI, jaeger_needs_volume, jaeger_yaml
from infra.render.loki import LOKI_DATA_DIR, LOKI_HTTP, LOKI_USER, loki_otlp_logs_url, loki_yaml

MONITORING_API = "monitoring.coreos.com/v1"
EXPORTER = "exporter"
JAEGER = "jaeger"
LOKI = "loki"
API = "api"
SERVICES = "services"

# Job names are part of the alert rules' and dashboards' contract (infra/render/prometheus.py): relabelled to the
# local target's, whatever the Service is called.
EXPORTER_JOB = "prefect-exporter"
METRICS_PORT_NAME = "metrics"

# The Redis pods' ports (infra/kubernetes/redis.py): Redis and, in sentinel mode, Sentinel beside it.
REDIS_PORT, SENTINEL_PORT = redis_pods.REDIS_PORT, redis_pods.SENTINEL_PORT
POSTGRES_PORT = 5432
# CloudNativePG labels every instance pod with its Cluster's name.
CNPG_CLUSTER_LABEL = "cnpg.io/cluster"

SECRETS_DIR = "/run/secrets/prefect-stack"
# One scrape reads PostgreSQL and Redis with bounded queries: a small, steady footprint.
EXPORTER_RESOURCES = ResourcesConfig(cpu_request="50m", memory_request="128Mi", memory_limit="256Mi")

# Jaeger: OTLP gRPC and HTTP in, the UI, and the health-check extension (jaeger_yaml).
JAEGER_OTLP_GRPC, JAEGER_HEALTH = 4317, 13133
JAEGER_PORTS = {"otlp-grpc": JAEGER_OTLP_GRPC, "otlp-http": JAEGER_OTLP_HTTP, "ui": JAEGER_UI,
                "health": JAEGER_HEALTH}
# The upstream image's user (jaegertracing/jaeger cmd/jaeger/Dockerfile: USER 10001), stated so the pod's
# runAsNonRoot check does not depend on the image's metadata.
JAEGER_UID = 10001
JAEGER_CONFIG_DIR = "/etc/jaeger"
# Badger's volume (tracing.jaeger_storage): a PersistentVolumeClaim, so a restarted or rescheduled pod keeps the
# retained traces; an emptyDir would lose them and be evicted once spans outgrow its size limit. One replica with a
# ReadWriteOnce volume, hence the Recreate strategy (kept for the memory store: one store, one pod).
JAEGER_RESOURCES = ResourcesConfig(cpu_request="100m", memory_request="256Mi", memory_limit="1Gi")

# Loki: one single-binary pod on a PersistentVolumeClaim (logs.loki_storage), Recreate like Jaeger. Its chunks are
# flushed to the volume and the write-ahead log replays after a restart; the memory it holds is the open chunks of
# the Prefect pods' streams plus query caches.
LOKI_PORTS = {"http": LOKI_HTTP}
LOKI_CONFIG_DIR = "/etc/loki"
LOKI_RESOURCES = ResourcesConfig(cpu_request="100m", memory_request="256Mi", memory_limit="1Gi")
# kube-prometheus-stack's Grafana datasource sidecar loads ConfigMaps with this label (grafana.sidecar.datasources,
# on by default; its searchNamespace must include the stack's namespace, or be ALL).
DATASOURCE_LABEL = {"grafana_datasource": "1"}

# Grafana's dashboard sidecar loads ConfigMaps with this label; kube-prometheus-stack (since 45.x) watches every
# namespace for them (grafana.sidecar.dashboards.searchNamespace: ALL).
DASHBOARD_LABEL = {"grafana_dashboard": "1"}
# The API server refuses a ConfigMap over 1 MiB (data plus metadata).
CONFIG_MAP_LIMIT = 1024 * 1024
# Dashboards whose every panel reads a source Kubernetes does not run, so they are not shipped there: the host
# one (node_exporter on the stack's machine; kube-prometheus-stack has its own node dashboards), PostgreSQL
# (postgres_exporter's pg_* and this project's PgBouncer reader; CloudNativePG publishes a dashboard for its
# cnpg_* metrics) and backups (node_exporter textfile metrics; the backup alerts read the CronJob's Jobs instead).
KUBERNETES_DASHBOARDS_LEFT_OUT = frozenset({"prefect-host.json", "prefect-postgres.json", "prefect-backups.json"})


def jaeger_runs(config: StackConfig) -> bool:
    return config.kubernetes.jaeger and config.monitoring.enabled


def loki_runs(config: StackConfig) -> bool:
    return config.kubernetes.loki and config.monitoring.enabled


def logs_endpoint(config: StackConfig) -> str | None:
    """The full OTLP/HTTP URL the Prefect pods export their log records to when it is not the tracing endpoint's
    /v1/logs: the configured one, else the stack's Loki when it runs, else none."""
    if config.logs.otlp_endpoint:
        return config.logs.otlp_endpoint
    if loki_runs(config):
        return loki_otlp_logs_url(Names.of(config).loki)
    return None


def tracing_endpoint(config: StackConfig) -> str | None:
    """The OTLP/HTTP base URL the Prefect pods export spans to: the configured collector, else the stack's Jaeger
    when it runs, else none."""
    if config.tracing.otlp_endpoint:
        return config.tracing.otlp_endpoint
    if jaeger_runs(config):
        return f"http://{Names.of(config).jaeger}:{JAEGER_OTLP_HTTP}"
    return None


def _operator_metadata(config: StackConfig, name: str, component: str) -> dict[str, Any]:
    """kube-prometheus-stack's Prometheus selects monitors and rules by ``release``."""
    return metadata(config, name, component, extra_labels={"release": config.kubernetes.prometheus_release})


def prometheus_rule(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": MONITORING_API, "kind": "PrometheusRule",
            "metadata": _operator_metadata(config, Names.of(config)("alerts"), "monitoring"),
            "spec": {"groups": kubernetes_alert_groups(config)}}


def _relabel_job(job: str) -> list[dict[str, Any]]:
    # ``component`` is the pod, as the other targets' ``component`` is the process (api-2).
    return [{"action": "replace", "targetLabel": "job", "replacement": job},
            {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "component"}]


def _service_monitor(config: StackConfig, name: str, component: str, endpoint: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": MONITORING_API, "kind": "ServiceMonitor",
            "metadata": _operator_metadata(config, name, component),
            "spec": {"selector": {"matchLabels": selector(config, component)},
                     "namespaceSelector": {"matchNames": [config.kubernetes.namespace]},
                     "endpoints": [{"interval": f"{config.monitoring.scrape_interval_s}s", **endpoint}]}}


def exporter_service_monitor(config: StackConfig) -> dict[str, Any]:
    return _service_monitor(config, Names.of(config).exporter, EXPORTER, {
        "port": METRICS_PORT_NAME, "path": "/metrics", "scheme": "http",
        # A scrape runs the exporter's queries: bounded by its statement timeout, well under this.
        "scrapeTimeout": "10s",
        "relabelings": _relabel_job(EXPORTER_JOB)})


def _redis_address(config: StackConfig) -> tuple[str, int, bool] | None:
    """Where the exporter reads Prefect's event streams at a fixed address (host, port, TLS): the standalone pod or
    an external redis:// URL. None in sentinel mode (``_redis_sentinels``) and for an external Redis behind
    Sentinel: its primary's port is not in the model, nor whether its Sentinels take the monitor user."""
    redis = config.kubernetes.redis
    if redis.mode == "standalone":
        return Names.of(config).redis, REDIS_PORT, False
    if redis.mode != "external":
        return None
    url = urlsplit(redis.external_url or "")
    if url.scheme not in ("redis", "rediss") or url.hostname is None:
        return None
    return url.hostname, url.port or REDIS_PORT, url.scheme == "rediss"


def _redis_sentinels(config: StackConfig) -> list[str]:
    """In sentinel mode, every pod's Sentinel (as Prefect's URLs list them): the exporter reads the streams on the
    primary they name, asking again at each scrape, so a failover is followed. A replica would serve them too,
    with its replication lag, and the headless Service's names include pods that are down."""
    return redis_pods.sentinel_members(config) if config.kubernetes.redis.mode == "sentinel" else []


def exporter_arguments(config: StackConfig) -> list[str]:
    """The exporter's command line: the same program as the other targets, with Kubernetes' addresses."""
    endpoints = database.database_endpoints(config)  # called here, not at import: tests replace it
    host, port = endpoints.direct
    args = [f"--listen=0.0.0.0:{config.monitoring.prefect_exporter_port}",  # the pod's own address
            f"--postgres={host}:{port}/{config.postgres.database}",
            f"--postgres-password-file={SECRETS_DIR}/postgres_monitor",
            f"--sslmode={endpoints.sslmode}",
            *([f"--sslrootcert={endpoints.root_cert}"] if endpoints.root_cert else []),
            f"--finished-runs-window={config.monitoring.finished_runs_window_s}"]
    # No --pgbouncer: the Poolers are CloudNativePG's PgBouncers, whose console only the operator's user reaches;
    # they export their own metrics (the database's PodMonitors).
    redis = _redis_address(config)
    sentinels = _redis_sentinels(config)
    if sentinels:
        args += [f"--redis-sentinels={','.join(sentinels)}", f"--redis-master-set={redis_pods.MASTER_SET}",
                 f"--redis-password-file={SECRETS_DIR}/redis_monitor"]
    elif redis is not None:
        redis_host, redis_port, tls = redis
        args += [f"--redis={redis_host}:{redis_port}", f"--redis-password-file={SECRETS_DIR}/redis_monitor",
                 *(["--redis-tls"] if tls else [])]
    return args


def exporter_deployment(config: StackConfig, images: Any) -> dict[str, Any]:
    names, port = Names.of(config), config.monitoring.prefect_exporter_port
    # A TCP probe: an HTTP GET of /metrics would run every query of a scrape each period.
    probe = {"tcpSocket": {"port": METRICS_PORT_NAME}, "periodSeconds": 10, "timeoutSeconds": 3,
             "failureThreshold": 3}
    mounts = {"secrets": SECRETS_DIR, "tmp": "/tmp"}  # noqa: S108 - a volume
    ca = database.ca_volume(config)
    if ca:  # it verifies the database server as the apps do (--sslrootcert)
        mounts["db-ca"] = str(DB_CA_DIR)
    exporter = container(
        EXPORTER, images.prefect, None, EXPORTER_RESOURCES,
        args=[PYTHON, "-m", "infra.exporter.server", *exporter_arguments(config)],
        env={"PYTHONPATH": str(APP_HOME), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
        ports={METRICS_PORT_NAME: port}, mounts=mounts,
        read_only_mounts=frozenset({"secrets", "db-ca"}), readinessProbe=probe, livenessProbe=copy.deepcopy(probe))
    # Only the two monitor credentials, as files: nothing secret in the environment or the arguments.
    volumes = [secret_volume("secrets", names.secret_stack,
                             {"postgres_monitor": "postgres_monitor", "redis_monitor": "redis_monitor"}),
               *ca, empty_dir("tmp", "64Mi")]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": metadata(config, names.exporter, EXPORTER),
            "spec": {"replicas": 1, "selector": {"matchLabels": selector(config, EXPORTER)},
                     "template": {"metadata": {"labels": metadata(config, names.exporter, EXPORTER)["labels"]},
                                  "spec": pod_spec([exporter], volumes)}}}


def _service(config: StackConfig, name: str, component: str, ports: dict[str, int]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata(config, name, component),
            "spec": {"selector": selector(config, component),
                     "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                               for port_name, port in ports.items()]}}


def exporter_service(config: StackConfig) -> dict[str, Any]:
    return _service(config, Names.of(config).exporter, EXPORTER,
                    {METRICS_PORT_NAME: config.monitoring.prefect_exporter_port})


def dashboard_config_maps(config: StackConfig) -> list[dict[str, Any]]:
    """One ConfigMap per dashboard. The dashboards query through their ``datasource`` variable (any Prometheus
    datasource, the default one first), so kube-prometheus-stack's Prometheus (uid ``prometheus``) needs no
    rewrite. The API dashboard's HAProxy panels stay empty there: an Ingress balances the replicas; its replica
    panels read kube-state-metrics and cAdvisor."""
    maps = []
    for file_name, document in dashboards(config, kubernetes=True).items():
        if file_name in KUBERNETES_DASHBOARDS_LEFT_OUT:
            continue
        name = Names.of(config)("dashboard-" + file_name.removesuffix(".json").removeprefix("prefect-"))
        maps.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": metadata(config, name, "monitoring", extra_labels=DASHBOARD_LABEL),
                     "data": {file_name: json.dumps(document, indent=1, sort_keys=True)}})
    return maps


def jaeger_manifests(config: StackConfig) -> list[dict[str, Any]]:
    """Jaeger v2 with the configured storage (Badger on a PersistentVolumeClaim, or memory), configured by the
    compose target's ``jaeger_yaml``."""
    names, k8s = Names.of(config), config.kubernetes
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(config, names.jaeger, JAEGER),
                  "data": {"config.yaml": jaeger_yaml(config)}}
    claims: list[dict[str, Any]] = []
    mounts = {"config": JAEGER_CONFIG_DIR}
    if jaeger_needs_volume(config):
        claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {
            "requests": {"storage": config.tracing.jaeger_storage.volume_size}}}
        if k8s.storage_class:
            claim_spec["storageClassName"] = k8s.storage_class
        claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": metadata(config, names.jaeger, JAEGER), "spec": claim_spec})
        mounts["data"] = JAEGER_DATA_DIR
    mounts["tmp"] = "/tmp"  # noqa: S108 - a volume
    # healthcheckv2's status endpoint (its default path; jaeger_yaml sets only the address).
    health = {"httpGet": {"path": "/status", "port": "health", "scheme": "HTTP"}, "periodSeconds": 10,
              "timeoutSeconds": 3, "failureThreshold": 3}
    jaeger = container(
        JAEGER, k8s.jaeger_image, None, JAEGER_RESOURCES, args=["--config", f"{JAEGER_CONFIG_DIR}/config.yaml"],
        # The image sets it too; stated so the Service reaches the pod's address whatever the image's defaults.
        env={"JAEGER_LISTEN_HOST": "0.0.0.0"},  # noqa: S104
        ports=JAEGER_PORTS, mounts=mounts,
        read_only_mounts=frozenset({"config"}), uid=JAEGER_UID,
        startupProbe={**copy.deepcopy(health), "failureThreshold": 30, "periodSeconds": 2}, readinessProbe=health,
        livenessProbe=copy.deepcopy(health))
    # /tmp: the image declares it a VOLUME; with a read-only root it must be one.
    volumes = [config_map_volume("config", names.jaeger), empty_dir("tmp", "64Mi")]
    if claims:
        volumes.insert(1, {"name": "data", "persistentVolumeClaim": {"claimName": names.jaeger}})
    template_labels = metadata(config, names.jaeger, JAEGER)["labels"]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(config, names.jaeger, JAEGER),
                  "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                           "selector": {"matchLabels": selector(config, JAEGER)},
                           "template": {"metadata": {"labels": template_labels},
                                        "spec": pod_spec([jaeger], volumes, uid=JAEGER_UID)}}}
    return [config_map, *claims, deployment, _service(config, names.jaeger, JAEGER, JAEGER_PORTS)]






def loki_manifests(config: StackConfig) -> list[dict[str, Any]]:
    """Single-binary Loki on a PersistentVolumeClaim, configured by the compose target's ``loki_yaml``."""
    names, k8s = Names.of(config), config.kubernetes
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(config, names.loki, LOKI),
                  "data": {"config.yaml": loki_yaml(config)}}
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {
        "requests": {"storage": config.logs.loki_storage.volume_size}}}
    if k8s.storage_class:
        claim_spec["storageClassName"] = k8s.storage_class
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata(config, names.loki, LOKI),
             "spec": claim_spec}
    # /ready: the ingester has joined its (in-memory) ring and the querier answers; it stays unready for about
    # 15 s after a start (the ring's join wait), hence the startup probe's budget.
    ready = {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"}, "periodSeconds": 10,
             "timeoutSeconds": 3, "failureThreshold": 3}
    loki = container(
        LOKI, k8s.loki_image, None, LOKI_RESOURCES,
        args=[f"-config.file={LOKI_CONFIG_DIR}/config.yaml", "-target=all"],
        ports=LOKI_PORTS, mounts={"config": LOKI_CONFIG_DIR, "data": LOKI_DATA_DIR, "tmp": "/tmp"},  # noqa: S108
        read_only_mounts=frozenset({"config"}), uid=LOKI_USER,
        startupProbe={**copy.deepcopy(ready), "failureThreshold": 60, "periodSeconds": 2}, readinessProbe=ready,
        # Alive while it answers at all: an unready Loki (a slow WAL replay) must not be killed for it.
        livenessProbe={**copy.deepcopy(ready), "httpGet": {"path": "/metrics", "port": "http", "scheme": "HTTP"},
                       "failureThreshold": 6})
    volumes = [config_map_volume("config", names.loki),
               {"name": "data", "persistentVolumeClaim": {"claimName": names.loki}}, empty_dir("tmp", "64Mi")]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(config, names.loki, LOKI),
                  "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                           "selector": {"matchLabels": selector(config, LOKI)},
                           "template": {"metadata": {"labels": metadata(config, names.loki, LOKI)["labels"]},
                                        "spec": pod_spec([loki], volumes, uid=LOKI_USER)}}}
    return [config_map, claim, deployment, _service(config, names.loki, LOKI, LOKI_PORTS)]


def grafana_datasource_config_map(config: StackConfig) -> dict[str, Any]:
    """Loki as a Grafana datasource for kube-prometheus-stack's Grafana (its sidecar loads it), with the stack's
    Jaeger beside it when it runs, so a record's trace id links to its trace. Grafana runs in another namespace:
    the Services are named in full."""
    names, namespace = Names.of(config), config.kubernetes.namespace
    datasources = []
    jaeger = jaeger_runs(config)
    if jaeger:
        datasources.append(jaeger_datasource(f"http://{names.jaeger}.{namespace}.svc:{JAEGER_UI}"))
    datasources.append(loki_datasource(f"http://{names.loki}.{namespace}.svc:{LOKI_HTTP}", jaeger=jaeger))
    document = {"apiVersion": 1, "datasources": datasources}
    header = "# Rendered by prefect-stack from the configuration model; edit the model, not this file.\n"
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(config, names.grafana_datasources, "monitoring", extra_labels=DATASOURCE_LABEL),
            "data": {"prefect-stack-datasources.yaml": header + yaml.safe_dump(document, sort_keys=False)}}


def _network_policy(config: StackConfig, name: str, component: str, ingress: list[dict[str, Any]],
                    egress: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(config, name, component),
            "spec": {"podSelector": {"matchLabels": selector(config, component)},
                     "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress}}


def exporter_network_policy(config: StackConfig) -> dict[str, Any]:
    """In: Prometheus's scrape. Out: DNS, PostgreSQL, Redis (and Sentinel's port, for a Sentinel-mode pod)."""
    k8s = config.kubernetes
    prometheus = namespace_peer(k8s.prometheus_namespace)
    if k8s.postgres.mode == "cnpg":
        database_egress = {"to": [{"podSelector": {"matchLabels": {CNPG_CLUSTER_LABEL: Names.of(config).database}}}],
                           "ports": network_ports(POSTGRES_PORT)}
    else:
        # An external PostgreSQL is a host name whose address no policy can name: its port, anywhere.
        database_egress = {"ports": network_ports(k8s.postgres.port)}
    egress = [dns_egress(), database_egress]
    redis = _redis_address(config)
    if k8s.redis.mode != "external":
        egress.append({"to": [{"podSelector": {"matchLabels": selector(config, "redis")}}],
                       "ports": network_ports(REDIS_PORT, SENTINEL_PORT)})
    elif redis is not None:
        egress.append({"ports": network_ports(redis[1])})
    return _network_policy(config, Names.of(config)("exporter-allow"), EXPORTER,
                           [{"from": [prometheus], "ports": network_ports(config.monitoring.prefect_exporter_port)}],
                           egress)


def jaeger_network_policy(config: StackConfig) -> dict[str, Any]:
    """In: spans from the API and services pods (OTLP); the UI and query API from Prometheus's namespace, where
    kube-prometheus-stack's Grafana has its Jaeger datasource. Operators reach the UI by kubectl port-forward,
    which enters through the kubelet, not the pod network. Out: nothing; Jaeger calls no one."""
    prefect = [{"podSelector": {"matchLabels": selector(config, component)}} for component in (API, SERVICES)]
    ingress = [{"from": prefect, "ports": network_ports(JAEGER_OTLP_GRPC, JAEGER_OTLP_HTTP)},
               {"from": [namespace_peer(config.kubernetes.prometheus_namespace)], "ports": network_ports(JAEGER_UI)}]
    return _network_policy(config, Names.of(config)("jaeger-allow"), JAEGER, ingress, [])


def loki_network_policy(config: StackConfig) -> dict[str, Any]:
    """In: log records from the API and services pods (OTLP); queries from Prometheus's namespace, where
    kube-prometheus-stack's Grafana has the Loki datasource. Out: nothing; Loki calls no one (usage reporting is
    off in loki_yaml)."""
    prefect = [{"podSelector": {"matchLabels": selector(config, component)}} for component in (API, SERVICES)]
    ingress = [{"from": prefect, "ports": network_ports(LOKI_HTTP)},
               {"from": [namespace_peer(config.kubernetes.prometheus_namespace)], "ports": network_ports(LOKI_HTTP)}]
    return _network_policy(config, Names.of(config)("loki-allow"), LOKI, ingress, [])


def monitoring_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    """Every observability object, or none when monitoring is off."""
    if not config.monitoring.enabled:
        return []
    objects = [prometheus_rule(config), exporter_service_monitor(config),
               exporter_deployment(config, images), exporter_service(config), *dashboard_config_maps(config)]
    if jaeger_runs(config):
        objects += jaeger_manifests(config)
    if loki_runs(config):
        objects += [*loki_manifests(config), grafana_datasource_config_map(config)]
    manifests = [Manifest(obj, "monitoring", "monitoring") for obj in objects]
    if config.kubernetes.network_policies:
        policies = [exporter_network_policy(config)]
        if jaeger_runs(config):
            policies.append(jaeger_network_policy(config))
        if loki_runs(config):
            policies.append(loki_network_policy(config))
        manifests += [Manifest(policy, "namespace", "network-policies") for policy in policies]
    return manifests
