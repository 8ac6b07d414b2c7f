"""Prefect on Kubernetes: the API and background-services Deployments, the migration Job, the Service, the Ingress
and the Gateway API's HTTPRoute, the nightly logical backup CronJob, their PodDisruptionBudgets and NetworkPolicies.

The processes are the other targets' processes, from the project's prefect image: the same environment renderer
(``infra.render.prefect``) with the cluster's endpoints, read from a Secret file by the same entrypoint
(``infra.containers.entrypoint``) so no credential is in a pod's environment listing. The ordering the local target
gets from its deploy steps comes from Kubernetes objects here: the migration Job is named after the image (a new
Prefect migrates once), and every API pod waits in an init container until the schema is at its Prefect's head.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from infra.config import ResourcesConfig, StackConfig
from infra.kubernetes import database, monitoring
from infra.kubernetes import redis as redis_part
from infra.kubernetes.objects import (
    CONTAINER_ROOT,
    DB_CA_DIR,
    ETC,
    PYTHON,
    VENV_BIN,
    Manifest,
    Names,
    anywhere,
    config_map_volume,
    container,
    dns_egress,
    empty_dir,
    exec_probe,
    http_probe,
    labels,
    metadata,
    namespace_peer,
    network_ports,
    pod_spec,
    secret_volume,
    selector,
    topology_spread,
    url_port,
    worker_side_api_peers,
)
from infra.layout import StateLayout
from infra.render import Addresses
from infra.render.loki import loki_otlp_logs_url
from infra.render.prefect import api_environment, migration_environment, services_environment
from infra.render.prefect_logging import LOGGING_FILE, component_environment, logging_environment, logging_yaml
from infra.render.tracing import server_tracing_environment
from infra.secrets import BACKUP_SECRETS, Secrets

API_PORT = 4200
POSTGRES_PORT = 5432
REDIS_PORTS = (6379, 26379)
LAYOUT = StateLayout(Path(str(CONTAINER_ROOT)))
ENV_DIR = ETC / "env"
# On the pod's /tmp emptyDir (the root filesystem is read-only).
SERVICES_HEARTBEAT = PurePosixPath("/tmp/prefect-services.heartbeat")  # noqa: S108 - an emptyDir
CONFIG_DIR = ETC / "config"
S3_DIR = ETC / "s3"
# The project's entrypoint module (the environment from its Secret file, then exec of the program), run as the
# containers' args under the image's own ENTRYPOINT, tini: a `command:` would replace tini as PID 1.
ENTRYPOINT = [PYTHON, "-m", "infra.containers.entrypoint"]
# A pod leaving a rollout keeps serving this long after it is marked terminating: the endpoints controller and
# the ingress controller need a few seconds to stop sending it requests (no client error during a rollout).
PRE_STOP_DELAY_S = 10
# Then Uvicorn's graceful shutdown finishes in-flight requests within the rest of the grace period.
API_GRACE_S = 45
# Prefect's websocket endpoints (HAProxy's timeout tunnel on the other targets).
WEBSOCKET_PATHS = ("/api/events/in", "/api/events/out", "/api/logs/out")
ENV_FILES = {"api": "api.env.json", "services": "services.env.json", "migrate": "migrate.env.json"}
EFFECTIVE_CONFIG = "stack.effective.yaml"
# The Prefect processes' logging configuration (logs.format json): a ConfigMap mounted here in every Prefect pod.
LOGGING_DIR = ETC / "logging"
# What the Prefect containers only read.
READ_ONLY_MOUNTS = frozenset({"env", "db-ca", "logging"})


def prefect_version() -> str:
    # The installed distribution's version (the image installs the same lock): importing prefect takes seconds.
    return importlib.metadata.version("prefect")


def in_cluster_config(config: StackConfig) -> StackConfig:
    """The model as the pods see it: the container layout as state directory, the cluster's fixed ports, and tracing
    pointed at the stack's Jaeger unless another collector is configured."""
    update: dict[str, object] = {
        "target": "kubernetes",
        "local": config.local.model_copy(update={"state_dir": Path(str(CONTAINER_ROOT))}),
        "backups": config.backups.model_copy(update={"scratch_dir": None}),
        "postgres": config.postgres.model_copy(update={"port": POSTGRES_PORT}),
        "pgbouncer": config.pgbouncer.model_copy(update={"port": POSTGRES_PORT}),
        "redis": config.redis.model_copy(update={"port": REDIS_PORTS[0]}),
    }
    logs = config.logs
    logs_endpoint = monitoring.logs_endpoint(config)
    if logs_endpoint:
        # The stack's Loki (or the configured logs endpoint) takes the records; spans still go to the tracing one.
        logs = logs.model_copy(update={"otlp_endpoint": logs_endpoint})
    endpoint = monitoring.tracing_endpoint(config)
    if endpoint and not config.tracing.enabled:
        update["tracing"] = config.tracing.model_copy(update={"enabled": True, "otlp_endpoint": endpoint})
        if not config.tracing.otlp_endpoint and not logs_endpoint:
            # Jaeger stores spans only: its OTLP receiver has no logs pipeline and would refuse every /v1/logs batch.
            logs = logs.model_copy(update={"export_otlp": False})
    update["logs"] = logs
    return config.model_copy(update=update)


