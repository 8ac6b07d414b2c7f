"""The typed configuration model: the one source of truth for every target (local, compose, kubernetes).

It loads, in increasing priority, from the commented YAML file (``infra/stack.yaml`` by default, or the file
named by ``PREFECT_STACK_CONFIG``) and from ``PREFECT_STACK_*`` environment variables, ``__`` separating
nested fields (``PREFECT_STACK_API__REPLICAS=3``). Every rendered file is derived from this model.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from infra.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent / "stack.yaml"
ENV_PREFIX = "PREFECT_STACK_"
CONFIG_FILE_ENV = "PREFECT_STACK_CONFIG"
# Set in the environment of the compose target's project containers: a task run there does the work itself
# instead of handing it to a container (it is in one). Not a configuration field.
IN_CONTAINER_ENV = "PREFECT_STACK_IN_CONTAINER"
# The compose service of the local S3 endpoint (backups.s3.endpoint_url null) and of PostgreSQL.
COMPOSE_S3_SERVICE = "s3"
COMPOSE_POSTGRES_SERVICE = "postgres"
# The key id of the stack's own S3 endpoint (its secret is generated): one id for boto3 and pgBackRest.
LOCAL_ACCESS_KEY_ID = "prefect-stack-local"
# Loki 3.7.4 (single binary, distroless, runs as uid 10001), pinned by the digest Renovate-managed repositories
# record for that tag (docker.io/grafana/loki:3.7.4); one value for the compose and kubernetes targets.
LOKI_IMAGE = "grafana/loki:3.7.4@sha256:87f0a067673756a3cede1bcbf0c74875f7df9b09fddb53e399d0c576f756cfcc"

Port = int  # validated by Field(ge=1, le=65535) where used

# Redis forks to rewrite its append-only file and to save its RDB snapshot. The child shares the parent's pages
# copy-on-write, and every page the parent writes meanwhile (Prefect writes its streams all the time) is copied
# inside the same memory limit; the replicas' output buffers (client-output-buffer-limit replica: up to 256mb
# each), the replication backlog, client buffers and the allocator's fragmentation are not counted in maxmemory
# either. maxmemory at most half the container's limit leaves room for all of that: closer to the limit, a
# rewrite under load gets Redis OOM-killed before noeviction refuses a write, and before RedisMemoryNearLimit
# (85% of maxmemory) can fire.
REDIS_MAXMEMORY_SHARE = 0.5
# shared_buffers is one allocation for the server's life; everything else PostgreSQL uses is per backend:
# work_mem per sort or hash (4MB, PostgreSQL's default, which the stack keeps), maintenance_work_mem for vacuum
# and index builds (64MB per worker), catalog caches of a few MB each, times the connections PgBouncer opens
# (2 x default_pool_size + reserve: about 85 by default, so about 85 x (4 + 5) MB at worst). PostgreSQL's own
# advice is a quarter of the memory for shared_buffers; up to 40% still leaves the backends their share.
POSTGRES_SHARED_BUFFERS_SHARE = 0.4
# setting -> (its largest share of the memory limit, the unit it is written in, what the rest of the limit is for)
_DATA_MEMORY = {
    "redis.maxmemory": (REDIS_MAXMEMORY_SHARE, "mb", "room for the fork of an AOF rewrite or RDB save (copy-on-write) "
                                                     "and the replication buffers, which maxmemory does not count"),
    "postgres.shared_buffers": (POSTGRES_SHARED_BUFFERS_SHARE, "MB", "the backends' memory (work_mem, "
                                                                     "maintenance_work_mem, caches) per connection"),
}
_SIZE = re.compile(r"^(\d+)([kmgt]?)(?:i|b)?$")
_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")


def size_bytes(size: str) -> int:
    """A memory size in any of the model's spellings, as bytes: Redis's (512mb), Docker's (1g), Kubernetes' (1Gi),
    PostgreSQL's (256MB). All four count in powers of 1024."""
    match = _SIZE.match(size.strip().lower())
    if match is None:
        raise ValueError(f"not a memory size: {size!r}")
    number, unit = int(match.group(1)), match.group(2)
    return number * 1024 ** ("kmgt".find(unit) + 1) if unit else number


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (500m, 1, 1.5) as cores."""
    match = _CPU.match(quantity.strip())
    if match is None:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def _at_most(share: float, limit: str, unit: str) -> str:
    """The largest size in ``unit`` (mb or MB) that is at most ``share`` of ``limit``."""
    return f"{int(size_bytes(limit) * share) // 1024 ** 2}{unit}"


def _to_fit(share: float, size: str, spelling: str) -> str:
    """The smallest limit, spelt as ``spelling`` expects (m for Docker, Mi for Kubernetes), that ``size`` is at
    most ``share`` of."""
    mebibytes = -(-size_bytes(size) // int(1024 ** 2 * share))
    if mebibytes % 1024 == 0:
        return f"{mebibytes // 1024}{spelling.replace('m', 'g').replace('M', 'G')}"
    return f"{mebibytes}{spelling}"


class _Section(BaseModel):
    # An unknown key is far more often a typo than intent: reject it rather than silently ignore it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostgresConfig(_Section):
    port: int = Field(15432, ge=1, le=65535, description="TCP port of the stack's own PostgreSQL cluster.")
    database: str = Field("prefect", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                          description="Name of Prefect's database (a PostgreSQL identifier: lower case, digits, _).")
    user: str = Field("prefect", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                      description="PostgreSQL role Prefect connects as; its password is generated "
                                  "(<state>/secrets/postgres_prefect).")
    max_connections: int = Field(200, ge=20, le=10000,
                                 description="PostgreSQL's max_connections; must cover PgBouncer's two pools "
                                             "(2 x pgbouncer.default_pool_size) plus the exporters and operators.")
    shared_buffers: str = Field("256MB", pattern=r"^\d+(kB|MB|GB)$",
                                description="PostgreSQL's shared_buffers, e.g. 256MB or 2GB (kB, MB or GB); at "
                                            "most 40% of PostgreSQL's memory limit (compose.postgres_memory, "
                                            "kubernetes.postgres.resources.memory_limit), the rest is the "
                                            "backends' (work_mem, maintenance_work_mem).")
    bin_dir: Path = Field(Path("/usr/lib/postgresql/15/bin"), description="Where initdb and postgres live.")


class PgBouncerConfig(_Section):
    port: int = Field(16432, ge=1, le=65535, description="TCP port of PgBouncer, where Prefect connects.")
    # The API replicas share the transaction pool.
    default_pool_size: int = Field(40, ge=1, le=1000,
                                   description="PostgreSQL server connections per pool (transaction and session "
                                               "pools); both together must fit postgres.max_connections.")
    max_client_conn: int = Field(1000, ge=10, le=100000,
                                 description="Client connections PgBouncer accepts in all (every replica's "
                                             "SQLAlchemy pool and the services).")
    server_login_retry_s: int = Field(1, ge=1, le=60,
                                      description="Seconds PgBouncer waits before logging in to PostgreSQL again "
                                                  "after a failed attempt (PgBouncer's default is 15; a crashed "
                                                  "PostgreSQL is back within seconds).")
    query_wait_timeout_s: int = Field(10, ge=1, le=3600,
                                      description="Seconds a client may wait for a server connection before "
                                                  "PgBouncer answers it with an error. Less than "
                                                  "api.db_timeout_s, so the replica answers a retryable 503, not a "
                                                  "500.")
    query_timeout_s: int = Field(0, ge=0, le=3600,
                                 description="Seconds a query may run before PgBouncer cancels it with an error (0: "
                                             "never: a stalled PostgreSQL is waited out up to api.db_timeout_s). "
                                             "Less than api.db_timeout_s.")


class RedisConfig(_Section):
    port: int = Field(16379, ge=1, le=65535, description="TCP port of Redis (password required).")
    maxmemory: str = Field("512mb", pattern=r"^\d+(kb|mb|gb)$",
                           description="Redis's memory limit (kb, mb or gb). With noeviction, writes fail at the "
                                       "limit; the RedisMemoryNearLimit alert fires at 85%. At most half the "
                                       "Redis container's memory limit (compose.redis_memory, "
                                       "kubernetes.redis.resources.memory_limit): the rest is room for the "
                                       "fork of an AOF rewrite and the replication buffers.")


class ApiConfig(_Section):
    replicas: int = Field(2, ge=1, le=32, description="API replicas behind the load balancer.")
    base_port: int = Field(14200, ge=1, le=65535,
                           description="Port of the first API replica: replica i (1-based) listens on "
                                       "base_port + i - 1 (local target; the ports must not collide).")
    # PgBouncer multiplexes these onto default_pool_size server connections.
    db_pool_size: int = Field(10, ge=1, le=200, description="SQLAlchemy connection pool size of each API replica.")
    db_max_overflow: int = Field(10, ge=0, le=200,
                                 description="Connections each API replica may open beyond db_pool_size under load.")
    db_timeout_s: int = Field(30, ge=2, le=600,
                              description="Prefect's database statement timeout (PREFECT_SERVER_DATABASE_TIMEOUT; "
                                          "Prefect's default is 10). A PostgreSQL or PgBouncer stalled for less "
                                          "(a freeze, a slow disk) only delays requests; longer, the replica "
                                          "answers 500. Less than load_balancer.timeout_server_s.")
    # Must exceed HAProxy's idle keep-alive towards the replicas (10 s), or HAProxy may reuse a closing connection.
    keepalive_timeout: int = Field(65, ge=11, le=3600,
                                   description="Seconds an API replica keeps an idle HTTP connection open (more "
                                               "than HAProxy's 10 s keep-alive).")


class ServicesConfig(_Section):
    # One process runs every background service (scheduler, triggers, event persister...). More copies
    # are safe because Docket coordinates them through Redis.
    # null: 1 on one host (local, compose), 2 on Kubernetes, where one pod is a single point of failure (node loss,
    # drain). Read it as StackConfig.services_replicas.
    replicas: int | None = Field(None, ge=1, le=8,
                                 description="Processes running Prefect's background services (scheduler, "
                                             "triggers, event persister, ...); more than one is safe (Docket "
                                             "coordinates them). null: 1 on local and compose, 2 on kubernetes.")
    events_retention: str = Field("P7D", pattern=r"^P(\d+D|T\d+H)$",
                                  description="How long Prefect keeps events, as an ISO 8601 duration in days "
                                              "(P7D) or hours (PT12H); bounds Prefect's largest tables.")


def is_loopback(host: str) -> bool:
    """True for an address (or ``localhost``) that only this host can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name: whatever it resolves to, it may be reached from elsewhere


