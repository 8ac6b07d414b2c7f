"""PostgreSQL on Kubernetes: a CloudNativePG Cluster and its two Poolers, or an external PostgreSQL.

Owns, for ``kubernetes.postgres.mode: cnpg``: the ``Cluster`` (CloudNativePG 1.30), the transaction and session
``Pooler``s with their PodDisruptionBudgets, physical backups through the Barman Cloud plugin (``ObjectStore`` and
``ScheduledBackup``), the ``PodMonitor``s of the instances and poolers, and the NetworkPolicies of those pods. For
``external`` it renders nothing and only says where Prefect connects (``database_endpoints``).

CloudNativePG makes the pods itself, so their policies, monitors and spread constraints select them by the
operator's own labels (``cnpg.io/cluster``, ``cnpg.io/podRole``, ``cnpg.io/poolerName``), never by ours: the operator
sets its own ``app.kubernetes.io/*`` labels on what it creates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.config import ResourcesConfig, StackConfig, size_bytes
from infra.errors import UserError
from infra.kubernetes.objects import (
    DB_CA_FILE,
    LABEL_PART_OF,
    PART_OF,
    Manifest,
    Names,
    anywhere,
    container_security_context,
    dns_egress,
    metadata,
    namespace_peer,
    network_ports,
    pod_security_context,
    resources,
    secret_volume,
    selector,
    topology_spread,
    url_port,
)
from infra.render.postgres import MONITOR_ROLE

CNPG_API = "postgresql.cnpg.io/v1"
BARMAN_API = "barmancloud.cnpg.io/v1"
MONITORING_API = "monitoring.coreos.com/v1"
BARMAN_PLUGIN = "barman-cloud.cloudnative-pg.io"
# The externalClusters entry a recovery bootstraps from (a name within the Cluster's spec).
RECOVERY_SOURCE = "archive"

# CloudNativePG's fixed ports: PostgreSQL (instances and PgBouncer alike), the instance manager's status endpoint
# (the operator calls it), and the metrics exporters of the instances and of the poolers.
POSTGRES_PORT = 5432
INSTANCE_MANAGER_PORT = 8000
INSTANCE_METRICS_PORT = 9187
POOLER_METRICS_PORT = 9127
# Where the instance managers and PgBouncer's manager reach the Kubernetes API: the kubernetes Service (443) and,
# after kube-proxy's DNAT, the API server itself (often 6443); which of the two a CNI's policies see varies.
API_SERVER_PORTS = (443, 6443)

# CloudNativePG's pod labels.
CNPG_CLUSTER = "cnpg.io/cluster"
CNPG_POD_ROLE = "cnpg.io/podRole"
CNPG_POOLER = "cnpg.io/poolerName"

# Server connections a PgBouncer pod may open beyond default_pool_size when clients wait (the local target's
# pgbouncer.ini uses the same value).
RESERVE_POOL_SIZE = 5
# Connections to PostgreSQL outside the poolers: superuser_reserved_connections (3, PostgreSQL's default), the
# instance manager and its metrics exporter (3), and the migration Job or the backup CronJob (1, plus backups.jobs
# for pg_dump's and pg_restore's parallel jobs, added where the budget is checked).
DIRECT_CONNECTIONS = 3 + 3 + 1

# PgBouncer is small (a few MB per thousand client connections plus CloudNativePG's Go manager and exporter);
# the model has no per-pooler resources, so these are fixed. The limit is what keeps a leak from hurting the node.
POOLER_RESOURCES = ResourcesConfig(cpu_request="100m", memory_request="128Mi", memory_limit="256Mi")
# The Barman Cloud sidecar in every instance pod: WAL uploads and, once a night, one base backup stream. Requests
# equal to limits, as the instance's own: the pod is Guaranteed QoS only if every container is.
BACKUP_SIDECAR_RESOURCES = ResourcesConfig(cpu_request="500m", memory_request="512Mi", cpu_limit="500m",
                                           memory_limit="512Mi")


@dataclass(frozen=True)
class DatabaseEndpoints:
    """Where each kind of Prefect process connects: host, port; sslmode for every connection."""

    api: tuple[str, int]        # transaction pooling (the API replicas)
    services: tuple[str, int]   # session pooling (the background services LISTEN)
    direct: tuple[str, int]     # the primary itself (migrations, pg_dump, restores)
    sslmode: str = "require"
    root_cert: str | None = None  # the CA file the server is verified against (libpq's sslrootcert); None: libpq's


def database_endpoints(config: StackConfig) -> DatabaseEndpoints:
    """cnpg: the Poolers' Services and CloudNativePG's ``-rw`` Service (which follows the primary); all serve TLS
    with certificates of the Cluster's CA, which every client mounts and verifies (``verify-ca``: the poolers'
    certificates do not name their Services, so host names are not checked).
    external: the configured host for every kind of connection, with the configured sslmode."""
    pg = config.kubernetes.postgres
    if pg.mode == "external":
        target = (pg.host or "", pg.port)  # the model's validator guarantees a host in external mode
        return DatabaseEndpoints(api=target, services=target, direct=target, sslmode=pg.sslmode)
    names = Names.of(config)
    return DatabaseEndpoints(api=(names.pooler_transaction, POSTGRES_PORT),
                             services=(names.pooler_session, POSTGRES_PORT),
                             direct=(names.database_rw, POSTGRES_PORT), sslmode="verify-ca",
                             root_cert=str(DB_CA_FILE))


def ca_volume(config: StackConfig) -> list[dict[str, Any]]:
    """The Cluster's CA certificate as the volume "db-ca" (to mount at DB_CA_DIR), for a pod that verifies the
    server; none with an external PostgreSQL (its CA is the configured sslmode's business)."""
    if config.kubernetes.postgres.mode != "cnpg":
        return []
    # Only the certificate: the CA secret also holds its private key, which no pod of ours may read.
    return [secret_volume("db-ca", f"{Names.of(config).database}-ca", {"ca.crt": "ca.crt"})]


def database_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    """Every object of the database layer. ``images`` is unused (CloudNativePG runs its own images: the Cluster's
    ``kubernetes.postgres.image`` and the operator's PgBouncer); it is taken for symmetry with the other parts."""
    del images
    if config.kubernetes.postgres.mode == "external":
        if config.backups.physical.enabled:
            raise UserError(
                "backups.physical.enabled needs kubernetes.postgres.mode cnpg: physical backups on Kubernetes are "
                "CloudNativePG's (Barman Cloud plugin), which cannot archive an external PostgreSQL",
                fix="set backups.physical.enabled to false and back up the external PostgreSQL with its own tooling "
                    "(logical backups still run), or use kubernetes.postgres.mode cnpg")
        return []
    check_connection_budget(config)
    if config.kubernetes.postgres.recovery.enabled and not config.backups.physical.enabled:
        raise UserError("kubernetes.postgres.recovery.enabled needs backups.physical.enabled: the recovery replays "
                        "the Barman Cloud archive, which only physical backups write",
                        fix="set backups.physical.enabled: true (and let it archive a base backup and WAL first), "
                            "or restore a logical backup instead")
    manifests = [Manifest(cluster(config), "data")]
    for pooler_name, pool_mode in _poolers(config):
        manifests.append(Manifest(pooler(config, pooler_name, pool_mode), "data"))
        if config.kubernetes.postgres.pooler_instances >= 2:
            manifests.append(Manifest(pooler_disruption_budget(config, pooler_name), "data"))
    if config.backups.physical.enabled:
        manifests.append(Manifest(object_store(config), "data", "physical-backups"))
        manifests.append(Manifest(scheduled_backup(config), "data", "physical-backups"))
    if config.monitoring.enabled:
        manifests.append(Manifest(instances_pod_monitor(config), "monitoring", "monitoring"))
        manifests += [Manifest(pooler_pod_monitor(config, name), "monitoring", "monitoring")
                      for name, _ in _poolers(config)]
    if config.kubernetes.network_policies:
        manifests.append(Manifest(instances_network_policy(config), "namespace", "network-policies"))
        manifests += [Manifest(pooler_network_policy(config, name, client), "namespace", "network-policies")
                      for name, client in _pooler_clients(config)]
    return manifests


def _poolers(config: StackConfig) -> list[tuple[str, str]]:
    """(name, poolMode): a Pooler has one pool mode, so the two modes Prefect needs are two Poolers."""
    names = Names.of(config)
    return [(names.pooler_transaction, "transaction"), (names.pooler_session, "session")]


def _pooler_clients(config: StackConfig) -> list[tuple[str, str]]:
    """(pooler name, the Prefect component that connects through it): the API replicas use transaction pooling,
    the background services session pooling (their triggers service LISTENs)."""
    names = Names.of(config)
    return [(names.pooler_transaction, "api"), (names.pooler_session, "services")]


def check_connection_budget(config: StackConfig) -> None:
    """Every PgBouncer pod of both Poolers may open default_pool_size + reserve connections (plus one for its
    auth_query); with the direct ones they must fit in max_connections, or a busy hour exhausts the slots."""
    pg, pb = config.postgres, config.pgbouncer
    pooler_pods = 2 * config.kubernetes.postgres.pooler_instances
    pooled = pooler_pods * (pb.default_pool_size + RESERVE_POOL_SIZE + 1)
    needed = pooled + DIRECT_CONNECTIONS + config.backups.jobs
    if needed > pg.max_connections:
        raise UserError(
            f"postgres.max_connections is {pg.max_connections} but the Poolers alone may open {pooled} server "
            f"connections ({pooler_pods} PgBouncer pods x (pgbouncer.default_pool_size {pb.default_pool_size} + "
            f"{RESERVE_POOL_SIZE} reserve + 1 auth)), and {needed - pooled} more are needed for administration, "
            "migrations and backups",
            fix=f"raise postgres.max_connections to at least {needed}, or lower pgbouncer.default_pool_size or "
                "kubernetes.postgres.pooler_instances")


def _instance_labels(config: StackConfig) -> dict[str, str]:
    """The instance pods (the Poolers' pods carry ``cnpg.io/cluster`` too, hence the role)."""
    return {CNPG_CLUSTER: Names.of(config).database, CNPG_POD_ROLE: "instance"}


def _storage(config: StackConfig, size: str) -> dict[str, Any]:
    result: dict[str, Any] = {"size": size}
    if config.kubernetes.storage_class:
        result["storageClass"] = config.kubernetes.storage_class
    return result


def postgresql_parameters(config: StackConfig) -> dict[str, str]:
    """postgresql.conf beyond CloudNativePG's defaults (the operator owns replication, TLS, logging format)."""
    pg = config.postgres
    parameters = {
        # Must cover both Poolers' pools plus direct connections (check_connection_budget); replicas get the same.
        "max_connections": str(pg.max_connections),
        # PostgreSQL's own cache; CloudNativePG checks it fits within the pods' memory limit.
        "shared_buffers": pg.shared_buffers,
        # A replica that falls this far behind loses its replication slot (it catches up from the WAL archive, or is
        # re-created) instead of its slot holding WAL until the primary's WAL volume is full, which stops the
        # primary: half the WAL volume.
        "max_slot_wal_keep_size": f"{size_bytes(config.kubernetes.postgres.wal_storage_size) // 1024 ** 2 // 2}MB",
        # Slow statements in the instance logs, as on the other targets (milliseconds).
        "log_min_duration_statement": "5000",
    }
    if config.backups.physical.enabled:
        # A WAL segment with changes is archived within this time even when not full: bounds what losing the whole
        # Cluster loses (CloudNativePG's default is 5 minutes; the local target archives every 60 s too).
        parameters["archive_timeout"] = "60s"
    return parameters


def cluster(config: StackConfig) -> dict[str, Any]:
    """The CloudNativePG Cluster: one primary, instances - 1 streaming replicas, automatic failover."""
    names = Names.of(config)
    k8s_pg = config.kubernetes.postgres
    replicated = k8s_pg.instances > 1
    postgresql: dict[str, Any] = {
        "parameters": postgresql_parameters(config),
        # After CloudNativePG's own rules (local peer, certificate auth of its replication and pooler users over
        # TLS), which come first: refuse every connection that is not TLS, so no password crosses the network in
        # clear. The Poolers, the -rw Service's clients (sslmode require) and replication all use TLS.
        "pg_hba": ["hostnossl all all all reject"],
    }
    if replicated:
        # Quorum synchronous replication: a commit waits for one replica, so a failover loses no acknowledged
        # flow-run state. "preferred": with every replica down, writes go on unreplicated instead of blocking.
        postgresql["synchronous"] = {"method": "any", "number": 1, "dataDurability": "preferred"}
    spec: dict[str, Any] = {
        "description": f"Prefect's database ({config.kubernetes.name})",
        # Primary plus replicas; each on its own node (affinity below). 3: a failover still leaves a replica.
        "instances": k8s_pg.instances,
        # PostgreSQL major version = the project's pg_dump/pg_restore (logical backups need a client as new).
        "imageName": k8s_pg.image,
        "imagePullPolicy": "IfNotPresent",
        "postgresql": postgresql,
        "bootstrap": {"initdb": {
            "database": config.postgres.database,
            "owner": config.postgres.user,
            # kubernetes.io/basic-auth Secret created by deploy: the role Prefect connects as, and its password.
            "secret": {"name": names.secret_db_app},
            # Page checksums: silent storage corruption is reported instead of replicated and backed up.
            "dataChecksums": True,
            # Prefect's search indexes need pg_trgm; created as superuser so the owner needs no extra rights.
            "postInitApplicationSQL": ["CREATE EXTENSION IF NOT EXISTS pg_trgm"],
        }},
        # The backup/restore Job connects as postgres (pg_restore of a whole database, dropping and creating it).
        "enableSuperuserAccess": True,
        "superuserSecret": {"name": names.secret_db_superuser},
        # Roles and their passwords are the operator's: nothing of ours needs the superuser to keep them current.
        "managed": {"roles": managed_roles(config)},
        # Data and WAL on separate volumes: a WAL burst (or an unreachable bucket) cannot fill the data volume.
        "storage": _storage(config, k8s_pg.storage_size),
        "walStorage": _storage(config, k8s_pg.wal_storage_size),
        "resources": resources(k8s_pg.resources),
        "affinity": {
            "enablePodAntiAffinity": True,
            "topologyKey": "kubernetes.io/hostname",
            # required (with replicas): two instances on one node would make a node loss a database loss, which is
            # what the replicas are for; an instance with no node left stays Pending and the Cluster reports it
            # (lower kubernetes.postgres.instances on a cluster with fewer nodes). preferred: one instance.
            "podAntiAffinityType": "required" if replicated else "preferred",
        },
        # Across zones where the nodes have them; never blocks scheduling.
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": _instance_labels(config)}}],
        # Rolling updates (image, parameters) proceed without a human: replicas first, then the primary.
        "primaryUpdateStrategy": "unsupervised",
        # ...by a switchover to an already updated replica (seconds of write outage) rather than a restart of the
        # primary in place. The operator then rejects a change of both imageName and parameters at once: apply
        # them one after the other.
        "primaryUpdateMethod": "switchover" if replicated else "restart",
        # Seconds a primary gets to shut down cleanly in a switchover before it is stopped fast (default 3600): the
        # write outage of a switchover (or a node drain) is bounded by this; a former primary that did not finish
        # is rewound (pg_rewind) when it rejoins.
        "switchoverDelay": 60,
        # Only this label reaches the operator's objects (pods, PVCs, Services): ours would make them look managed
        # by deploy, whose prune must never see a PVC.
        "inheritedMetadata": {"labels": {LABEL_PART_OF: PART_OF}},
    }
    recovery = k8s_pg.recovery
    if config.backups.physical.enabled:
        parameters = {"barmanObjectName": names.database_backups}
        if recovery.enabled and recovery.server_name:
            # A recovered Cluster starts a new timeline: it archives under a name of its own (its own name, see
            # Names), never into the archive it was recovered from (which stays intact for another recovery).
            parameters["serverName"] = recovery.server_name
        spec["plugins"] = [{
            "name": BARMAN_PLUGIN,
            "enabled": True,
            # This plugin archives every WAL segment (continuous archiving, the basis of point-in-time recovery).
            "isWALArchiver": True,
            "parameters": parameters,
        }]
        if config.kubernetes.s3_credentials == "iam-role" and config.kubernetes.s3_identity_annotations:
            # The instances (the plugin's sidecar archives from them) run as the service account CloudNativePG
            # makes for the Cluster: its template carries the cloud role's binding.
            spec["serviceAccountTemplate"] = {"metadata": {
                "annotations": dict(config.kubernetes.s3_identity_annotations)}}
    if recovery.enabled:
        spec["bootstrap"] = {"recovery": recovery_bootstrap(config)}
        spec["externalClusters"] = [{"name": RECOVERY_SOURCE, "plugin": {
            "name": BARMAN_PLUGIN,
            "parameters": {"barmanObjectName": names.database_backups,
                           "serverName": recovery_source(config)}}}]
    return {"apiVersion": CNPG_API, "kind": "Cluster",
            "metadata": metadata(config, names.database, "database"), "spec": spec}


def managed_roles(config: StackConfig) -> list[dict[str, Any]]:
    """The owner (Prefect's role) and the monitor role, with their passwords from the Secrets deploy makes.

    CloudNativePG creates a missing one after the bootstrap and re-applies a role's attributes, memberships and
    password whenever they differ, including after a deploy changes its Secret (at once: the Secrets carry the
    ``cnpg.io/reload`` label), so a rotated password reaches PostgreSQL without a superuser session of ours. A
    recovered Cluster already holds both roles; the same reconciliation gives them the current passwords.
    Attributes left out are PostgreSQL's defaults (no superuser, createdb, createrole, replication), and
    memberships not listed are revoked.
    """
    names = Names.of(config)
    return [
        # Owns the database (bootstrap.initdb made it so) and runs Prefect's migrations.
        {"name": config.postgres.user, "ensure": "present", "login": True,
         "passwordSecret": {"name": names.secret_db_app}},
        # The project's exporter and postgres_exporter: the statistics views (pg_monitor) and, granted by the
        # owner in the migration Job, read access to Prefect's tables.
        {"name": MONITOR_ROLE, "ensure": "present", "login": True, "inRoles": ["pg_monitor"],
         "passwordSecret": {"name": names.secret_db_monitor}},
    ]


def recovery_source(config: StackConfig) -> str:
    """The archive (serverName) a recovery reads: recovery.source_server, or the original Cluster's."""
    return config.kubernetes.postgres.recovery.source_server or Names.of(config).original_database


def on_demand_backup(config: StackConfig, name: str) -> dict[str, Any]:
    """A base backup of the current Cluster at once, through the Barman Cloud plugin: a recovered Cluster's new
    archive holds WAL but no base backup until the next schedule, and WAL alone restores nothing."""
    return {
        "apiVersion": CNPG_API, "kind": "Backup",
        "metadata": metadata(config, name, "database"),
        "spec": {
            "cluster": {"name": Names.of(config).database},
            "method": "plugin",
            "pluginConfiguration": {"name": BARMAN_PLUGIN},
            # As the schedule's: from a replica when there is one.
            "target": "prefer-standby",
        },
    }


def recovery_bootstrap(config: StackConfig) -> dict[str, Any]:
    """Bootstrap from the archive (base backup + WAL) up to recovery.target_time, keeping the database, its owner and
    the owner's Secret as initdb would have made them."""
    recovery = config.kubernetes.postgres.recovery
    bootstrap: dict[str, Any] = {"source": RECOVERY_SOURCE, "database": config.postgres.database,
                                 "owner": config.postgres.user, "secret": {"name": Names.of(config).secret_db_app}}
    if recovery.target_time:
        # The last transaction committed before this time is the last one kept; the newest base backup before it
        # is chosen by the operator.
        bootstrap["recoveryTarget"] = {"targetTime": recovery.target_time}
    return bootstrap


def pooler(config: StackConfig, name: str, pool_mode: str) -> dict[str, Any]:
    """A PgBouncer Deployment in front of the primary (``type: rw`` follows failovers through the -rw Service)."""
    names = Names.of(config)
    pb = config.pgbouncer
    own_pods = {CNPG_POOLER: name}
    # CloudNativePG sets the container's command, ports, probes, uid (998) and its own restricted security
    # context; what is ours: resources and the same hardening stated explicitly (it merges by container name).
    container = {"name": "pgbouncer", "resources": resources(POOLER_RESOURCES),
                 "securityContext": container_security_context(uid=None)}
    return {
        "apiVersion": CNPG_API, "kind": "Pooler",
        "metadata": metadata(config, name, "pooler"),
        "spec": {
            "cluster": {"name": names.database},
            # PgBouncer pods; two or more so that one can be rescheduled (PDB) or replaced without an outage.
            "instances": config.kubernetes.postgres.pooler_instances,
            "type": "rw",
            "pgbouncer": {
                "poolMode": pool_mode,
                "parameters": {
                    # Server connections per database/user pair, per PgBouncer pod (check_connection_budget).
                    "default_pool_size": str(pb.default_pool_size),
                    # Extra server connections when a client has waited reserve_pool_timeout (5 s by default).
                    "reserve_pool_size": str(RESERVE_POOL_SIZE),
                    # Client connections per pod: API replicas x (db_pool_size + db_max_overflow) must fit.
                    "max_client_conn": str(pb.max_client_conn),
                    # Server connections are renewed hourly and closed after 10 idle minutes (as on the other
                    # targets), so a failover's stale connections and idle memory do not linger.
                    "server_lifetime": "3600",
                    "server_idle_timeout": "600",
                    # As on the other targets (infra/render/pgbouncer.py): after a failover or crash, log in again
                    # every second; a stuck client gets PgBouncer's error (HTTP 503, retried) before the replica's
                    # own statement timeout (HTTP 500).
                    "server_login_retry": str(pb.server_login_retry_s),
                    "query_wait_timeout": str(pb.query_wait_timeout_s),
                    "query_timeout": str(pb.query_timeout_s),
                    # Connection churn is the API's normal life: not worth a log line each.
                    "log_connections": "0",
                    "log_disconnections": "0",
                },
            },
            # A new pod is ready before an old one goes: clients never find fewer poolers during a rollout.
            "deploymentStrategy": {"type": "RollingUpdate",
                                   "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {LABEL_PART_OF: PART_OF}},
                "spec": {
                    # The service-account token stays: PgBouncer's manager reads its Pooler and Secrets from the API.
                    "securityContext": pod_security_context(uid=None),
                    "containers": [container],
                    "topologySpreadConstraints": topology_spread(config, "pooler", match_labels=own_pods),
                },
            },
        },
    }


def pooler_disruption_budget(config: StackConfig, name: str) -> dict[str, Any]:
    """CloudNativePG makes PDBs for the instances, not for the Poolers: one pooler pod down at a time."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": metadata(config, name, "pooler"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {CNPG_POOLER: name}}},
    }


def _backup_path(config: StackConfig) -> str:
    s3 = config.backups.s3
    return "s3://" + "/".join(p for p in (s3.bucket, s3.prefix.strip("/"), "cnpg") if p)


def retention_policy(config: StackConfig) -> str:
    """Barman keeps a recovery window, pgBackRest (the model's retention_full) a number of full backups. With one
    base backup a night, retention_full N keeps between N-1 and N days of point-in-time recovery on the other
    targets; a window of N days promises at least N (Barman keeps the newest backup older than the window too,
    so about N + 1 base backups are stored)."""
    return f"{config.backups.physical.retention_full}d"


def object_store(config: StackConfig) -> dict[str, Any]:
    """The Barman Cloud plugin's bucket: base backups and the WAL archive under <prefix>/cnpg/<cluster name>."""
    names = Names.of(config)
    s3, physical = config.backups.s3, config.backups.physical
    credentials: dict[str, Any]
    if config.kubernetes.s3_credentials == "secret":
        credentials = {"accessKeyId": {"name": names.secret_s3, "key": "ACCESS_KEY_ID"},
                       "secretAccessKey": {"name": names.secret_s3, "key": "ACCESS_SECRET_KEY"}}
    else:
        # The instance pods' cloud identity (IRSA, workload identity): the Cluster's service account (named after
        # the Cluster) carries kubernetes.s3_identity_annotations (serviceAccountTemplate).
        credentials = {"inheritFromIAMRole": True}
    wal: dict[str, Any] = {
        # zstd: the best ratio per CPU second of what barman-cloud offers for WAL.
        "compression": "zstd",
        # WAL segments uploaded in parallel after a burst (pgBackRest's process_max on the other targets).
        "maxParallel": physical.process_max,
    }
    data: dict[str, Any] = {
        # Base backups have no zstd in barman-cloud: lz4 is the cheapest on CPU of the rest.
        "compression": "lz4",
        "jobs": physical.process_max,
    }
    if s3.server_side_encryption != "none":
        wal["encryption"] = data["encryption"] = s3.server_side_encryption
        if s3.server_side_encryption == "aws:kms" and s3.kms_key_id:
            wal["archiveAdditionalCommandArgs"] = ["--sse-kms-key-id", s3.kms_key_id]
            data["additionalCommandArgs"] = ["--sse-kms-key-id", s3.kms_key_id]
    return {
        "apiVersion": BARMAN_API, "kind": "ObjectStore",
        "metadata": metadata(config, names.database_backups, "database"),
        "spec": {
            "configuration": {
                "destinationPath": _backup_path(config),
                "endpointURL": config.s3_endpoint_url,
                "s3Credentials": credentials,
                "wal": wal,
                "data": data,
            },
            "retentionPolicy": retention_policy(config),
            "instanceSidecarConfiguration": {
                "resources": resources(BACKUP_SIDECAR_RESOURCES),
                # boto3 in the sidecar: the bucket's region, and checksums only where S3 requires them (boto3 >= 1.36
                # sends new ones that S3-compatible stores reject; the project's own S3 client does the same).
                "env": [{"name": "AWS_DEFAULT_REGION", "value": s3.region},
                        {"name": "AWS_REQUEST_CHECKSUM_CALCULATION", "value": "when_required"},
                        {"name": "AWS_RESPONSE_CHECKSUM_VALIDATION", "value": "when_required"}],
            },
        },
    }


def backup_cron(schedule: str) -> str:
    """backups.schedule (HH:MM, UTC) as CloudNativePG's cron, which has a seconds field first."""
    hour, minute = schedule.split(":")
    return f"0 {int(minute)} {int(hour)} * * *"


def scheduled_backup(config: StackConfig) -> dict[str, Any]:
    """A nightly base backup at the logical backup's time; with the WAL archive it allows recovery to any moment."""
    names = Names.of(config)
    return {
        "apiVersion": CNPG_API, "kind": "ScheduledBackup",
        "metadata": metadata(config, names.database, "database"),
        "spec": {
            "cluster": {"name": names.database},
            "schedule": backup_cron(config.backups.schedule),
            # backups.schedule_enabled false: the schedule stays, and takes no backup.
            "suspend": not config.backups.schedule_enabled,
            # The first base backup at once: until one exists the archived WAL cannot restore anything.
            "immediate": True,
            "method": "plugin",
            "pluginConfiguration": {"name": BARMAN_PLUGIN},
            # Read the data from a replica when there is one, keeping the I/O off the primary.
            "target": "prefer-standby",
            # The Backup objects go with this schedule (the plugin's retention removes their data from S3).
            "backupOwnerReference": "self",
        },
    }


def _pod_monitor(config: StackConfig, name: str, component: str, match_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": MONITORING_API, "kind": "PodMonitor",
        # kube-prometheus-stack's Prometheus selects monitors labelled with its release name.
        "metadata": metadata(config, name, component,
                             extra_labels={"release": config.kubernetes.prometheus_release}),
        "spec": {
            "selector": {"matchLabels": match_labels},
            "podMetricsEndpoints": [{"port": "metrics", "interval": f"{config.monitoring.scrape_interval_s}s"}],
        },
    }


def instances_pod_monitor(config: StackConfig) -> dict[str, Any]:
    """CloudNativePG's exporter on every instance (cnpg_* metrics; enablePodMonitor is deprecated in 1.30). The
    role label keeps the poolers (whose pods also carry cnpg.io/cluster and a metrics port) out of this job."""
    return _pod_monitor(config, Names.of(config).database, "database", _instance_labels(config))


def pooler_pod_monitor(config: StackConfig, name: str) -> dict[str, Any]:
    """The Pooler's PgBouncer exporter (cnpg_pgbouncer_* metrics)."""
    return _pod_monitor(config, name, "pooler", {CNPG_POOLER: name})




def _database_pods(config: StackConfig) -> dict[str, Any]:
    """The instances and the operator's Jobs that make them (initdb, join: a new replica's pg_basebackup from the
    primary, recovery), which carry cnpg.io/cluster but no pod role; not the Poolers' pods (which may carry
    cnpg.io/cluster too). After a recovery, also the old Cluster's until --cleanup deletes it: its pods must not be
    left without a policy (nothing connects to it any more; it still archives its WAL)."""
    clusters = {Names.of(config).database}
    if config.kubernetes.postgres.recovery.enabled:
        clusters.add(recovery_source(config))
    return {"matchExpressions": [
        {"key": CNPG_CLUSTER, "operator": "In", "values": sorted(clusters)},
        {"key": CNPG_POOLER, "operator": "DoesNotExist"}]}


def _database_peer(config: StackConfig) -> dict[str, Any]:
    return {"podSelector": _database_pods(config)}






def _common_egress(config: StackConfig) -> list[dict[str, Any]]:
    """What every CloudNativePG pod needs out: DNS, the primary (and the other instances), the Kubernetes API (the
    instance managers and PgBouncer's manager read their Cluster, Pooler and Secrets from it, and report status)."""
    return [
        dns_egress(),
        {"to": [_database_peer(config)], "ports": network_ports(POSTGRES_PORT)},
        # The API server is not a pod: no selector reaches it. Its ports with no peer at all, not an ipBlock: some
        # CNIs (Cilium) do not match an in-cluster API server with CIDR rules.
        {"ports": network_ports(*API_SERVER_PORTS)},
    ]


def s3_port(config: StackConfig) -> int:
    return url_port(config.s3_endpoint_url)


def instances_network_policy(config: StackConfig) -> dict[str, Any]:
    """Into the database pods (_database_pods): PostgreSQL from the poolers, each other and the Prefect Jobs that
    connect directly (migrations, backups); the operator; Prometheus. Out: see _common_egress, plus S3 for the WAL
    archive (and a recovery's restore)."""
    names = Names.of(config)
    k8s = config.kubernetes
    poolers = {"podSelector": {"matchExpressions": [
        {"key": CNPG_POOLER, "operator": "In", "values": [name for name, _ in _poolers(config)]}]}}
    # Straight to the primary: the migration Job, the backup CronJob and, with monitoring, the project's exporter
    # (its prefect_monitor role reads Prefect's tables; the Poolers only know the application's role).
    direct = ("migrate", "backup", *(("exporter",) if config.monitoring.enabled else ()))
    jobs = [{"podSelector": {"matchLabels": selector(config, component)}} for component in direct]
    egress = _common_egress(config)
    # Replication, pg_rewind and the instance managers' status calls between instances (CloudNativePG asks that its
    # pods reach each other).
    egress.append({"to": [_database_peer(config)], "ports": network_ports(INSTANCE_MANAGER_PORT)})
    if config.backups.physical.enabled:
        # Object stores have no fixed addresses (an in-cluster one needs a namespace rule of its own).
        egress.append({"to": anywhere(), "ports": network_ports(s3_port(config))})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(config, names.database, "database"),
        "spec": {
            "podSelector": _database_pods(config),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [poolers, _database_peer(config), *jobs], "ports": network_ports(POSTGRES_PORT)},
                {"from": [_database_peer(config)], "ports": network_ports(INSTANCE_MANAGER_PORT)},
                # The operator checks each instance's status (8000) and connects to PostgreSQL (5432).
                {"from": [namespace_peer(k8s.operator_namespace)],
                 "ports": network_ports(INSTANCE_MANAGER_PORT, POSTGRES_PORT)},
                {"from": [namespace_peer(k8s.prometheus_namespace)], "ports": network_ports(INSTANCE_METRICS_PORT)},
            ],
            "egress": egress,
        },
    }


def pooler_network_policy(config: StackConfig, name: str, client: str) -> dict[str, Any]:
    """Into one Pooler: its Prefect component, the operator, Prometheus. Out: see _common_egress."""
    k8s = config.kubernetes
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(config, name, "pooler"),
        "spec": {
            "podSelector": {"matchLabels": {CNPG_POOLER: name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": selector(config, client)}},
                          namespace_peer(k8s.operator_namespace)],
                 "ports": network_ports(POSTGRES_PORT)},
                {"from": [namespace_peer(k8s.prometheus_namespace)], "ports": network_ports(POOLER_METRICS_PORT)},
            ],
            "egress": _common_egress(config),
        },
    }