def gateway_hostnames(config: StackConfig) -> list[str]:
    """The host names the HTTPRoute answers: kubernetes.gateway.hostnames, else the Ingress's host."""
    return list(config.kubernetes.gateway.hostnames) or [config.kubernetes.ingress.host]


def public_host(config: StackConfig) -> str:
    """Where browsers reach the UI: the Ingress's host, or the route's first plain host name when only the Gateway
    exposes the API."""
    k8s = config.kubernetes
    if k8s.gateway.enabled and not k8s.ingress.enabled:
        plain = [name for name in gateway_hostnames(config) if not name.startswith("*.")]
        if plain:
            return plain[0]
    return k8s.ingress.host


def public_api_url(config: StackConfig) -> str:
    if config.load_balancer.public_url:
        return config.load_balancer.public_url
    return f"https://{public_host(config)}/api"


def _database_url(config: StackConfig, secrets: Secrets, endpoint: tuple[str, int], dbname: str,
                  sslmode: str) -> str:
    user, password = config.postgres.user, secrets.get("postgres_prefect")
    host, port = endpoint
    # "require" encrypts without verifying (asyncpg's ssl=require); the verify modes use Prefect's TLS settings.
    query = "?ssl=require" if sslmode == "require" else ""
    return f"postgresql+asyncpg://{user}:{password}@{host}:{port}/{dbname}{query}"


def prefect_environment(config: StackConfig, secrets: Secrets, role: str) -> dict[str, str]:
    """The environment of the ``api``, ``services`` or ``migrate`` processes (it holds credentials: a Secret)."""
    inner = in_cluster_config(config)
    names = Names.of(config)
    endpoints = database.database_endpoints(config)
    addresses = Addresses(postgres=endpoints.direct[0], pgbouncer=endpoints.api[0], redis=names.redis)
    render = {"api": api_environment, "services": services_environment, "migrate": migration_environment}[role]
    env = render(inner, secrets, LAYOUT, addresses)
    endpoint = {"api": endpoints.api, "services": endpoints.services, "migrate": endpoints.direct}[role]
    sslmode = endpoints.sslmode
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = _database_url(config, secrets, endpoint, config.postgres.database,
                                                                  sslmode)
    if sslmode != "require":
        env["PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_ENABLED"] = "true"
        # The poolers' and instances' certificates are signed by the Cluster's CA (CloudNativePG's <cluster>-ca):
        # trusting exactly that CA is the check; host names are not, since the certificate names the -rw Service.
        env["PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_CHECK_HOSTNAME"] = str(
            sslmode == "verify-full").lower()
        if endpoints.root_cert:
            env["PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_CA_FILE"] = endpoints.root_cert
    for stale in ("PREFECT_SERVER_DOCKET_URL", "PREFECT_REDIS_MESSAGING_HOST", "PREFECT_REDIS_MESSAGING_PORT",
                  "PREFECT_REDIS_MESSAGING_DB", "PREFECT_REDIS_MESSAGING_PASSWORD"):
        env.pop(stale, None)
    env.update(redis_part.redis_environment(config, secrets))
    # Inside the cluster the API is its Service (plain HTTP on the pod network; TLS ends at the Ingress).
    env["PREFECT_API_URL"] = f"http://{names.api}:{API_PORT}/api"
    env.pop("PREFECT_API_SSL_CERT_FILE", None)
    if role == "api":
        env["PREFECT_SERVER_UI_API_URL"] = public_api_url(config)
    env.update(logging_environment(inner, LOGGING_DIR))
    return env