class TlsConfig(_Section):
    # auto: on for the compose and kubernetes targets (client traffic crosses a network) and for a local
    # bind_address that is not loopback; off for a local loopback bind (traffic never leaves the host).
    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="TLS at the load balancer. auto: on for the compose and kubernetes targets and for a "
                            "non-loopback local bind_address, off for a local loopback bind; on and off force it "
                            "(off is refused on the network unless allow_plaintext_on_network).")
    # Neither: the stack generates a CA per deployment (<state>/secrets/lb_ca.*) and a server certificate signed by
    # it, which the stack's own clients trust.
    cert_file: Path | None = Field(None, description="The operator's PEM certificate (chain, leaf first); set "
                                                     "with key_file or not at all. null: a generated certificate.")
    key_file: Path | None = Field(None, description="The private key of cert_file (unencrypted PEM, mode 0600); "
                                                    "set with cert_file or not at all.")
    extra_names: list[str] = Field(default_factory=list,
                                   description="More DNS names or IP addresses for the generated certificate "
                                               "(localhost, loopback, bind_address and the host of public_url are "
                                               "always in it).")
    allow_plaintext_on_network: bool = Field(
        False, description="The explicit opt-out: serve plain HTTP on a non-loopback address or on the compose and "
                           "kubernetes targets (behind your own TLS-terminating proxy).")

    @model_validator(mode="after")
    def _certificate_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise ValueError(f"load_balancer.tls.{given} is set but load_balancer.tls.{missing} is not; give both "
                             "(your certificate chain and its private key) or neither (the stack generates them)")
        return self


class LoadBalancerConfig(_Section):
    bind_address: str = Field("127.0.0.1", description="Address HAProxy listens on for clients; a non-loopback "
                                                       "address needs TLS (load_balancer.tls).")
    port: int = Field(4200, ge=1, le=65535, description="Where clients and the UI reach Prefect.")
    stats_port: int = Field(8404, ge=1, le=65535, description="HAProxy stats page and Prometheus /metrics.")
    public_url: str | None = Field(None, description="The API URL browsers use (the UI); null: "
                                                     "http(s)://bind_address:port/api.")
    retries: int = Field(3, ge=0, le=10,
                         description="Times HAProxy retries a request no response arrived for (connection refused "
                                     "or closed), on another replica; a slow answer is never retried.")
    timeout_server_s: int = Field(60, ge=1, description="Seconds HAProxy waits for a replica's response.")
    timeout_tunnel_s: int = Field(3600, ge=1, description="Idle timeout of websocket connections.")
    maintenance_retry_after_s: int = Field(2, ge=1, le=60,
                                           description="Retry-After of the 503 (Prefect-Maintenance: true) HAProxy "
                                                       "answers during a deploy's maintenance window: how often "
                                                       "Prefect clients ask again.")
    tls: TlsConfig = TlsConfig()


class S3Config(_Section):
    # The local endpoint keeps its content in memory, lost when it stops: for production, point this at AWS S3 or
    # a store such as MinIO or Ceph RGW.
    endpoint_url: str | None = Field(None, description="S3 endpoint of the backup bucket. null: the stack's own "
                                                       "S3-compatible endpoint (moto, in memory: lost when it "
                                                       "stops), so backups work offline; on Kubernetes, AWS S3.")
    region: str = Field("us-east-1", description="Region of the backup bucket.")
    bucket: str = Field("prefect-backups", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                        description="Backup bucket (an S3 bucket name); backups go to "
                                    "s3://<bucket>/<prefix>/logical/<id>/.")
    prefix: str = Field("prefect", pattern=r"^[A-Za-z0-9._/-]*$", description="Key prefix, no leading '/'.")
    # Credentials come from boto3's usual chain (AWS_* variables, ~/.aws, an instance or pod role); the
    # local endpoint gets generated ones.
    server_side_encryption: Literal["AES256", "aws:kms", "none"] = Field(
        "AES256", description="S3 server-side encryption of every object (aws:kms with kms_key_id).")
    kms_key_id: str | None = Field(None, description="KMS key for server_side_encryption aws:kms; null: the "
                                                     "bucket's default key.")
    multipart_chunk_mb: int = Field(16, ge=5, le=5120, description="S3 parts are at least 5 MiB.")
    max_concurrency: int = Field(4, ge=1, le=64, description="Parallel part uploads and downloads.")
    local_port: int = Field(19000, ge=1, le=65535,
                            description="Port of the stack's own S3 endpoint (only when endpoint_url is null).")


class RetentionConfig(_Section):
    # Grandfather-father-son, as restic's forget --keep-daily/--keep-weekly/--keep-monthly: the newest backup of
    # each of the last N days (UTC), ISO weeks and calendar months that have one is kept. The newest backup and
    # the newest verified one are always kept, whatever these are; 0 turns a rule off. Logical backups only:
    # physical (pgBackRest) backups follow pgBackRest's own repo1-retention-full, which keeps WAL chains whole.
    keep_daily: int = Field(7, ge=0, le=1000,
                            description="Keep the newest logical backup of each of the last N days (UTC); 0: off.")
    keep_weekly: int = Field(4, ge=0, le=1000,
                             description="Keep the newest logical backup of each of the last N ISO weeks; 0: off.")
    keep_monthly: int = Field(6, ge=0, le=1000,
                              description="Keep the newest logical backup of each of the last N months; 0: off.")
    # The wait spares a backup still uploading from another host.
    orphan_grace_hours: int = Field(24, ge=0, le=24 * 365,
                                    description="invoke backup.prune removes folders without a manifest (an "
                                                "interrupted upload) once nothing was written to them for this "
                                                "many hours.")


class PhysicalBackupConfig(_Section):
    # Continuous WAL archiving plus full/incremental backups through pgBackRest, into the same bucket
    # (<prefix>/physical). Off by default: with archiving on, an unreachable bucket makes WAL pile up in
    # pg_wal until it is reachable again, which wants monitoring (and real S3, not the in-memory endpoint).
    enabled: bool = Field(False, description="Continuous WAL archiving and physical backups (pgBackRest; on "
                                             "Kubernetes the Barman Cloud plugin) into <prefix>/physical; needed "
                                             "for point-in-time recovery. Turning it on restarts PostgreSQL once.")
    retention_full: int = Field(2, ge=1, le=100, description="Full backups pgBackRest keeps (with their WAL).")
    process_max: int = Field(2, ge=1, le=32, description="Parallel processes of pgBackRest's backup and restore.")
    # pgBackRest speaks nothing but HTTPS to S3.
    tls_port: int = Field(19443, ge=1, le=65535,
                          description="Port where HAProxy terminates TLS in front of the stack's own S3 endpoint "
                                      "for pgBackRest (only when backups.s3.endpoint_url is null).")


class BackupConfig(_Section):
    s3: S3Config = S3Config()
    physical: PhysicalBackupConfig = PhysicalBackupConfig()
    retention: RetentionConfig = RetentionConfig()
    jobs: int = Field(2, ge=1, le=32, description="pg_dump / pg_restore parallel jobs.")
    # Level 1: on a small host compression competes with pg_dump for the CPUs; higher levels buy little on
    # Prefect's data (logs, JSON events) and cost backup time.
    zstd_level: int = Field(1, ge=1, le=19, description="zstd compression level of logical backups.")
    client_side_encryption: bool = Field(
        False, description="Encrypt every object before upload (streaming AES-256-GCM), with a key kept in the "
                           "secrets.")
    scratch_dir: Path | None = Field(None, description="Where dump files wait for upload and restores are staged; "
                                                       "null: <state>/scratch.")
    schedule: str = Field("02:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                          description="Time of the nightly backup and its verification, UTC, HH:MM (runs never "
                                      "overlap).")
    schedule_enabled: bool = Field(True, description="Run the nightly backup and verification; false: no nightly "
                                                     "run (on compose the backup-scheduler container then only "
                                                     "hosts the backup tasks).")
    # A missed night plus slack.
    max_age_hours: int = Field(26, ge=1, le=24 * 31,
                               description="PrefectBackupTooOld fires when the newest verified backup is older "
                                           "than this many hours.")


class AlertReceiversConfig(_Section):
    # Where Alertmanager sends notifications. None is active by default: firing alerts are always visible in
    # Alertmanager (invoke alerts) and in its log. Credentials (Slack webhook URL, PagerDuty routing key, SMTP
    # password) are read from files in <state>/secrets, never from this file.
    webhook_url: str | None = Field(None, description="An HTTP endpoint that accepts Alertmanager's webhook "
                                                      "JSON; null: none.")
    email_to: str | None = Field(None, description="Send alerts by e-mail to this address (needs email_from and "
                                                   "email_smarthost).")
    email_from: str | None = Field(None, description="Sender address of alert e-mails.")
    email_smarthost: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+:\d+$",
                                        description="SMTP server for alert e-mails, host:port.")
    slack_channel: str | None = Field(None, description="Slack channel for alerts; the webhook URL is read from "
                                                        "<state>/secrets/alert_slack_webhook_url.")
    pagerduty: bool = Field(False, description="Page through PagerDuty; the routing key is read from "
                                               "<state>/secrets/alert_pagerduty_routing_key.")


class MonitoringConfig(_Section):
    enabled: bool = Field(True, description="Run the observability layer on loopback: Prometheus, Alertmanager, "
                                            "node_exporter (the host and the backup textfile metrics), the "
                                            "PostgreSQL, Redis and Prefect exporters.")
    prometheus_port: int = Field(19090, ge=1, le=65535, description="Port of Prometheus (loopback).")
    alertmanager_port: int = Field(19093, ge=1, le=65535, description="Port of Alertmanager (loopback).")
    node_exporter_port: int = Field(19100, ge=1, le=65535, description="Port of node_exporter (loopback).")
    postgres_exporter_port: int = Field(19187, ge=1, le=65535, description="Port of postgres_exporter (loopback).")
    redis_exporter_port: int = Field(19121, ge=1, le=65535, description="Port of redis_exporter (loopback).")
    prefect_exporter_port: int = Field(19200, ge=1, le=65535,
                                       description="Port of the project's own exporter: Prefect's flow runs, work "
                                                   "pools, event pipeline, and PgBouncer's pools.")
    # Prefect takes one auth string, the admin's: Prometheus scrapes the replicas through HAProxy, which checks
    # Prometheus's own credential and lets through only GET of each replica's metrics (infra/render/haproxy.py).
    api_metrics_port: int = Field(19201, ge=1, le=65535,
                                  description="HAProxy's metrics-only listener, where Prometheus scrapes each API "
                                              "replica's /api/metrics with a credential of its own (loopback on the "
                                              "local target, the back-end network on compose; not on Kubernetes).")
    # So a scrape costs the same whatever the size of the run history.
    finished_runs_window_s: int = Field(3600, ge=60, le=7 * 86400,
                                        description="Finished flow runs (completed, failed, crashed, cancelled) "
                                                    "and workers' pickup delays are counted over this trailing "
                                                    "window only, in seconds.")
    scrape_interval_s: int = Field(15, ge=1, le=300, description="Seconds between two scrapes of every target.")
    evaluation_interval_s: int = Field(15, ge=1, le=300, description="Seconds between two evaluations of the "
                                                                      "alert rules.")
    retention: str = Field("15d", pattern=r"^\d+[hdwy]$", description="Prometheus TSDB retention time.")
    # HAProxy already routes around a down replica meanwhile.
    replica_down_for: str = Field("1m", pattern=r"^\d+[smh]$",
                                  description="How long an API replica may be down before PrefectApiReplicaDown "
                                              "fires (e.g. 30s, 1m, 1h).")
    group_wait_s: int = Field(30, ge=0, le=3600,
                              description="Seconds Alertmanager waits to batch the first notification of a new "
                                          "group of alerts (pages go out without it).")
    receivers: AlertReceiversConfig = AlertReceiversConfig()


class JaegerStorageConfig(_Section):
    # badger keeps the traces across restarts on a volume (compose: a named volume; Kubernetes: a
    # PersistentVolumeClaim) and drops them after the retention; memory needs no volume but forgets everything at a
    # restart, and grows with max_traces up to the container's memory limit.
    backend: Literal["badger", "memory"] = Field("badger", description="Jaeger's trace store of the compose and "
                                                                       "kubernetes targets: badger (on a volume, "
                                                                       "kept retention_hours) or memory (no "
                                                                       "volume, max_traces, lost at a restart).")
    retention_hours: int = Field(168, ge=1, le=8760, description="badger: hours a trace is kept.")
    volume_size: str = Field("5Gi", pattern=r"^\d+(Mi|Gi|Ti)$",
                             description="badger on Kubernetes: size of Jaeger's PersistentVolumeClaim.")
    max_traces: int = Field(50000, ge=100, le=10_000_000,
                            description="memory: traces kept, the oldest dropped first; the memory they take "
                                        "must fit Jaeger's limit (1Gi on Kubernetes).")


class TracingConfig(_Section):
    # OpenTelemetry traces of the API replicas (every HTTP request but the health checks) and the background
    # services (Docket tasks), sent over OTLP/HTTP to a collector or Jaeger. `invoke env --tracing` gives flow
    # and worker processes the same settings, so a flow run's spans join the API's in one trace.
    enabled: bool = Field(False, description="Send the API replicas' and the services' spans over OTLP/HTTP to "
                                             "otlp_endpoint (required when on).")
    otlp_endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+(:\d+)?/?$",
                                      description="OTLP/HTTP base URL, e.g. http://jaeger:4318")
    # A production default: a tenth of the new traces shows every slow path of a busy API within minutes, at a
    # tenth of the export cost and of the trace store's size. Tests that must see every trace set 1.0.
    sample_ratio: float = Field(0.1, ge=0.0, le=1.0,
                                description="Share of new traces recorded; a request or flow whose caller's trace is "
                                            "sampled is always recorded (parent-based). 1.0: every trace.")
    jaeger_storage: JaegerStorageConfig = JaegerStorageConfig()


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class LogLevelsConfig(_Section):
    # One scale for every component; each renderer maps it onto the component's own (PostgreSQL's
    # log_min_messages, Redis's loglevel, PgBouncer's verbosity, HAProxy's log level, Prometheus's --log.level).
    api: LogLevel = Field("INFO", description="API replicas: INFO writes one line per request with its request "
                                              "id; WARNING only problems. A change rolls the replicas one by one.")
    services: LogLevel = Field("INFO", description="Background services (scheduler, triggers, event persister...).")
    workers: LogLevel = Field("INFO", description="Workers, and the flow runs they start.")
    postgres: LogLevel = Field("WARNING", description="PostgreSQL (log_min_messages).")
    pgbouncer: LogLevel = Field("INFO", description="PgBouncer (INFO: connections and pool statistics).")
    redis: LogLevel = Field("INFO", description="Redis and Sentinel (INFO: notice).")
    haproxy: LogLevel = Field("INFO", description="The load balancer (INFO: one line per request).")
    monitoring: LogLevel = Field("INFO", description="Prometheus, Alertmanager and the exporters.")


class LogRotationConfig(_Section):
    # supervisord rotates by size only; the age limit is applied by the stack itself (local target). Compose hands
    # size and count to Docker's json-file driver; on Kubernetes the kubelet rotates container logs.
    max_size_mb: int = Field(50, ge=1, le=10240, description="A log file is rotated at this size (MiB; local "
                                                             "and compose).")
    keep: int = Field(10, ge=1, le=1000, description="Rotated files kept per component (local and compose).")
    max_age_days: int = Field(14, ge=1, le=3650, description="Rotated files older than this are deleted (local).")


class LokiStorageConfig(_Section):
    # Loki's compactor deletes chunks older than the retention; the volume must hold that many days of the Prefect
    # processes' records (a few hundred MiB a day for a busy stack at INFO).
    retention_days: int = Field(14, ge=1, le=3650, description="Days Loki keeps the shipped log records (compose "
                                                               "and kubernetes, with compose.loki or kubernetes.loki "
                                                               "on).")
    volume_size: str = Field("10Gi", pattern=r"^\d+(Mi|Gi|Ti)$",
                             description="Kubernetes: size of Loki's PersistentVolumeClaim.")


class LogsConfig(_Section):
    # JSON lines with time (RFC 3339), level, component, message and the ids that tie a request or a flow run across
    # components (request_id, trace_id, span_id, flow_run_id); `invoke logs` reads both formats.
    format: Literal["json", "text"] = Field("json", description="json: one JSON object per line from every Prefect "
                                                                "process and the load balancer; text: Prefect's and "
                                                                "HAProxy's own plain lines.")
    levels: LogLevelsConfig = LogLevelsConfig()
    rotation: LogRotationConfig = LogRotationConfig()
    # Logs go where the spans go, so one collector (or Jaeger's, Loki's OTLP endpoint) receives both.
    export_otlp: bool = Field(True, description="With tracing on, every Prefect process also sends its log records "
                                                "over OTLP/HTTP to tracing.otlp_endpoint (/v1/logs), or to "
                                                "otlp_endpoint when set.")
    # The records go to the SDK's logs exporter, which only runs under opentelemetry-instrument, that is with
    # tracing on. Set on compose and Kubernetes when the stack's own Loki runs (its native OTLP endpoint).
    otlp_endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+(:\d+)?(/\S*)?$",
                                      description="Full OTLP/HTTP URL for the log records, e.g. "
                                                  "http://loki:3100/otlp/v1/logs; null: tracing.otlp_endpoint's "
                                                  "/v1/logs (the stack's Loki when it runs).")
    loki_storage: LokiStorageConfig = LokiStorageConfig()


class LocalTargetConfig(_Section):
    state_dir: Path | None = Field(None, description="Where data, secrets, rendered files and logs live; null: "
                                                     "/var/lib/prefect-stack as root, ~/.local/state/prefect-stack "
                                                     "otherwise.")
    run_as: str = Field("prefect-stack", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
                        description="As root, every process runs as this unprivileged user (created by "
                                    "scripts/bootstrap.sh or deploy).")