def logging_config_map(config: StackConfig) -> str:
    return Names.of(config)("logging")


def logging_volumes(config: StackConfig) -> list[dict[str, Any]]:
    """The logging configuration's volume for a Prefect pod (none with logs.format text)."""
    return [config_map_volume("logging", logging_config_map(config))] if config.logs.format == "json" else []


def logging_mounts(config: StackConfig) -> dict[str, str]:
    return {"logging": str(LOGGING_DIR)} if config.logs.format == "json" else {}


def _logging(config: StackConfig) -> list[Manifest]:
    if config.logs.format != "json":
        return []
    # Prefect's own logging.yml of the image's version with the stack's formatter: it changes only with Prefect,
    # that is with the image, which rolls the pods anyway.
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(config, logging_config_map(config),
                                                                                  "prefect"),
                  "data": {LOGGING_FILE: logging_yaml()}}
    return [Manifest(config_map, "apps")]


def environment_files(config: StackConfig, secrets: Secrets) -> dict[str, str]:
    """The Secret ``Names.secret_prefect_env``'s data: one JSON file per role."""
    return {file: json.dumps(prefect_environment(config, secrets, role), indent=2, sort_keys=True) + "\n"
            for role, file in ENV_FILES.items()}


def effective_config(config: StackConfig) -> str:
    """The configuration the backup CronJob runs with (no secret in it: credentials are files)."""
    document = in_cluster_config(config).model_dump(mode="json")
    document["local"]["state_dir"] = str(CONTAINER_ROOT)
    return "# Rendered by prefect-stack: the configuration of the backup CronJob.\n" + yaml.safe_dump(
        document, sort_keys=False)


def migration_job_name(config: StackConfig, image: str) -> str:
    """Named after the Prefect version and the image: a new version (or image) migrates once, a re-deploy of
    the same one finds the Job done and does nothing."""
    version = prefect_version().replace(".", "-").replace("+", "-").lower()
    digest = hashlib.sha256(image.encode()).hexdigest()[:8]
    return Names.of(config)(f"migrate-{version}-{digest}")[:63].rstrip("-")


# --- pods ---------------------------------------------------------------------------------------------------------


def _env_volume(config: StackConfig, role: str) -> dict[str, Any]:
    return secret_volume("env", Names.of(config).secret_prefect_env, {ENV_FILES[role]: ENV_FILES[role]})


def _common_mounts(config: StackConfig) -> dict[str, str]:
    mounts = {"env": str(ENV_DIR), "state": str(CONTAINER_ROOT), "tmp": "/tmp",  # noqa: S108 - an emptyDir
              **logging_mounts(config)}
    if config.kubernetes.postgres.mode == "cnpg":
        mounts["db-ca"] = str(DB_CA_DIR)
    return mounts


def _common_volumes(config: StackConfig, role: str) -> list[dict[str, Any]]:
    # The root filesystem is read-only: Prefect's home (the UI it rewrites at start) and /tmp are emptyDirs.
    return [_env_volume(config, role), *database.ca_volume(config), empty_dir("state", "1Gi"), empty_dir("tmp", "1Gi"),
            *logging_volumes(config)]


def _traced(config: StackConfig, command: list[str]) -> list[str]:
    if in_cluster_config(config).tracing.enabled:
        return [str(VENV_BIN / "opentelemetry-instrument"), *command]
    return command


def _tracing_env(config: StackConfig, service: str) -> dict[str, str]:
    env = server_tracing_environment(in_cluster_config(config), service, "$(POD_NAME)")
    # Each replica's lines carry its pod's name.
    return {**env, **component_environment("$(POD_NAME)")}


def _pod_name_env(env: dict[str, str]) -> list[dict[str, Any]]:
    """The pod's name first (the tracing resource attributes refer to it), then plain values."""
    if not env:
        return []
    return [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *({"name": k, "value": v} for k, v in sorted(env.items()))]


def _template(config: StackConfig, component: str, spec: dict[str, Any], version: str) -> dict[str, Any]:
    return {"metadata": {"labels": labels(config, component, version)}, "spec": spec}


def _wait_for_migrations(config: StackConfig, image: str, env_file: str, spec: ResourcesConfig) -> dict[str, Any]:
    """The init container that holds a pod until the schema is at its Prefect's head (infra.kubernetes.migrations)."""
    return container("wait-for-migrations", image, None, spec,
                     args=[*ENTRYPOINT, env_file, "--", PYTHON, "-m", "infra.kubernetes.migrations", "wait",
                           "--timeout", "600"],
                     mounts=_common_mounts(config), read_only_mounts=READ_ONLY_MOUNTS)


def _deployment(config: StackConfig, name: str, component: str, replicas: int, spec: dict[str, Any], version: str,
                min_ready_s: int | None = None) -> dict[str, Any]:
    deployment_spec: dict[str, Any] = {
        "replicas": replicas,
        # Never fewer ready replicas than asked during a rollout: one new pod, ready, then one old one goes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
    }
    if min_ready_s is not None:
        deployment_spec["minReadySeconds"] = min_ready_s
    deployment_spec.update({"revisionHistoryLimit": 5, "selector": {"matchLabels": selector(config, component)},
                            "template": _template(config, component, spec, version)})
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": metadata(config, name, component, version=version), "spec": deployment_spec}


def _api(config: StackConfig, image: str, version: str) -> list[Manifest]:
    names = Names.of(config)
    k8s = config.kubernetes
    env_file = str(ENV_DIR / ENV_FILES["api"])
    wait = _wait_for_migrations(config, image, env_file, k8s.api_resources)
    # `prefect server start --no-services` with the request-id layer around Prefect's app (infra.logs.api_server).
    serve = _traced(config, [PYTHON, "-m", "infra.logs.api_server", "--host", "0.0.0.0",  # noqa: S104
                             "--port", str(API_PORT)])
    api = container(
        "api", image, None, k8s.api_resources, args=[*ENTRYPOINT, env_file, "--", *serve],
        ports={"http": API_PORT}, mounts=_common_mounts(config), read_only_mounts=READ_ONLY_MOUNTS,
        # Start-up (UI copy, first connections) may take a minute on a busy node; liveness only after it.
        startupProbe=http_probe("/api/health", "http", period_s=2, failures=60),
        readinessProbe=http_probe("/api/ready", "http", period_s=5, failures=2),
        livenessProbe=http_probe("/api/health", "http", period_s=10, timeout_s=5, failures=6),
        lifecycle={"preStop": {"sleep": {"seconds": PRE_STOP_DELAY_S}}},
    )
    tracing = _pod_name_env(_tracing_env(config, "prefect-api"))
    if tracing:
        api["env"] = tracing
    spec = pod_spec([api], _common_volumes(config, "api"), init_containers=[wait],
                    terminationGracePeriodSeconds=API_GRACE_S, topologySpreadConstraints=topology_spread(config, "api"))
    # A new replica counts as available once it has been ready for a few seconds, not at its first passed probe.
    deployment = _deployment(config, names.api, "api", config.api.replicas, spec, version, min_ready_s=5)
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(config, names.api, "api"),
        "spec": {"type": "ClusterIP", "selector": selector(config, "api"),
                 "ports": [{"name": "http", "port": API_PORT, "targetPort": "http", "protocol": "TCP"}]},
    }
    manifests = [Manifest(deployment, "apps"), Manifest(service, "apps")]
    if config.api.replicas >= 2:
        manifests.append(Manifest(_pdb(config, names.api, "api"), "apps"))
    if k8s.ingress.enabled:
        manifests.append(Manifest(_ingress(config), "apps"))
    if k8s.gateway.enabled:
        manifests.append(Manifest(_http_route(config), "apps", "gateway-api"))
    return manifests