class ComposeTargetConfig(_Section):
    # Two stacks (a test and a production one) never share anything on one Docker host.
    project: str = Field("prefect-stack", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
                         description="Docker Compose project name: prefixes every container, network and volume.")
    docker_host: str | None = Field(None, description="Docker engine to use (as DOCKER_HOST); null: DOCKER_HOST "
                                                      "from the environment, else the default socket.")
    base: Literal["registry", "debootstrap"] = Field(
        "registry", description="The Debian base every project image is built FROM. registry: base_image, pulled. "
                                "debootstrap: built on this host from the Debian mirror (air-gapped hosts).")
    base_image: str = Field(
        "debian:bookworm-20251229-slim@sha256:d5d3f9c23164ea16f31852f95bd5959aad1c5e854332fe00f7b3a20fcc9f635c",
        description="Debian 12 slim, pinned by digest (used when base is 'registry').",
    )
    debian_mirror: str | None = Field(None, description="Debian mirror for base debootstrap; null: the first "
                                                        "Debian mirror in the host's apt sources.")
    # Grafana and Jaeger have no Debian packages: their upstream images, pinned by digest. Hosts that cannot pull
    # them turn them off here; their configuration is still rendered and validated.
    grafana: bool = Field(True, description="Run Grafana with the stack's dashboards (an upstream image).")
    grafana_image: str = Field(
        "grafana/grafana:12.3.0@sha256:70d9599b186ce287be0d2c5ba9a78acb2e86c1a68c9c41449454d0fc3eeb84e8",
        description="Grafana's image, pinned by digest.")
    grafana_port: int = Field(13000, ge=1, le=65535, description="Grafana UI (published like the load balancer).")
    jaeger: bool = Field(True, description="Run Jaeger (an upstream image) and send the stack's spans to it.")
    jaeger_image: str = Field(
        "cr.jaegertracing.io/jaegertracing/jaeger:2.20.0@sha256:46a886260e04002d8f45e213fc39063fa11a50446048fdaa64786fc0840cb9f8",
        description="Jaeger's image (v2), pinned by digest.")
    jaeger_ui_port: int = Field(16686, ge=1, le=65535, description="Jaeger UI (published like the load balancer).")
    # Off by default: every Prefect process would export each record over OTLP, a cost the observability
    # benchmark has not measured, and Loki needs its own volume.
    loki: bool = Field(False, description="Run Loki (an upstream image, back-end network only) and ship the API "
                                          "replicas' and services' log records to it over OTLP (needs tracing: "
                                          "the stack's Jaeger or tracing.enabled).")
    loki_image: str = Field(LOKI_IMAGE, description="Loki's image (3.x, single binary), pinned by digest.")
    memory: str = Field("512m", pattern=r"^\d+[kmg]$",
                        description="Memory limit of each container but the API replicas, services, PostgreSQL "
                                    "and Redis (k, m, g).")
    postgres_memory: str = Field("1g", pattern=r"^\d+[kmg]$",
                                 description="Memory limit of the PostgreSQL container; postgres.shared_buffers "
                                             "must be at most 40% of it.")
    redis_memory: str = Field("1g", pattern=r"^\d+[kmg]$",
                              description="Memory limit of the Redis container; redis.maxmemory must be at most "
                                          "half of it (room for an AOF rewrite's fork).")
    api_memory: str = Field("1g", pattern=r"^\d+[kmg]$",
                            description="Memory limit of each API replica and background services container.")
    cpus: float = Field(1.0, gt=0, le=64, description="CPU limit of each container.")


class ResourcesConfig(_Section):
    # Kubernetes requests (what the scheduler reserves) and limits (what the kubelet enforces). A CPU limit
    # throttles a busy replica instead of letting it use an idle core, so it is off unless set.
    cpu_request: str = Field("100m", pattern=r"^\d+(\.\d+)?m?$",
                             description="CPU the scheduler reserves per container (Kubernetes quantity).")
    memory_request: str = Field("256Mi", pattern=r"^\d+(Ki|Mi|Gi)$",
                                description="Memory the scheduler reserves per container (Ki, Mi, Gi).")
    cpu_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?m?$",
                                  description="CPU limit per container; null: none (a limit throttles a busy pod "
                                              "instead of letting it use an idle core).")
    memory_limit: str = Field("512Mi", pattern=r"^\d+(Ki|Mi|Gi)$",
                              description="Memory limit per container, enforced by the kubelet (Ki, Mi, Gi).")


def _guaranteed(resources: ResourcesConfig, field: str) -> None:
    """Data pods run with Guaranteed QoS (requests equal to limits): the last the kubelet evicts or the kernel
    OOM-kills under node pressure, and never throttled below what they were promised."""
    if size_bytes(resources.memory_request) != size_bytes(resources.memory_limit):
        raise ValueError(f"{field}.memory_request {resources.memory_request} differs from memory_limit "
                         f"{resources.memory_limit}; a data pod gets Guaranteed QoS (requests equal to limits): set "
                         "both to the same size")
    if resources.cpu_limit is None or cpu_cores(resources.cpu_limit) != cpu_cores(resources.cpu_request):
        raise ValueError(f"{field}.cpu_limit {resources.cpu_limit or 'null'} differs from cpu_request "
                         f"{resources.cpu_request}; a data pod gets Guaranteed QoS (requests equal to limits): set "
                         "cpu_limit to cpu_request")


class KubernetesRecoveryConfig(_Section):
    # Point-in-time recovery of the CloudNativePG Cluster from its Barman Cloud archive (backups.physical.enabled).
    # With enabled, the Cluster is rendered to bootstrap from the archive of source_server, replaying WAL up to
    # target_time, and to archive its own WAL as server_name (a new timeline must not write into the archive it
    # is recovered from); the Cluster itself is named server_name, beside the live one. `invoke restore --target
    # kubernetes --yes` creates it and moves the Poolers and Prefect to it; `--cleanup` later deletes the old one.
    # Leave it set afterwards: it names the current Cluster (bootstrap only acts at creation).
    enabled: bool = Field(False, description="Render the Cluster to bootstrap from its archive (point-in-time "
                                             "recovery; needs backups.physical.enabled and server_name); then "
                                             "invoke restore --target kubernetes --yes moves Prefect to it.")
    target_time: str | None = Field(None, pattern=r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:?\d\d)?|Z)$",
                                    description="RFC 3339 with its offset; null: replay every archived WAL")
    source_server: str | None = Field(None, description="Archive to recover from (the server_name of the previous "
                                                        "recovery, if any); null: the original Cluster's, <name>-db.")
    server_name: str | None = Field(None, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
                                    description="Archive name of the recovered Cluster, e.g. prefect-db-r1.")

    @model_validator(mode="after")
    def _names_a_new_archive(self) -> KubernetesRecoveryConfig:
        if self.enabled and not self.server_name:
            raise ValueError("kubernetes.postgres.recovery.enabled needs kubernetes.postgres.recovery.server_name: "
                             "the recovered Cluster's own archive name (e.g. prefect-db-r1), different from the "
                             "archive it recovers from")
        if self.enabled and self.source_server and self.source_server == self.server_name:
            raise ValueError("kubernetes.postgres.recovery.server_name must differ from source_server: a new "
                             "timeline must not be archived into the archive it is recovered from")
        return self


class KubernetesPostgresConfig(_Section):
    # cnpg: a CloudNativePG Cluster (one primary, instances - 1 streaming replicas, automatic failover) behind
    # two Poolers. external: an existing PostgreSQL at host:port (its password in <state>/secrets/postgres_prefect).
    mode: Literal["cnpg", "external"] = Field(
        "cnpg", description="cnpg: a CloudNativePG Cluster (one primary, instances - 1 streaming replicas, automatic "
                            "failover) behind two Poolers. external: an existing PostgreSQL at host:port.")
    instances: int = Field(3, ge=1, le=9, description="PostgreSQL instances of the CloudNativePG Cluster.")
    # PostgreSQL 15, the major version of the pg_dump/pg_restore in the project's image (logical backups need
    # a client at least as new as the server). Tag, since no registry is reachable here to resolve a digest.
    image: str = Field("ghcr.io/cloudnative-pg/postgresql:15.14-standard-bookworm",
                       description="CloudNativePG's PostgreSQL image (major version 15, as the project's "
                                   "pg_dump).")
    storage_size: str = Field("20Gi", pattern=r"^\d+(Mi|Gi|Ti)$",
                              description="Data volume of each PostgreSQL instance (Mi, Gi, Ti).")
    wal_storage_size: str = Field("10Gi", pattern=r"^\d+(Mi|Gi|Ti)$",
                                  description="WAL volume of each PostgreSQL instance (Mi, Gi, Ti).")
    pooler_instances: int = Field(2, ge=1, le=16, description="PgBouncer pods of each Pooler.")
    # Guaranteed QoS: requests equal to limits (CloudNativePG gives the same to its init container).
    resources: ResourcesConfig = ResourcesConfig(cpu_request="1", memory_request="2Gi", cpu_limit="1",
                                                 memory_limit="2Gi")
    host: str | None = Field(None, description="external mode: host name of your PostgreSQL (its password in "
                                               "<state>/secrets/postgres_prefect).")
    port: int = Field(5432, ge=1, le=65535, description="external mode: port of your PostgreSQL.")
    sslmode: Literal["require", "verify-ca", "verify-full"] = Field(
        "require", description="external mode: libpq sslmode of the connections to your PostgreSQL.")
    recovery: KubernetesRecoveryConfig = KubernetesRecoveryConfig()

    @model_validator(mode="after")
    def _instances_are_guaranteed(self) -> KubernetesPostgresConfig:
        if self.mode == "cnpg":
            _guaranteed(self.resources, "kubernetes.postgres.resources")
        return self

    @model_validator(mode="after")
    def _external_has_a_host(self) -> KubernetesPostgresConfig:
        if self.mode == "external" and not self.host:
            raise ValueError("kubernetes.postgres.mode is external but kubernetes.postgres.host is not set; set it "
                             "to your PostgreSQL's host name, or use mode cnpg")
        return self


class KubernetesRedisConfig(_Section):
    # sentinel: `replicas` Redis pods (one primary, the rest replicas) each with a Sentinel beside it; a failed
    # primary is replaced by a replica within seconds, and clients follow through redis+sentinel:// URLs.
    # standalone: one Redis pod (a restart loses nothing on disk, but the API waits for it). external: host:port.
    mode: Literal["sentinel", "standalone", "external"] = Field(
        "sentinel", description="sentinel: Redis pods with a Sentinel each, failing over within seconds (one per "
                                "node, required: needs as many schedulable nodes as replicas). standalone: one Redis "
                                "pod. external: your Redis at external_url.")
    replicas: int = Field(3, ge=3, le=9, description="Redis pods in sentinel mode (and as many Sentinels), one per "
                                                     "node.")
    storage_size: str = Field("5Gi", pattern=r"^\d+(Mi|Gi|Ti)$",
                              description="Volume of each Redis pod (Mi, Gi, Ti).")
    # Guaranteed QoS: requests equal to limits. Half a core: Redis runs commands on one thread, and the fork of a
    # rewrite shares the quota. The memory: twice the default redis.maxmemory (REDIS_MAXMEMORY_SHARE).
    resources: ResourcesConfig = ResourcesConfig(cpu_request="500m", memory_request="1Gi", cpu_limit="500m",
                                                 memory_limit="1Gi")
    external_url: str | None = Field(None, pattern=r"^rediss?(\+sentinel)?://[^\s@]+$",
                                     description="external mode: a redis:// or redis+sentinel:// URL without the "
                                                 "password (read from <state>/secrets/redis).")

    @model_validator(mode="after")
    def _pods_are_guaranteed(self) -> KubernetesRedisConfig:
        if self.mode != "external":
            _guaranteed(self.resources, "kubernetes.redis.resources")
        return self

    @model_validator(mode="after")
    def _external_has_a_url(self) -> KubernetesRedisConfig:
        if self.mode == "external" and not self.external_url:
            raise ValueError("kubernetes.redis.mode is external but kubernetes.redis.external_url is not set; set "
                             "it (redis://host:6379 or redis+sentinel://s1:26379,s2:26379/mymaster), or use "
                             "mode sentinel")
        return self


class IngressConfig(_Section):
    enabled: bool = Field(True, description="Expose the API and UI through an Ingress with TLS (cert-manager "
                                            "issues its certificate).")
    host: str = Field("prefect.example.com", pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$",
                      description="Host name of the Ingress; set it to yours.")
    class_name: str = Field("nginx", description="IngressClass of the Ingress.")
    cluster_issuer: str | None = Field("letsencrypt", description="cert-manager ClusterIssuer; null: bring tls_secret.")
    tls_secret: str = Field("prefect-tls", pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$",
                            description="Secret holding the Ingress certificate (made by cert-manager, or yours).")


# A Gateway API host name (HTTPRoute spec.hostnames): a DNS name, or one with a leading wildcard label.
GATEWAY_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_K8S_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class GatewayConfig(_Section):
    # The Gateway API is the successor of the Ingress (ingress-nginx is being retired). The stack renders only its
    # route: the Gateway (listeners, certificate, controller) belongs to the cluster's platform, and its HTTPS
    # listener must admit routes from the stack's namespace (allowedRoutes).
    enabled: bool = Field(False, description="Expose the API and UI through an HTTPRoute "
                                             "(gateway.networking.k8s.io/v1) attached to the Gateway below (needs "
                                             "the Gateway API CRDs); may run beside the Ingress while clients move "
                                             "over.")
    name: str = Field("gateway", pattern=_K8S_NAME, description="Name of the parent Gateway.")
    namespace: str | None = Field("gateway-system", pattern=_K8S_NAME,
                                  description="Namespace of the parent Gateway; null: the stack's namespace.")
    section_name: str | None = Field("https", pattern=_K8S_NAME,
                                     description="The Gateway's listener the route attaches to (the HTTPS one, which "
                                                 "holds the certificate); null: every listener that admits it.")
    hostnames: list[str] = Field([], max_length=16, description="Host names the route answers (a leading *. "
                                                                "allowed); empty: kubernetes.ingress.host.")
    data_plane_namespace: str | None = Field(
        None, pattern=_K8S_NAME, description="Namespace of the Gateway's proxy pods, allowed in to the API (Envoy "
                                             "Gateway: envoy-gateway-system; Istio and most others: the Gateway's "
                                             "own); null: the Gateway's namespace.")
    data_plane_pod_labels: dict[str, str] = Field(
        {}, description="Labels of the proxy pods (all must match), e.g. {gateway.networking.k8s.io/gateway-name: "
                        "gateway}; empty: every pod of data_plane_namespace.")

    @model_validator(mode="after")
    def _hostnames_are_names(self) -> GatewayConfig:
        for hostname in self.hostnames:
            if len(hostname) > 253 or not GATEWAY_HOSTNAME.match(hostname):
                raise ValueError(f"hostnames: {hostname!r} is not a host name (lower-case DNS labels, optionally "
                                 "after a leading *.), e.g. prefect.example.com")
        return self


# Private and unique-local ranges: where a cluster's pods and Services usually live, kept out of the services' way out.
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]


class OutboundConfig(_Section):
    # Prefect's automations act from the background services (webhooks, Slack, e-mail through SMTP): without a way
    # out they fail silently under the default-deny NetworkPolicies.
    ports: list[int] = Field([443, 587], description="TCP ports the background services may reach outside the "
                                                     "cluster (automations' webhooks and notifications: HTTPS 443, "
                                                     "SMTP submission 587); empty: none.")
    cidrs: list[str] = Field(["0.0.0.0/0", "::/0"], description="Address ranges those ports may be reached at.")
    except_cidrs: list[str] = Field(PRIVATE_RANGES, description="Ranges left out of cidrs (default: the private "
                                                                "ranges, where the cluster's own pods and Services "
                                                                "usually are); set your cluster's CIDRs instead, or "
                                                                "[] for a webhook on a private address.")

    @model_validator(mode="after")
    def _ranges_are_networks(self) -> OutboundConfig:
        try:
            cidrs = [ipaddress.ip_network(c) for c in self.cidrs]
            excepted = [ipaddress.ip_network(c) for c in self.except_cidrs]
        except ValueError as exc:
            raise ValueError(f"not an address range: {exc}; write ranges as CIDRs, e.g. 0.0.0.0/0") from None
        for port in self.ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not between 1 and 65535")
        for network in excepted:
            if not any(network.version == c.version and network.subnet_of(c) for c in cidrs):  # type: ignore[arg-type]
                raise ValueError(f"except_cidrs {network} lies in none of cidrs ({', '.join(self.cidrs)}); "
                                 "a NetworkPolicy can only except a part of a range it allows")
        return self

    def ip_blocks(self) -> list[dict[str, Any]]:
        """NetworkPolicy ipBlock peers: each range with the excepted ranges that lie in it."""
        blocks = []
        for cidr in self.cidrs:
            network = ipaddress.ip_network(cidr)
            inside = [e for e in self.except_cidrs if (n := ipaddress.ip_network(e)).version == network.version
                      and n.subnet_of(network)]  # type: ignore[arg-type]
            blocks.append({"ipBlock": {"cidr": cidr, **({"except": inside} if inside else {})}})
        return blocks


class TolerationConfig(_Section):
    key: str | None = Field(None, description="The taint's key; null with operator Exists: every taint.")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="Equal: the taint's value must be value; "
                                                                      "Exists: any value.")
    value: str | None = Field(None, description="The taint's value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint's effect; null: every effect.")
    toleration_seconds: int | None = Field(None, ge=0, description="NoExecute only: how long a pod stays on a "
                                                                   "node after the taint appears.")

    @model_validator(mode="after")
    def _consistent(self) -> TolerationConfig:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value; remove value or use operator Equal")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration_seconds applies to effect NoExecute only; set effect: NoExecute or "
                             "remove toleration_seconds")
        return self

    def as_kubernetes(self) -> dict[str, Any]:
        names = {"key": self.key, "operator": self.operator, "value": self.value, "effect": self.effect,
                 "tolerationSeconds": self.toleration_seconds}
        return {name: value for name, value in names.items() if value is not None}


class SchedulingConfig(_Section):
    # Dedicated node pools (taints and labels), a priority that keeps the control plane of Prefect scheduled under
    # pressure, and a private registry: the same for every pod of the stack, CloudNativePG's included.
    node_selector: dict[str, str] = Field({}, description="Node labels every pod of the stack requires (e.g. "
                                                          "{node-pool: prefect}).")
    tolerations: list[TolerationConfig] = Field([], description="Taints every pod of the stack tolerates (a "
                                                                "dedicated node pool's).")
    priority_class: str | None = Field(None, pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$",
                                       description="PriorityClass of every pod of the stack; null: the cluster's "
                                                   "default.")
    image_pull_secrets: list[str] = Field([], description="Secrets (type dockerconfigjson, in the namespace) the "
                                                          "pods of the project's images pull with from "
                                                          "kubernetes.image_registry.")