def _ingress(config: StackConfig) -> dict[str, Any]:
    names, ingress = Names.of(config), config.kubernetes.ingress
    annotations = {
        # Websockets (events, logs) stay open: HAProxy's tunnel timeout on the other targets.
        "nginx.ingress.kubernetes.io/proxy-read-timeout": str(config.load_balancer.timeout_tunnel_s),
        "nginx.ingress.kubernetes.io/proxy-send-timeout": str(config.load_balancer.timeout_tunnel_s),
        "nginx.ingress.kubernetes.io/proxy-body-size": "64m",
        # A replica that fails a request before answering: the next one gets it (HAProxy's retries elsewhere).
        "nginx.ingress.kubernetes.io/proxy-next-upstream": "error timeout http_502 http_503",
        "nginx.ingress.kubernetes.io/proxy-next-upstream-tries": str(config.load_balancer.retries + 1),
    }
    if ingress.cluster_issuer:
        annotations["cert-manager.io/cluster-issuer"] = ingress.cluster_issuer
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": metadata(config, names.api, "api", annotations=annotations),
        "spec": {
            "ingressClassName": ingress.class_name,
            "tls": [{"hosts": [ingress.host], "secretName": ingress.tls_secret}],
            "rules": [{"host": ingress.host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": names.api, "port": {"name": "http"}}}}]}}],
        },
    }


def gateway_duration(seconds: int) -> str:
    """Seconds as a Gateway API duration (GEP-2257: hours, minutes, seconds, at most 5 digits each): 3600 -> 1h."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value]
    return "".join(parts) or "0s"


def _http_route(config: StackConfig) -> dict[str, Any]:
    """The Gateway API's route to the API Service, the Ingress's equivalent. TLS ends at the Gateway's listener,
    whose certificate is the Gateway owner's (cert-manager annotates Gateways, not routes); the replicas serve plain
    HTTP on the pod network, as behind the Ingress, so there is no BackendTLSPolicy."""
    names, gateway = Names.of(config), config.kubernetes.gateway
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    backend = [{"name": names.api, "port": API_PORT}]
    rules = [
        # Websockets (events in and out, logs) stay open as long as clients keep them: a request deadline would cut
        # every stream at that age. The Gateway API has only deadlines ("0s": none); idle limits are the
        # implementation's, and no stream is idle long: the API pings each one every 20 s (prefect server start's
        # websocket ping interval).
        {"name": "websockets",
         "matches": [{"path": {"type": "Exact", "value": path}} for path in WEBSOCKET_PATHS],
         "backendRefs": copy.deepcopy(backend), "timeouts": {"request": "0s"}},
        # Every other request: HAProxy's server timeout on the other targets. No retries: the standard channel
        # has none (Prefect's client retries 502, 503 and connection errors itself).
        {"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
         "backendRefs": copy.deepcopy(backend),
         "timeouts": {"request": gateway_duration(config.load_balancer.timeout_server_s)}},
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": metadata(config, names.api, "api"),
        "spec": {"parentRefs": [parent], "hostnames": gateway_hostnames(config), "rules": rules},
    }


def _pdb(config: StackConfig, name: str, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": metadata(config, name, component),
        # A node drain takes one replica at a time; the others serve meanwhile.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(config, component)},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def _services(config: StackConfig, image: str, version: str) -> list[Manifest]:
    names, k8s = Names.of(config), config.kubernetes
    env_file = str(ENV_DIR / ENV_FILES["services"])
    # No port of its own to probe, and a pooler outage is not its fault: alive while its event loop keeps renewing
    # a heartbeat file (infra.containers.services), which a hung process stops doing.
    heartbeat = ["--heartbeat", str(SERVICES_HEARTBEAT)]
    run = _traced(config, [PYTHON, "-m", "infra.containers.services", "run", *heartbeat])
    check = exec_probe([PYTHON, "-m", "infra.containers.services", "check", *heartbeat], period_s=20, timeout_s=10,
                       failures=3)
    services = container(
        "services", image, None, k8s.services_resources, args=[*ENTRYPOINT, env_file, "--follow-redis", "--", *run],
        mounts=_common_mounts(config), read_only_mounts=READ_ONLY_MOUNTS,
        # Importing Prefect and the first beat take seconds on a busy node: up to 2 minutes before the first.
        startupProbe={**check, "periodSeconds": 5, "failureThreshold": 24}, livenessProbe=check,
    )
    tracing = _pod_name_env(_tracing_env(config, "prefect-services"))
    if tracing:
        services["env"] = tracing
    spec = pod_spec([services], _common_volumes(config, "services"), terminationGracePeriodSeconds=30,
                    topologySpreadConstraints=topology_spread(config, "services"))
    spec["initContainers"] = [_wait_for_migrations(config, image, env_file, k8s.services_resources)]
    # minReadySeconds: a replica that dies right after starting does not count as available during a rollout.
    deployment = _deployment(config, names.services, "services", config.services_replicas, spec, version,
                             min_ready_s=10)
    manifests = [Manifest(deployment, "apps")]
    if config.services_replicas >= 2:
        manifests.append(Manifest(_pdb(config, names.services, "services"), "apps"))
    return manifests


def _migration_job(config: StackConfig, image: str, version: str) -> Manifest:
    names, k8s = Names.of(config), config.kubernetes
    env_file = str(ENV_DIR / ENV_FILES["migrate"])
    endpoints = database.database_endpoints(config)
    host, port = endpoints.direct
    secrets_dir = ETC / "db-owner"
    cnpg = k8s.postgres.mode == "cnpg"
    # No superuser: roles and passwords are CloudNativePG's managed roles (or an external server's operator's);
    # the database owner grants the monitor role its reads (which only the exporter needs on an external server),
    # then migrates the schema.
    monitor_grants = cnpg or config.monitoring.enabled
    args = [*ENTRYPOINT, env_file, "--", PYTHON, "-m", "infra.containers.migrate", "--as-owner",
            *(["--monitor-grants"] if monitor_grants else []), "--host", host, "--port",
            str(port), "--database", config.postgres.database, "--user", config.postgres.user,
            "--secrets", str(secrets_dir), "--sslmode", endpoints.sslmode,
            *(["--sslrootcert", endpoints.root_cert] if endpoints.root_cert else [])]
    mounts = {**_common_mounts(config), "owner": str(secrets_dir)}
    job_container = container("migrate", image, None, k8s.api_resources, args=args, mounts=mounts,
                              read_only_mounts=READ_ONLY_MOUNTS | {"owner"})
    job_container["env"] = [{"name": k, "value": v} for k, v in component_environment("migrate").items()]
    # Only the owner's password, as the file the migration reads: from the Secret CloudNativePG also sets it from
    # (or, with an external server, the stack's Secret, of which nothing else is mounted).
    owner = (secret_volume("owner", names.secret_db_app, {"password": "postgres_prefect"}) if cnpg
             else secret_volume("owner", names.secret_stack, {"postgres_prefect": "postgres_prefect"}))
    spec = pod_spec([job_container], [*_common_volumes(config, "migrate"), owner], restartPolicy="Never")
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": metadata(config, migration_job_name(config, image), "migrate", version=version),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 1800,
            "template": _template(config, "migrate", spec, version),
        },
    }
    return Manifest(job, "migrate")


def _backup(config: StackConfig, image: str, version: str) -> list[Manifest]:
    names, k8s = Names.of(config), config.kubernetes
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(config, names.backup, "backup"),
        "data": {EFFECTIVE_CONFIG: effective_config(config)},
    }
    env = {"PREFECT_STACK_CONFIG": str(CONFIG_DIR / EFFECTIVE_CONFIG), "HOME": str(LAYOUT.prefect_home)}
    volumes = [
        config_map_volume("config", names.backup),
        # Only what the backup work reads (no S3 key of ours: the bucket is the cloud's), never the API admin's,
        # Redis' or Grafana's credentials.
        secret_volume("secrets", names.secret_stack,
                      {name: name for name in BACKUP_SECRETS if name != "s3_local"}),
        *database.ca_volume(config),
        empty_dir("state", "1Gi"), empty_dir("tmp", "1Gi"),
        # Dumps wait here for upload, and verification's temporary PostgreSQL server keeps its restored copy here:
        # an ephemeral volume sized for the database (about three times the dump's uncompressed size).
        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": k8s.backup_scratch_size}},
            **({"storageClassName": k8s.storage_class} if k8s.storage_class else {})}}}},
    ]
    mounts = {"config": str(CONFIG_DIR), "state": str(CONTAINER_ROOT), "secrets": str(LAYOUT.secrets),
              "scratch": str(CONTAINER_ROOT / "scratch"), "tmp": "/tmp"}  # noqa: S108 - an emptyDir
    read_only = {"config", "secrets"}
    if config.kubernetes.postgres.mode == "cnpg":
        mounts["db-ca"] = str(DB_CA_DIR)
        read_only.add("db-ca")
    if k8s.s3_credentials == "secret":
        # boto3 reads a shared credentials file: the keys never enter the process environment.
        volumes.append(secret_volume("s3", names.secret_s3, {"credentials": "credentials"}))
        mounts["s3"] = str(S3_DIR)
        read_only.add("s3")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(S3_DIR / "credentials")
    backup = container("backup", image, None, k8s.backup_resources,
                       args=[PYTHON, "-m", "infra.backup.scheduler", "--once"], env=env, mounts=mounts,
                       read_only_mounts=frozenset(read_only))
    spec = pod_spec([backup], volumes, restartPolicy="Never")
    template = _template(config, "backup", spec, version)
    identity: list[Manifest] = []
    if k8s.s3_credentials == "iam-role":
        # A service account of its own, bound to the cloud role by its annotations (IRSA, workload identity), not
        # the namespace's default one. No Kubernetes API token: the identity webhooks mount their own.
        account = {"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": metadata(config, names.backup, "backup", annotations=k8s.s3_identity_annotations),
                   "automountServiceAccountToken": False}
        identity.append(Manifest(account, "apps"))
        spec.update(serviceAccountName=names.backup, automountServiceAccountToken=False)
        template["metadata"]["labels"].update(k8s.s3_identity_pod_labels)
    hour, minute = config.backups.schedule.split(":")
    cronjob = {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": metadata(config, names.backup, "backup", version=version),
        "spec": {
            "schedule": f"{int(minute)} {int(hour)} * * *",
            "timeZone": "Etc/UTC",
            # Never two runs at once (a slow night does not overlap the next); a missed run starts late, not never.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 6 * 3600,
            "suspend": not config.backups.schedule_enabled,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": labels(config, "backup", version)}, "spec": {
                # A failed backup is reported (the backup-age alert), not retried into the next night.
                "backoffLimit": 0,
                "activeDeadlineSeconds": 6 * 3600,
                "template": template,
            }},
        },
    }
    return [Manifest(config_map, "apps"), *identity, Manifest(cronjob, "apps")]


# --- network policies -----------------------------------------------------------------------------------------


def _policy(config: StackConfig, name: str, pod_selector: dict[str, Any], *, ingress: list[dict[str, Any]] | None,
            egress: list[dict[str, Any]] | None, component: str) -> Manifest:
    types = [t for t, rules in (("Ingress", ingress), ("Egress", egress)) if rules is not None]
    spec: dict[str, Any] = {"podSelector": pod_selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    obj = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": metadata(config, Names.of(config)(name), component), "spec": spec}
    return Manifest(obj, "namespace", "network-policies")






def _in_namespace() -> dict[str, Any]:
    return {"podSelector": {}}


def _database_egress(config: StackConfig, endpoint: tuple[str, int]) -> dict[str, Any]:
    """To the poolers and instances (pods of this namespace) or to an external PostgreSQL (wherever it is)."""
    if config.kubernetes.postgres.mode == "cnpg":
        return {"to": [_in_namespace()], "ports": network_ports(POSTGRES_PORT)}
    return {"to": anywhere(), "ports": network_ports(endpoint[1])}


def _redis_egress(config: StackConfig) -> dict[str, Any]:
    if config.kubernetes.redis.mode != "external":
        return {"to": [_in_namespace()], "ports": network_ports(*REDIS_PORTS)}
    return {"to": anywhere(), "ports": network_ports(*REDIS_PORTS)}


def _tracing_egress(config: StackConfig) -> list[dict[str, Any]]:
    endpoint = monitoring.tracing_endpoint(config)
    if not endpoint:
        return []
    port = url_port(endpoint)
    egress = [{"to": [_in_namespace()] if Names.of(config).jaeger in endpoint else [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
               "ports": network_ports(port)}]
    logs = monitoring.logs_endpoint(in_cluster_config(config))
    if logs and in_cluster_config(config).logs.export_otlp:
        # The log records' endpoint: the stack's Loki pod, or the configured one wherever it is.
        peer = ([{"podSelector": {"matchLabels": selector(config, monitoring.LOKI)}}]
                if logs == loki_otlp_logs_url(Names.of(config).loki) else anywhere())
        egress.append({"to": peer, "ports": network_ports(url_port(logs))})
    return egress




def _api_client_peers(config: StackConfig) -> list[dict[str, Any]]:
    """The operator's own clients of the API inside the cluster (kubernetes.api_clients: workers, flow-run pods) and
    address ranges (kubernetes.api_client_cidrs: an ingress controller on the host network comes from its node)."""
    k8s = config.kubernetes
    peers: list[dict[str, Any]] = []
    for client in k8s.api_clients:
        peer = namespace_peer(client.namespace) if client.namespace else {}
        peer["podSelector"] = {"matchLabels": dict(client.pod_labels)} if client.pod_labels else {}
        peers.append(peer)
    return peers + [{"ipBlock": {"cidr": cidr}} for cidr in k8s.api_client_cidrs]


def _edge_peers(config: StackConfig) -> list[dict[str, Any]]:
    """What carries clients' requests in: the ingress controller (while the Ingress is rendered) and the Gateway's
    proxy pods (while the HTTPRoute is)."""
    k8s = config.kubernetes
    peers = [namespace_peer(k8s.ingress_namespace)] if k8s.ingress.enabled else []
    if k8s.gateway.enabled:
        proxy = namespace_peer(k8s.gateway_data_plane_namespace)
        if k8s.gateway.data_plane_pod_labels:
            proxy["podSelector"] = {"matchLabels": dict(k8s.gateway.data_plane_pod_labels)}
        peers.append(proxy)
    return peers


def _outbound_egress(config: StackConfig) -> list[dict[str, Any]]:
    outbound = config.kubernetes.services_outbound
    if not outbound.ports or not outbound.cidrs:
        return []
    return [{"to": outbound.ip_blocks(), "ports": network_ports(*outbound.ports)}]


def network_policies(config: StackConfig) -> list[Manifest]:
    """Default deny for every pod of the namespace, DNS for all, then the Prefect pods' own flows."""
    if not config.kubernetes.network_policies:
        return []
    k8s = config.kubernetes
    endpoints = database.database_endpoints(config)
    policies = [
        _policy(config, "default-deny", {}, ingress=[], egress=[], component="network-policies"),
        _policy(config, "allow-dns", {}, ingress=None, egress=[dns_egress()], component="network-policies"),
        _policy(config, "api", {"matchLabels": selector(config, "api")}, component="api",
                # Clients through the ingress controller or the Gateway, Prometheus's scrapes, and the background
                # services (the only pods of the stack that call the API).
                ingress=[{"from": [*_edge_peers(config), namespace_peer(k8s.prometheus_namespace),
                                   {"podSelector": {"matchLabels": selector(config, "services")}},
                                   # The workers' side: provisioning, workers, flow-run pods.
                                   *worker_side_api_peers(config), *_api_client_peers(config)],
                          "ports": network_ports(API_PORT)}],
                egress=[_database_egress(config, endpoints.api), _redis_egress(config), *_tracing_egress(config)]),
        _policy(config, "services", {"matchLabels": selector(config, "services")}, component="services", ingress=None,
                # The services call the API too (cancellations, automations' actions), and automations' webhooks
                # and notifications leave the cluster (kubernetes.services_outbound).
                egress=[_database_egress(config, endpoints.services), _redis_egress(config),
                        {"to": [_in_namespace()], "ports": network_ports(API_PORT)}, *_tracing_egress(config),
                        *_outbound_egress(config)]),
        _policy(config, "migrate", {"matchLabels": selector(config, "migrate")}, component="migrate", ingress=None,
                egress=[_database_egress(config, endpoints.direct)]),
        _policy(config, "backup", {"matchLabels": selector(config, "backup")}, component="backup", ingress=None,
                egress=[_database_egress(config, endpoints.direct),
                        # S3 (the bucket's endpoint) and the temporary API verification starts on loopback.
                        {"to": anywhere(), "ports": network_ports(database.s3_port(config))}]),
    ]
    return policies


def prefect_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    version = prefect_version()
    image = images.prefect
    manifests = [*_logging(config), _migration_job(config, image, version), *_api(config, image, version),
                 *_services(config, image, version), *_backup(config, image, version), *network_policies(config)]
    return manifests