class ApiClientConfig(_Section):
    # Workers and flow-run pods inside the cluster call the API directly (not through the Ingress).
    namespace: str | None = Field(None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                                  description="Namespace of the client pods; null: the stack's own namespace.")
    pod_labels: dict[str, str] = Field({}, description="Labels the client pods carry (all of them must match); "
                                                       "empty: every pod of the namespace.")


# Verification's temporary PostgreSQL server and Prefect API share the backup pod's memory limit.
BACKUP_POD_MIN_MEMORY = 1024**3


class KubernetesTargetConfig(_Section):
    namespace: str = Field("prefect", pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                           description="The namespace everything lives in (created with the Pod Security "
                                       "restricted labels).")
    name: str = Field("prefect", pattern=r"^[a-z]([a-z0-9-]{0,22}[a-z0-9])?$",
                      description="Prefix of every object's name and the app.kubernetes.io/instance label: two "
                                  "stacks can share a namespace.")
    version: str = Field("1.32", pattern=r"^1\.(2[5-9]|3[0-7])$",
                         description="The Kubernetes version whose API schemas the rendered objects are validated "
                                     "against (1.25 to 1.37).")
    # Tags are content hashes, never latest.
    image_registry: str | None = Field(None, pattern=r"^[a-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)*$",
                                       description="Where invoke images.push pushes the project's images; null: "
                                                   "their local names (nodes that have them loaded, e.g. kind load "
                                                   "docker-image).")
    storage_class: str | None = Field(None, description="StorageClass of every volume; null: the cluster's default.")
    postgres: KubernetesPostgresConfig = KubernetesPostgresConfig()
    redis: KubernetesRedisConfig = KubernetesRedisConfig()
    ingress: IngressConfig = IngressConfig()
    gateway: GatewayConfig = GatewayConfig()
    api_resources: ResourcesConfig = ResourcesConfig(cpu_request="500m", memory_request="512Mi", memory_limit="1Gi")
    services_resources: ResourcesConfig = ResourcesConfig(cpu_request="250m", memory_request="512Mi",
                                                          memory_limit="1Gi")
    # The backup pod also runs verification's temporary PostgreSQL server (shared_buffers 128MB, index builds of
    # pg_restore's jobs) and then a temporary Prefect API on the restored copy: about 1 GiB at its peak.
    backup_resources: ResourcesConfig = ResourcesConfig(cpu_request="250m", memory_request="1Gi",
                                                        memory_limit="2Gi")
    backup_scratch_size: str = Field("20Gi", pattern=r"^\d+(Mi|Gi|Ti)$",
                                     description="Ephemeral scratch volume of the backup CronJob: the dump before "
                                                 "upload, and for verification the fetched dump plus the "
                                                 "temporary PostgreSQL server's restored copy (about three times "
                                                 "the dump's uncompressed size).")
    network_policies: bool = Field(True, description="Default-deny NetworkPolicies plus exactly the flows the "
                                                     "stack needs (needs a CNI that enforces them).")
    services_outbound: OutboundConfig = OutboundConfig()
    scheduling: SchedulingConfig = SchedulingConfig()
    flow_run_namespace: str | None = Field(
        None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="Namespace where kubernetes pools' flow-run Jobs go (created and labelled by you when it is "
                    "not the stack's); null: the stack's namespace.")
    api_clients: list[ApiClientConfig] = Field([], description="Pods allowed in to the API besides the ingress "
                                                               "controller, Prometheus and the background services "
                                                               "(workers, flow-run pods): a namespace and labels "
                                                               "each.")
    api_client_cidrs: list[str] = Field([], description="Address ranges allowed in to the API: an ingress "
                                                        "controller on the host network reaches the pods from its "
                                                        "node's address, e.g. your nodes' CIDR.")
    ingress_namespace: str = Field("ingress-nginx", description="Namespace of the ingress controller, allowed in "
                                                                "to the API while ingress.enabled.")
    operator_namespace: str = Field("cnpg-system", description="Namespace of CloudNativePG's operator (it reaches "
                                                              "the instances on 8000 and 5432) and its Barman "
                                                              "Cloud plugin.")
    prometheus_namespace: str = Field("monitoring", description="Namespace of Prometheus, allowed in to the "
                                                                "metrics ports.")
    prometheus_release: str = Field("kube-prometheus-stack",
                                    description="kube-prometheus-stack selects ServiceMonitors, PodMonitors and "
                                                "PrometheusRules labelled release: <this>.")
    # IRSA: eks.amazonaws.com/role-arn; GKE: iam.gke.io/gcp-service-account; Azure: azure.workload.identity/client-id.
    s3_identity_annotations: dict[str, str] = Field(
        {}, description="s3_credentials iam-role: annotations of the service accounts that talk to S3 (the backup "
                        "CronJob's, the database Cluster's), binding them to the cloud role, e.g. "
                        "{eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/prefect-backups}.")
    s3_identity_pod_labels: dict[str, str] = Field(
        {}, description="s3_credentials iam-role: labels the backup pods need for their identity (Azure: "
                        "{azure.workload.identity/use: 'true'}).")
    s3_credentials: Literal["secret", "iam-role"] = Field(
        "secret", description="S3 credentials of backups. secret: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY at "
                              "deploy, into a Secret. iam-role: the pods' cloud identity (IRSA, workload identity).")
    jaeger: bool = Field(True, description="A Jaeger (all-in-one, Badger storage) in the namespace, with the "
                                           "Prefect pods' spans sent to it unless tracing.otlp_endpoint names "
                                           "another collector; part of the monitoring component.")
    jaeger_image: str = Field(
        "cr.jaegertracing.io/jaegertracing/jaeger:2.20.0@sha256:46a886260e04002d8f45e213fc39063fa11a50446048fdaa64786fc0840cb9f8",
        description="Jaeger's image (v2), pinned by digest.")
    loki: bool = Field(False, description="A Loki (single binary, a PersistentVolumeClaim) in the namespace, with "
                                          "the API and services pods' log records sent to it over OTLP and a Grafana "
                                          "datasource for it; part of the monitoring component.")
    loki_image: str = Field(LOKI_IMAGE, description="Loki's image (3.x, single binary), pinned by digest.")
    wait_timeout_s: int = Field(600, ge=30, le=7200,
                                description="Seconds deploy waits per phase (a rollout, a CloudNativePG "
                                            "switchover) before it gives up and names the phase.")
    # Pinning it keeps a deploy from landing on the wrong cluster.
    context: str | None = Field(None, pattern=r"^[^\s]+$",
                                description="The kubeconfig context deploy, status, logs, restart and destroy "
                                            "use; null: the current context (of KUBECONFIG).")

    @model_validator(mode="after")
    def _gateway_data_plane_is_named(self) -> KubernetesTargetConfig:
        gateway = self.gateway
        shared = self.gateway_data_plane_namespace == self.namespace
        if gateway.enabled and shared and not gateway.data_plane_pod_labels:
            raise ValueError(f"gateway: the Gateway's proxy pods are in the stack's own namespace ({self.namespace}), "
                             "and without gateway.data_plane_pod_labels every pod there would be allowed in to the "
                             "API; set the proxy pods' labels, e.g. {gateway.networking.k8s.io/gateway-name: "
                             f"{gateway.name}}}")
        return self

    @property
    def gateway_data_plane_namespace(self) -> str:
        """Where the Gateway's proxy pods run: data_plane_namespace, else the Gateway's, else the stack's."""
        return self.gateway.data_plane_namespace or self.gateway.namespace or self.namespace

    @model_validator(mode="after")
    def _backup_pod_holds_a_verification(self) -> KubernetesTargetConfig:
        if size_bytes(self.backup_resources.memory_limit) < BACKUP_POD_MIN_MEMORY:
            raise ValueError(f"backup_resources.memory_limit {self.backup_resources.memory_limit} is below 1Gi: the "
                             "backup pod runs verification's temporary PostgreSQL server and a Prefect API on the "
                             "restored copy; set at least 1Gi")
        return self

    @model_validator(mode="after")
    def _api_client_ranges_are_networks(self) -> KubernetesTargetConfig:
        for cidr in self.api_client_cidrs:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise ValueError(f"api_client_cidrs: {exc}; write ranges as CIDRs, e.g. 10.0.0.0/16") from None
        return self


_POOL_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"


class WorkQueueConfig(_Section):
    # Prefect creates a pool's "default" queue itself; the model may set its priority and limit like any other.
    name: str = Field(pattern=_POOL_NAME, description="Queue name inside its pool.")
    priority: int = Field(1, ge=1, le=1000, description="Workers take runs from lower numbers first.")
    concurrency_limit: int | None = Field(None, ge=0, le=100000,
                                          description="Runs of this queue in progress at once; null: no limit.")


class WorkPoolConfig(_Section):
    name: str = Field(pattern=_POOL_NAME, description="Work pool name (deployments name it in work_pool_name).")
    type: Literal["process", "docker", "kubernetes"] | None = Field(
        None, description="null: process on local and compose, kubernetes on kubernetes (a flow run as a Job). "
                          "docker: compose only, with workers.docker_socket (read docs/workers.md first).")
    description: str = Field("", max_length=500, description="Shown in the UI.")
    concurrency_limit: int | None = Field(None, ge=0, le=100000,
                                          description="Runs of the pool in progress at once; null: no limit.")
    job_variables: dict[str, Any] = Field(
        {}, description="Defaults of the base job template's variables (e.g. env, working_dir, image): each must "
                        "be a variable of the pool type and valid against its schema; deployments may override.")
    job_configuration: dict[str, Any] = Field(
        {}, description="Merged (recursively) over the base job template's job_configuration, e.g. a Kubernetes "
                        "job_manifest's pod spec; each top-level key must exist in the pool type's template.")
    queues: list[WorkQueueConfig] = Field([WorkQueueConfig(name="default")], min_length=1, max_length=50,
                                          description="Queues of the pool, with priorities and limits.")

    @model_validator(mode="after")
    def _queues_are_distinct(self) -> WorkPoolConfig:
        names = [queue.name for queue in self.queues]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"work pool {self.name!r} lists queue {name!r} twice; give each queue once")
        return self


class WorkerConfig(_Section):
    pool: str = Field(pattern=_POOL_NAME, description="The work pool (one of workers.pools) these workers serve.")
    count: int = Field(1, ge=0, le=32, description="Worker processes (local), containers (compose) or pods "
                                                  "(kubernetes) serving the pool.")
    queues: list[str] = Field([], description="Queues to take runs from; empty: every queue of the pool.")
    limit: int | None = Field(None, ge=1, le=10000,
                              description="Flow runs one worker starts at once (--limit); null: no limit.")
    resources: ResourcesConfig = Field(
        ResourcesConfig(cpu_request="100m", memory_request="256Mi", memory_limit="1Gi"),
        description="Kubernetes: the worker pod's requests and limits; compose: memory_limit is the container's "
                    "memory limit (process pools run flows inside it).")


class WorkersConfig(_Section):
    """Work pools provisioned through Prefect's API at deploy, and the workers that run their flows."""

    enabled: bool = Field(True, description="Provision the pools and run the workers; false: a server only.")
    pools: list[WorkPoolConfig] = Field([WorkPoolConfig(name="default")], max_length=50,
                                        description="Work pools the deploy creates and keeps as described (a pool "
                                                    "edited in the UI is put back; pools not listed are left alone).")
    workers: list[WorkerConfig] = Field([WorkerConfig(pool="default")], max_length=50,
                                        description="Workers, per pool.")
    health_base_port: int = Field(18080, ge=1, le=65535,
                                  description="local: worker i serves its health endpoint on 127.0.0.1, port "
                                              "health_base_port + i - 1 (workers numbered across the list).")
    flow_code_dir: Path | None = Field(
        None, description="Where flow code lives (the process workers' working directory; compose mounts it at "
                          "the same path); null: <state_dir>/flows on local, /opt/prefect/flows in containers.")
    python: Path | None = Field(
        None, description="local: the Python environment (a virtualenv directory) that runs the workers and so "
                          "the flows; it needs the same prefect version as the stack. null: the stack's own .venv.")
    # A run created just after a poll waits for the next one: Prefect's 10 s make a run wait 5 s on average for
    # nothing. A poll is one cheap indexed query; 3 s cut the wait by 3 (invoke bench.workers, docs/benchmarks.md).
    query_interval_s: int | None = Field(
        3, ge=1, le=600, description="Seconds between a worker's polls for due runs "
                                     "(PREFECT_WORKER_QUERY_SECONDS); null: Prefect's default (10).")
    prefetch_s: int | None = Field(
        None, ge=0, le=3600, description="A worker claims runs this many seconds before they are due, to have "
                                         "the process started in time (PREFECT_WORKER_PREFETCH_SECONDS); null: "
                                         "Prefect's default (10).")
    flow_heartbeat_s: int = Field(
        60, ge=30, le=3600, description="Seconds between a running flow's heartbeats "
                                        "(PREFECT_FLOWS_HEARTBEAT_FREQUENCY); Prefect's minimum is 30.")
    missed_heartbeats: int = Field(
        3, ge=2, le=20, description="A run that misses this many heartbeats in a row is marked Crashed (the "
                                    "provisioned zombie-run automation).")
    crashed_run_retries: int = Field(
        1, ge=0, le=10, description="Times a deployment run that crashed is scheduled again (an automation "
                                    "matching its run count); 0: a crashed run stays Crashed.")
    docker_socket: bool = Field(
        False, description="compose: mount the Docker socket into the workers of docker pools. Root on the host "
                           "for whoever controls a flow: read docs/workers.md before turning it on.")

    @model_validator(mode="after")
    def _workers_serve_pools(self) -> WorkersConfig:
        pools = {pool.name: pool for pool in self.pools}
        if len(pools) != len(self.pools):
            names = [pool.name for pool in self.pools]
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"workers.pools lists pool {twice!r} twice; give each pool once")
        for i, worker in enumerate(self.workers):
            if worker.pool not in pools:
                raise ValueError(f"workers.workers[{i}].pool {worker.pool!r} is not one of workers.pools "
                                 f"({', '.join(pools) or 'none'}); add the pool or fix the name")
            known = {queue.name for queue in pools[worker.pool].queues}
            for queue in worker.queues:
                if queue not in known:
                    raise ValueError(f"workers.workers[{i}].queues names {queue!r}, not a queue of pool "
                                     f"{worker.pool!r} ({', '.join(sorted(known))}); add it to the pool's queues")
        return self

    @property
    def flow_heartbeat_timeout_s(self) -> int:
        """Seconds without a heartbeat after which a running flow counts as dead."""
        return self.flow_heartbeat_s * self.missed_heartbeats

    def numbered(self) -> list[tuple[str, WorkerConfig]]:
        """Every worker process by its name (<pool>-<n>, n from 1 per pool), in the order of the list."""
        seen: dict[str, int] = {}
        named = []
        for worker in self.workers:
            for _ in range(worker.count):
                seen[worker.pool] = seen.get(worker.pool, 0) + 1
                named.append((f"{worker.pool}-{seen[worker.pool]}", worker))
        return named


class StackConfig(BaseSettings):
    """Everything a deployment needs to know, for every target."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    target: Literal["local", "compose", "kubernetes"] = Field(
        "local", description="Where the stack runs: local (processes on this host), compose (containers on one "
                             "Docker host) or kubernetes (a cluster); --target on a task overrides it.")
    postgres: PostgresConfig = PostgresConfig()
    pgbouncer: PgBouncerConfig = PgBouncerConfig()
    redis: RedisConfig = RedisConfig()
    api: ApiConfig = ApiConfig()
    services: ServicesConfig = ServicesConfig()
    load_balancer: LoadBalancerConfig = LoadBalancerConfig()
    local: LocalTargetConfig = LocalTargetConfig()
    compose: ComposeTargetConfig = ComposeTargetConfig()
    kubernetes: KubernetesTargetConfig = KubernetesTargetConfig()
    backups: BackupConfig = BackupConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    tracing: TracingConfig = TracingConfig()
    logs: LogsConfig = LogsConfig()
    workers: WorkersConfig = WorkersConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get(CONFIG_FILE_ENV) or str(DEFAULT_CONFIG_FILE)
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))

    @property
    def services_replicas(self) -> int:
        """services.replicas, or its default for the target when unset."""
        if self.services.replicas is not None:
            return self.services.replicas
        return 2 if self.target == "kubernetes" else 1

    def pool_type(self, pool: WorkPoolConfig) -> str:
        """The pool's type, or its default for the target when unset: flow runs as Jobs on a cluster, as
        processes beside their worker elsewhere."""
        if pool.type is not None:
            return pool.type
        return "kubernetes" if self.target == "kubernetes" else "process"

    @model_validator(mode="after")
    def _pools_fit_the_target(self) -> StackConfig:
        if not self.workers.enabled:
            return self
        allowed = {"local": {"process"}, "compose": {"process", "docker"}, "kubernetes": {"kubernetes"}}[self.target]
        for i, pool in enumerate(self.workers.pools):
            kind = self.pool_type(pool)
            if kind not in allowed:
                raise ValueError(f"workers.pools[{i}] ({pool.name}) has type {kind}, which the {self.target} target "
                                 f"cannot run; use {' or '.join(sorted(allowed))} (or null for the target's "
                                 "default)")
            if kind == "docker" and not self.workers.docker_socket:
                raise ValueError(f"workers.pools[{i}] ({pool.name}) has type docker, whose workers need the Docker "
                                 "socket; set workers.docker_socket: true after reading docs/workers.md (the socket "
                                 "is root on the host), or use type process")
        return self

    @model_validator(mode="after")
    def _pooler_answers_before_the_replica_gives_up(self) -> StackConfig:
        # PgBouncer's error is one Prefect answers 503 (retried); the replica's own timeout answers 500.
        limit = self.api.db_timeout_s
        for name, value in (("query_wait_timeout_s", self.pgbouncer.query_wait_timeout_s),
                            ("query_timeout_s", self.pgbouncer.query_timeout_s)):
            if value >= limit:
                raise ValueError(f"pgbouncer.{name} ({value}) must be less than api.db_timeout_s ({limit}): PgBouncer "
                                 "must answer a stuck query with its error (HTTP 503, which Prefect clients retry) "
                                 "before the replica's own timeout answers HTTP 500; lower it or raise "
                                 "api.db_timeout_s")
        if limit >= self.load_balancer.timeout_server_s:
            raise ValueError(f"api.db_timeout_s ({limit}) must be less than load_balancer.timeout_server_s "
                             f"({self.load_balancer.timeout_server_s}): HAProxy would answer 504, which Prefect "
                             "clients do not retry, while the replica still waits for the database")
        return self

    @model_validator(mode="after")
    def _tracing_has_an_endpoint(self) -> StackConfig:
        if self.tracing.enabled and not self.tracing.otlp_endpoint:
            raise ValueError("tracing.enabled is true but tracing.otlp_endpoint is not set; set it to your "
                             "collector's OTLP/HTTP URL (e.g. http://jaeger:4318) or turn tracing off")
        return self

    @model_validator(mode="after")
    def _data_memory_fits_its_limit(self) -> StackConfig:
        for setting, value, limit_field, limit, spelling in self._data_memory_limits():
            share, unit, room = _DATA_MEMORY[setting]
            if size_bytes(value) > size_bytes(limit) * share:
                raise ValueError(
                    f"{setting} {value} is more than {share:.0%} of {limit_field} {limit}, the memory limit it runs "
                    f"under on the {self.target} target: the rest is {room}; lower {setting} to at most "
                    f"{_at_most(share, limit, unit)} or raise {limit_field} to at least "
                    f"{_to_fit(share, value, spelling)}")
        return self

    def _data_memory_limits(self) -> list[tuple[str, str, str, str, str]]:
        """(setting, value, limit field, limit, the limit's unit) of Redis and PostgreSQL on this target: none
        locally (no container limit; the host's memory is the operator's to plan)."""
        checks = []
        if self.target == "compose":
            checks += [
                ("redis.maxmemory", self.redis.maxmemory, "compose.redis_memory", self.compose.redis_memory, "m"),
                ("postgres.shared_buffers", self.postgres.shared_buffers, "compose.postgres_memory",
                 self.compose.postgres_memory, "m")]
        elif self.target == "kubernetes":
            k8s = self.kubernetes
            if k8s.redis.mode != "external":
                checks.append(("redis.maxmemory", self.redis.maxmemory, "kubernetes.redis.resources.memory_limit",
                               k8s.redis.resources.memory_limit, "Mi"))
            if k8s.postgres.mode == "cnpg":
                checks.append(("postgres.shared_buffers", self.postgres.shared_buffers,
                               "kubernetes.postgres.resources.memory_limit", k8s.postgres.resources.memory_limit, "Mi"))
        return checks

    @model_validator(mode="after")
    def _no_plaintext_on_the_network(self) -> StackConfig:
        tls = self.load_balancer.tls
        if self.tls_enabled or tls.allow_plaintext_on_network:
            return self
        if self.target != "local":
            where = f"target {self.target} serves clients over a network"
        elif not is_loopback(self.load_balancer.bind_address):
            where = f"load_balancer.bind_address {self.load_balancer.bind_address} is not loopback"
        else:
            return self
        raise ValueError(f"{where} but load_balancer.tls.mode is off: clients would send credentials in plain "
                         "text; set load_balancer.tls.mode to auto or on, or (behind your own TLS proxy) set "
                         "load_balancer.tls.allow_plaintext_on_network: true")

    @model_validator(mode="after")
    def _ports_are_distinct(self) -> StackConfig:
        if self.target == "kubernetes":  # every component has its own pod address: ports may repeat
            return self
        if self.workers.enabled and self.worker_health_port(len(self.workers.numbered())) > 65535:
            raise ValueError(f"workers.health_base_port {self.workers.health_base_port} with "
                             f"{len(self.workers.numbered())} workers needs ports above 65535; lower it")
        last_api_port = self.api_port(self.api.replicas)
        if last_api_port > 65535:
            raise ValueError(
                f"api.base_port {self.api.base_port} with {self.api.replicas} replicas needs ports up to "
                f"{last_api_port}, above 65535; lower api.base_port"
            )
        seen: dict[int, str] = {}
        for field, port in self.port_fields().items():
            if port in seen:
                raise ValueError(f"{field} and {seen[port]} both use port {port}; give each its own port")
            seen[port] = field
        return self

    def port_fields(self) -> dict[str, int]:
        """Every TCP port the stack listens on, keyed by the configuration field an operator would edit."""
        ports = {
            "postgres.port": self.postgres.port,
            "pgbouncer.port": self.pgbouncer.port,
            "redis.port": self.redis.port,
            "load_balancer.port": self.load_balancer.port,
            "load_balancer.stats_port": self.load_balancer.stats_port,
        }
        if self.backups.s3.endpoint_url is None:
            ports["backups.s3.local_port"] = self.backups.s3.local_port
            if self.backups.physical.enabled:
                ports["backups.physical.tls_port"] = self.backups.physical.tls_port
        if self.monitoring.enabled:
            ports["monitoring.prometheus_port"] = self.monitoring.prometheus_port
            ports["monitoring.alertmanager_port"] = self.monitoring.alertmanager_port
            ports["monitoring.node_exporter_port"] = self.monitoring.node_exporter_port
            ports["monitoring.postgres_exporter_port"] = self.monitoring.postgres_exporter_port
            ports["monitoring.redis_exporter_port"] = self.monitoring.redis_exporter_port
            ports["monitoring.prefect_exporter_port"] = self.monitoring.prefect_exporter_port
            ports["monitoring.api_metrics_port"] = self.monitoring.api_metrics_port
        for i in range(1, self.api.replicas + 1):
            ports[f"api.base_port (replica {i})"] = self.api_port(i)
        if self.workers.enabled:
            for i, (name, _) in enumerate(self.workers.numbered(), start=1):
                ports[f"workers.health_base_port (worker {name})"] = self.worker_health_port(i)
        return ports

    def api_port(self, replica: int) -> int:
        return self.api.base_port + replica - 1

    def worker_health_port(self, worker: int) -> int:
        """local: the health endpoint's port of the worker numbered ``worker`` (from 1) in workers.numbered()."""
        return self.workers.health_base_port + worker - 1

    @property
    def tls_enabled(self) -> bool:
        """Whether HAProxy terminates TLS for the API (load_balancer.tls.mode, with auto resolved)."""
        mode = self.load_balancer.tls.mode
        if mode != "auto":
            return mode == "on"
        return self.target != "local" or not is_loopback(self.load_balancer.bind_address)

    @property
    def stats_tls_enabled(self) -> bool:
        """The stats listener (stats page, /metrics) uses TLS too when it can be reached from elsewhere."""
        return self.tls_enabled and not is_loopback(self.load_balancer.bind_address)

    @property
    def api_url(self) -> str:
        """The API URL clients use: always through the load balancer."""
        host = self.load_balancer.bind_address
        if host in ("0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{host}:{self.load_balancer.port}/api"

    @property
    def public_api_url(self) -> str:
        return self.load_balancer.public_url or self.api_url

    @property
    def s3_endpoint_url(self) -> str:
        """The bucket's endpoint: the configured one, else the stack's own (loopback locally; on compose, its
        service name, reachable from the project's containers, where the backup code runs)."""
        if self.backups.s3.endpoint_url:
            return self.backups.s3.endpoint_url
        if self.target == "kubernetes":  # no endpoint of its own in a cluster: AWS S3 in the configured region
            return f"https://s3.{self.backups.s3.region}.amazonaws.com"
        host = COMPOSE_S3_SERVICE if self.target == "compose" else "127.0.0.1"
        return f"http://{host}:{self.backups.s3.local_port}"

    @property
    def own_s3_endpoint(self) -> bool:
        """Whether the stack runs its own S3 endpoint, with generated keys: backups.s3.endpoint_url null on the local
        and compose targets. A Kubernetes cluster has none of its own (AWS S3 in the configured region)."""
        return self.backups.s3.endpoint_url is None and self.target != "kubernetes"

    @property
    def scratch_dir(self) -> Path:
        return (self.backups.scratch_dir or self.state_dir / "scratch").expanduser()

    @property
    def state_dir(self) -> Path:
        if self.local.state_dir is not None:
            return self.local.state_dir.expanduser().resolve()
        if os.geteuid() == 0:
            return Path("/var/lib/prefect-stack")
        return Path("~/.local/state/prefect-stack").expanduser()


def in_project_container() -> bool:
    """True inside a compose project container (its service environment sets IN_CONTAINER_ENV)."""
    return os.environ.get(IN_CONTAINER_ENV) == "1"


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(configuration)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key. Remove it or fix its spelling (see infra/stack.yaml for every key)."
    given = error.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    env_name = ENV_PREFIX + "__".join(str(part).upper() for part in error["loc"])
    fix = f"fix it in the configuration file or in {env_name}" if error["loc"] else "fix the configuration"
    return f"{location}: {message}{shown}; {fix}."


def load_config(**overrides: Any) -> StackConfig:
    """Load and validate the configuration, turning validation errors into one readable UserError."""
    config_file = os.environ.get(CONFIG_FILE_ENV)
    if config_file and not Path(config_file).is_file():
        raise UserError(
            f"configuration file {config_file} (from {CONFIG_FILE_ENV}) does not exist",
            fix=f"point {CONFIG_FILE_ENV} at an existing YAML file, or unset it to use {DEFAULT_CONFIG_FILE}",
        )
    try:
        return StackConfig(**overrides)
    except ValidationError as exc:
        lines = [_describe(dict(e)) for e in exc.errors()]
        raise UserError(
            "invalid configuration:\n  " + "\n  ".join(lines),
            fix=f"edit {config_file or DEFAULT_CONFIG_FILE} or the {ENV_PREFIX}* environment variables",
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(
            f"cannot parse the configuration file {config_file or DEFAULT_CONFIG_FILE}: {exc}",
            fix="check the YAML syntax there (indentation with spaces, not tabs; 'key: value' pairs)",
        ) from None
    except OSError as exc:
        raise UserError(
            f"cannot read the configuration file: {exc}", fix="check that it exists and is readable"
        ) from None
    except ValueError as exc:
        # pydantic-settings raises plain ValueErrors for sources it cannot decode (a nested PREFECT_STACK_*
        # variable holding malformed JSON, a YAML document that is not a mapping).
        raise UserError(
            f"cannot read the configuration: {exc}",
            fix=f"the YAML file must be a mapping of sections; nested {ENV_PREFIX}* values use __ "
            f"(e.g. {ENV_PREFIX}API__REPLICAS=3), not JSON",
        ) from None
