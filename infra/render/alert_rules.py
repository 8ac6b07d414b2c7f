"""Prometheus alerting rules for the whole stack, one group per concern; each is unit-tested with promtool.

Every rule carries ``severity`` (page: wake someone; critical: act today; warning: look soon), an ``area``
label that Alertmanager inhibits by, a ``summary``, a ``description`` that says what to do, and a ``runbook``
link to its section of docs/runbooks.md. The rules read only metric names and job labels, never addresses: the
same file serves the local and compose targets. Kubernetes (``kubernetes_alert_groups(config)``, rendered as a
PrometheusRule by infra/kubernetes/monitoring.py) keeps every rule whose source runs there and replaces the ones
that read HAProxy, node_exporter textfiles or postgres_exporter with the same alerts over kube-state-metrics and
CloudNativePG's metrics; each replacement says why. Its Prometheus holds the whole cluster's series, so every
selector there names the stack's namespace; and its exporters run inside the pods they watch, so the "down" rules
test for answering pods (absent() when none is left) rather than for a 0 that a gone pod never reports.
"""

from __future__ import annotations

from typing import Any

import yaml

from infra.config import StackConfig
from infra.render.backup_alerts import backup_alert_rules

RUNBOOK = "docs/runbooks.md#{anchor}"
BACKEND = 'proxy="prefect_api"'
# The project's exporter's job on every target (infra/render/prometheus.py; infra/kubernetes/monitoring.py relabels
# its ServiceMonitor's targets to it).
EXPORTER_JOB = "prefect-exporter"


def _rule(name: str, expr: str, wait: str, severity: str, area: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name, "expr": expr, "for": wait,
        "labels": {"severity": severity, "area": area},
        "annotations": {"summary": summary, "description": description,
                        "runbook": RUNBOOK.format(anchor=name.lower())},
    }


def api_rules(config: StackConfig) -> list[dict[str, Any]]:
    monitoring = config.monitoring
    return [
        _rule("PrefectApiAllReplicasDown", f"haproxy_backend_active_servers{{{BACKEND}}} == 0", "30s", "page", "api",
              "No Prefect API replica is serving: the API is down for every client",
              "HAProxy routes to no replica. Run invoke status; read invoke logs api-1. A database or PgBouncer "
              "outage makes every replica unready at once: check those first."),
        _rule("PrefectApiReplicaDown",
              f'max by (server) (haproxy_server_status{{{BACKEND},state="UP"}}) == 0', monitoring.replica_down_for,
              "warning", "api",
              "API replica {{ $labels.server }} is out of the load balancer",
              "HAProxy sends it no traffic (down, drained or in maintenance); the other replicas carry the load. "
              "Run invoke status and invoke logs {{ $labels.server }}; invoke restart {{ $labels.server }}."),
        _rule("PrefectApiHighErrorRate",
              f'sum(rate(haproxy_backend_http_responses_total{{{BACKEND},code="5xx"}}[5m])) '
              f"/ sum(rate(haproxy_backend_http_responses_total{{{BACKEND}}}[5m])) > 0.05", "5m", "critical", "api",
              "{{ $value | humanizePercentage }} of Prefect API responses are 5xx",
              "Read the replicas' logs (invoke logs api-N) for the failing requests; check PostgreSQL and "
              "PgBouncer (invoke status)."),
        _rule("PrefectApiSlowResponses", f"haproxy_backend_response_time_average_seconds{{{BACKEND}}} > 1", "10m",
              "warning", "api",
              "Prefect API responses take {{ $value | humanizeDuration }} on average",
              "HAProxy's average over the last 1024 requests. Look for slow queries (database load, missing "
              "vacuum) and event backlog; add replicas (api.replicas) if the CPUs are saturated."),
        _rule("PrefectApiRequestsQueued", f"haproxy_backend_current_queue{{{BACKEND}}} > 0", "5m", "warning", "api",
              "Requests wait in HAProxy's queue for a free Prefect API replica",
              "Every replica is at its connection limit. Add replicas (api.replicas) or find what holds "
              "requests open (slow database)."),
        _rule("LoadBalancerDown", 'up{job="haproxy"} == 0', "1m", "page", "load-balancer",
              "HAProxy, the only entry to the Prefect API, cannot be scraped",
              "Clients cannot reach Prefect if HAProxy is down. Run invoke status and invoke logs haproxy; "
              "invoke restart haproxy."),
    ]


def database_rules() -> list[dict[str, Any]]:
    return [
        _rule("PostgresDown", "pg_up == 0", "1m", "page", "database",
              "PostgreSQL does not answer: every Prefect API replica is failing",
              "Run invoke status and invoke logs postgres. A full disk or a failed restart are the usual causes; "
              "if the data is lost, follow the restore runbook (invoke restore)."),
        _rule("PostgresConnectionsNearLimit",
              'sum(pg_stat_database_numbackends) / max(pg_settings_max_connections) > 0.85', "5m", "warning",
              "database",
              "PostgreSQL uses {{ $value | humanizePercentage }} of max_connections",
              "New connections will soon be refused. Check PgBouncer's pool sizes (pgbouncer.default_pool_size x "
              "2 pools) against postgres.max_connections; look for clients bypassing PgBouncer."),
        _rule("PgBouncerClientsWaiting", "max(pgbouncer_pools_client_waiting_connections) > 0", "2m", "warning",
              "database",
              "Clients wait for a PostgreSQL connection in PgBouncer ({{ $value }} waiting)",
              "The pool is exhausted: slow queries hold connections, or pgbouncer.default_pool_size is too small "
              "for the replicas' db_pool_size. Check slow queries first."),
        _rule("PgBouncerDown", "pgbouncer_up == 0", "1m", "page", "database",
              "PgBouncer's console does not answer: Prefect cannot reach its database",
              "Run invoke status and invoke logs pgbouncer; invoke restart pgbouncer."),
    ]


def _selector(metric: str, scope: str, matchers: str = "") -> str:
    """``metric{scope,matchers}``; the bare name where neither is given (the local and compose rules, whose
    Prometheus scrapes one stack only)."""
    inside = ",".join(part for part in (scope, matchers) if part)
    return f"{metric}{{{inside}}}" if inside else metric


def _duration(seconds: int) -> str:
    """A window as an operator reads it: 1h, 90m, 45s."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def redis_memory_rule(scope: str = "") -> dict[str, Any]:
    used, limit = _selector("redis_memory_used_bytes", scope), _selector("redis_memory_max_bytes", scope)
    return _rule("RedisMemoryNearLimit", f"{used} / {limit} > 0.85 and {limit} > 0", "5m", "critical", "redis",
                 "Redis uses {{ $value | humanizePercentage }} of maxmemory",
                 "With noeviction, writes fail at the limit and Prefect loses events. Look at stream lengths "
                 "(PrefectEventStreamGrowing); if the load is real, raise redis.maxmemory with the Redis "
                 "container's memory limit (compose.redis_memory, kubernetes.redis.resources): maxmemory stays at "
                 "most half of it.")


def event_stream_rules(scope: str = "") -> list[dict[str, Any]]:
    """Prefect's Redis streams, read by this project's exporter (which runs on every target)."""
    return [
        _rule("PrefectEventStreamGrowing", f"delta({_selector('prefect_event_stream_length', scope)}[30m]) > 100000",
              "30m", "warning", "redis",
              "Prefect's {{ $labels.stream }} stream grew by {{ $value }} entries in 30 minutes",
              "Streams are trimmed as the services consume them; steady growth means a consumer is behind or the "
              "trimming stopped. Check PrefectEventsNotConsumed and the services' log."),
        _rule("PrefectEventsNotConsumed",
              f"max by (stream, group) ({_selector('prefect_event_consumer_lag', scope)}) > 1000", "10m",
              "critical", "services",
              "Consumer group {{ $labels.group }} is {{ $value }} events behind on {{ $labels.stream }}",
              "The background services stopped consuming (a known failure after a Redis restart or failover, "
              "while they still look running). Run invoke restart services-1, then check the lag falls."),
    ]


def redis_rules() -> list[dict[str, Any]]:
    return [
        # redis_exporter is a process of its own here: it reports redis_up 0 when Redis does not answer.
        _rule("RedisDown", "redis_up == 0", "1m", "page", "redis",
              "Redis does not answer: Prefect's messaging, leases and background services are down",
              "Run invoke status and invoke logs redis; invoke restart redis (it restarts the services too)."),
        redis_memory_rule(),
        *event_stream_rules(),
    ]


# Where an operator reads a pool's workers: their logs on each target, their health, and the page about them.
WORKER_CHECKS = ("the logs of the pool's workers (local: invoke logs worker-{{ $labels.work_pool }}-N for each "
                 "worker N; compose and Kubernetes: the logs of the pool's worker containers), the pool's workers "
                 "online (Work pools row of the Prefect overview dashboard; invoke status), and docs/workers.md")


def prefect_rules(config: StackConfig, scope: str = "") -> list[dict[str, Any]]:
    """The flow-run and work-pool rules, read by this project's exporter."""
    late, oldest = (_selector(name, scope) for name in ("prefect_late_flow_runs",
                                                         "prefect_oldest_late_flow_run_age_seconds"))
    heartbeat, backlog = (_selector(name, scope) for name in ("prefect_work_pool_last_heartbeat_age_seconds",
                                                               "prefect_work_queue_backlog"))
    online = _selector("prefect_work_pool_online_workers", scope)
    crashed = _selector("prefect_flow_runs_finished_recent", scope, 'state="CRASHED",work_pool!=""')
    window = _duration(config.monitoring.finished_runs_window_s)
    return [
        _rule("PrefectLateFlowRuns", f"{late} > 0 and {oldest} > 600",
              "5m", "warning", "flows",
              "{{ $value }} flow runs are late; the oldest waits past its start",
              "No worker picks them up: check the work pools' workers (PrefectWorkPoolWithoutWorker) and the "
              "work-queue backlog on the Prefect overview dashboard."),
        _rule("PrefectWorkPoolWithoutWorker",
              f"{heartbeat} > 300 and on (work_pool) sum by (work_pool) ({backlog}) > 0", "5m", "warning", "flows",
              "Work pool {{ $labels.work_pool }} has runs due but no worker heartbeat for 5 minutes",
              "Start or repair the pool's workers (prefect worker start --pool {{ $labels.work_pool }}); their "
              "hosts must reach the API."),
        # Growing: higher than 10 minutes ago while never empty in those 10 minutes, for 10 minutes more. A burst
        # of runs due at once (a step, then draining or flat) never holds both; steady growth does, within 20
        # minutes of its start. A pool with no worker online is PrefectWorkPoolWithoutWorker's.
        _rule("PrefectWorkQueueBacklogGrowing",
              f"delta({backlog}[10m]) > 0 and min_over_time({backlog}[10m]) > 0 "
              f"and on (work_pool) ({online} > 0)", "10m", "warning", "flows",
              "Runs due in work queue {{ $labels.work_pool }}/{{ $labels.work_queue }} keep piling up although the "
              "pool has workers online ({{ $value | humanize }} more than 10 minutes ago)",
              "The workers cannot keep up, or none of them polls this queue. Check " + WORKER_CHECKS + ". Then: "
              "does a worker poll this queue (workers.workers[].queues)? Are the workers at their limit "
              "(workers.workers[].limit), or the pool or queue at its concurrency limit "
              "(workers.pools[].concurrency_limit, workers.pools[].queues[].concurrency_limit)? Are their hosts "
              "short of CPU or memory? If the load is real, add workers (workers.workers[].count)."),
        # The window count: a crashed run that the crash-retry automation schedules again leaves it within
        # seconds (it is SCHEDULED again), so the 2 minutes keep a retried crash from alerting.
        _rule("PrefectFlowRunsCrashing", f"sum by (work_pool) ({crashed}) > 0", "2m", "warning", "flows",
              f"{{{{ $value }}}} flow run(s) of work pool {{{{ $labels.work_pool }}}} ended CRASHED in the last "
              f"{window}",
              "CRASHED is not an error in the flow's code (that is FAILED): the run's process or its "
              "infrastructure went away. A worker or its host restarted, the flow process was killed (out of "
              "memory), or the run stopped sending heartbeats (the zombie-run automation marks it crashed after "
              "workers.missed_heartbeats missed beats); these runs stayed crashed after workers.crashed_run_retries "
              "retries. Read the crashed runs' state messages in the Prefect UI, then check " + WORKER_CHECKS + "."),
        _rule("PrefectExporterSourceDown", f"{_selector('prefect_exporter_source_up', scope)} == 0", "5m", "warning",
              "monitoring",
              "The Prefect exporter cannot read {{ $labels.source }}",
              "Flow-run, work-pool or event-pipeline metrics are blind meanwhile. Read invoke logs "
              "prefect-exporter; the monitor role's password is renewed by invoke deploy."),
    ]


def host_rules() -> list[dict[str, Any]]:
    filesystems = 'fstype!~"tmpfs|ramfs|squashfs|overlay"'
    return [
        _rule("HostDiskWillFillIn24Hours",
              f"predict_linear(node_filesystem_avail_bytes{{{filesystems}}}[6h], 24 * 3600) < 0 "
              f"and node_filesystem_avail_bytes{{{filesystems}}} / node_filesystem_size_bytes{{{filesystems}}} "
              "< 0.25", "30m", "warning", "host",
              "{{ $labels.mountpoint }} will be full within a day at the current rate",
              "Find what grows (du -sh on the state directory: data/postgres, log, scratch). Event retention "
              "(services.events_retention) bounds Prefect's largest tables."),
        _rule("HostDiskAlmostFull",
              f"node_filesystem_avail_bytes{{{filesystems}}} / node_filesystem_size_bytes{{{filesystems}}} < 0.05",
              "5m", "critical", "host",
              "{{ $labels.mountpoint }} has less than 5% space left",
              "PostgreSQL stops accepting writes when its disk is full. Free space now (old logs, backups.scratch_dir) "
              "or grow the disk."),
        _rule("MonitoringTargetDown", 'up{job!="prefect-api",job!="haproxy"} == 0', "5m", "warning", "monitoring",
              "Prometheus cannot scrape {{ $labels.component }} ({{ $labels.job }})",
              "Its metrics and the alerts built on them are blind meanwhile. Run invoke status; read invoke logs "
              "{{ $labels.component }}."),
    ]




def kubernetes_api_rules(config: StackConfig) -> list[dict[str, Any]]:
    """The API rules where no HAProxy exists: an Ingress and a Service balance the replicas, so replica health is
    read from kube-state-metrics (which kube-prometheus-stack runs) instead of HAProxy's server states."""
    k8s, monitoring = config.kubernetes, config.monitoring
    deployment = f'namespace="{k8s.namespace}",deployment="{k8s.name}-api"'
    return [
        _rule("PrefectApiAllReplicasDown", f"kube_deployment_status_replicas_available{{{deployment}}} == 0", "30s",
              "page", "api",
              "No Prefect API replica is available: the API is down for every client",
              "The Service has no ready endpoint. Run invoke status --target kubernetes; kubectl describe the "
              "API pods. A database or Redis outage makes every replica unready at once: check those first."),
        _rule("PrefectApiReplicaDown",
              f"kube_deployment_spec_replicas{{{deployment}}} - kube_deployment_status_replicas_available"
              f"{{{deployment}}} > 0", monitoring.replica_down_for, "warning", "api",
              "{{ $value }} Prefect API replica(s) are not available",
              "The Service sends them no traffic; the other replicas carry the load. kubectl describe the API "
              "pods (scheduling, probes, image pulls) and read their logs (invoke logs api)."),
    ]


def _none_answers(answering: str, pods: str) -> str:
    """True (an empty-labelled 1) when no pod of ``pods`` is answering. ``answering`` selects the pods that do:
    the exporters run inside the pods they watch, so a deleted, evicted or unscheduled pod leaves no series at all,
    and a test of the value (``== 0``) would never hold then: absent() does. A pod whose scrape fails (``up`` 0)
    does not count as answering either, whatever its last samples said."""
    return f"absent(({answering}) and on (pod) (up{{{pods}}} == 1))"


def kubernetes_database_rules(config: StackConfig) -> list[dict[str, Any]]:
    """The database rules where CloudNativePG runs PostgreSQL and PgBouncer: the same alerts, read from the
    operator's own exporters (cnpg_* on every instance and every Pooler pod, scraped through the database's
    PodMonitors) instead of postgres_exporter and this project's PgBouncer reader. Several instances and pooler
    pods stand in for the one of the other targets, so "down" means none of them answers (or none is left)."""
    k8s = config.kubernetes
    prefix = k8s.name
    instances = f'namespace="{k8s.namespace}",pod=~"{prefix}-db-[0-9]+"'
    poolers = {f"{prefix}-pooler-{mode}": f'namespace="{k8s.namespace}",pod=~"{prefix}-pooler-{mode}-.+"'
               for mode in ("transaction", "session")}
    every_pooler = f'namespace="{k8s.namespace}",pod=~"{prefix}-pooler-(transaction|session)-.+"'
    # One series per Pooler without an answering pod, named by the pooler label (absent() gives none).
    poolers_down = " or ".join(
        f'label_replace({_none_answers(f"cnpg_pgbouncer_up{{{pods}}} == 1", pods)}, "pooler", "{name}", "", "")'
        for name, pods in poolers.items())
    return [
        _rule("PostgresDown", _none_answers(f"cnpg_collector_up{{{instances}}} == 1", instances), "1m", "page",
              "database",
              "No PostgreSQL instance answers: every Prefect API replica is failing",
              "No instance reports PostgreSQL up, or none is left to scrape. kubectl get cluster (CloudNativePG's "
              "status and events) and the instances' pods and logs. A full volume or a failed switchover are the "
              "usual causes; if the data is lost, follow the restore runbook."),
        _rule("PostgresConnectionsNearLimit",
              f"max(sum by (pod) (cnpg_backends_total{{{instances}}}) / on (pod) "
              f'cnpg_pg_settings_setting{{{instances},name="max_connections"}}) > 0.85', "5m", "warning", "database",
              "A PostgreSQL instance uses {{ $value | humanizePercentage }} of max_connections",
              "New connections will soon be refused. Check the Poolers' pool sizes against max_connections; look "
              "for clients bypassing the Poolers."),
        _rule("PgBouncerClientsWaiting", f"max(cnpg_pgbouncer_pools_cl_waiting{{{every_pooler}}}) > 0", "2m",
              "warning", "database",
              "Clients wait for a PostgreSQL connection in a Pooler ({{ $value }} waiting)",
              "The pool is exhausted: slow queries hold connections, or the Pooler's default_pool_size is too "
              "small for the replicas' db_pool_size. Check slow queries first."),
        _rule("PgBouncerDown", poolers_down, "1m", "page", "database",
              "No PgBouncer of Pooler {{ $labels.pooler }} answers: Prefect cannot reach its database",
              "Its pods report PgBouncer down, or none is left to scrape. kubectl get pooler and describe its "
              "pods; the operator recreates them. Check the Cluster is healthy (the Poolers authenticate "
              "against it)."),
    ]


def _kubernetes_exporter(config: StackConfig) -> str:
    """The project's exporter of this stack: its job alone would match another namespace's stack too."""
    return f'namespace="{config.kubernetes.namespace}",job="{EXPORTER_JOB}"'


def kubernetes_redis_rules(config: StackConfig) -> list[dict[str, Any]]:
    """Redis where this stack runs it: redis_exporter is a container of every Redis pod (infra/kubernetes/redis.py),
    so its series leave with the pod. Messaging is down when no pod answers as the primary (every pod gone or
    unreachable, or Sentinels that elected none): a page. In sentinel mode one pod down (its Redis or its Sentinel)
    costs no messaging, only failover headroom: a warning of its own. An external Redis is watched by whoever runs
    it (no exporter of ours sits beside it): only the stream rules, which this project's exporter serves."""
    k8s = config.kubernetes
    exporter = _kubernetes_exporter(config)
    if k8s.redis.mode == "external":
        return event_stream_rules(exporter)
    pods = f'namespace="{k8s.namespace}",pod=~"{k8s.name}-redis-[0-9]+"'
    rules = [
        _rule("RedisDown", _none_answers(f'redis_instance_info{{{pods},role="master"}}', pods), "1m", "page",
              "redis",
              "No Redis primary answers: Prefect's messaging, leases and background services are down",
              "Every Redis pod is gone or unreachable, or no pod is the primary (a failover that did not complete). "
              f"kubectl get statefulset {k8s.name}-redis and describe its pods; read the redis and sentinel "
              "containers' logs. The background services follow a new primary on their own."),
    ]
    if k8s.redis.mode == "sentinel":
        expected = k8s.redis.replicas
        # Counted, not tested per pod: a pod that is gone has no series to test. Sentinel's readiness comes from
        # kube-state-metrics (the exporter in the pod reads Redis only).
        redis_answering = f"count((redis_up{{{pods}}} == 1) and on (pod) (up{{{pods}}} == 1))"
        sentinels_ready = f'count(kube_pod_container_status_ready{{{pods},container="sentinel"}} == 1)'
        rules.append(_rule(
            "RedisPodDown",
            f"({redis_answering} or vector(0)) < {expected} or ({sentinels_ready} or vector(0)) < {expected}",
            "5m", "warning", "redis",
            f"A pod of the Redis Sentinel group is down ({{{{ $value }}}} of {expected} answer)",
            # expected // 2 + 1: the Sentinels' quorum, a majority (infra/kubernetes/redis.py).
            "Messaging still works through the primary, but each lost pod takes a Sentinel vote and a failover "
            f"target with it: with fewer than {expected // 2 + 1} Sentinels no failover can happen. kubectl "
            f"describe the {k8s.name}-redis pods (scheduling: one per node, required; probes) and read their "
            "redis and sentinel logs."))
    return [*rules, redis_memory_rule(pods), *event_stream_rules(exporter)]


def kubernetes_backup_rules(config: StackConfig) -> list[dict[str, Any]]:
    """Backup freshness where no node_exporter textfile exists: the backup CronJob takes and verifies a backup in
    one Job that fails if either fails, so its last successful completion (kube-state-metrics) is the time of the
    last verified backup, and the newest Job's failure is the last attempt's failure. A failed verification and a
    failed backup are one alert here: the Job's log says which."""
    k8s = config.kubernetes
    max_hours = config.backups.max_age_hours
    cronjob = f'namespace="{k8s.namespace}",cronjob="{k8s.name}-backup"'
    jobs = f'namespace="{k8s.namespace}",job_name=~"{k8s.name}-backup-.+"'
    return [
        _rule("PrefectBackupTooOld",
              f"time() - max(kube_cronjob_status_last_successful_time{{{cronjob}}}) > {max_hours * 3600}", "5m",
              "critical", "backups",
              f"The newest verified Prefect backup is older than {max_hours}h",
              "No backup Job has completed (backup and verification) for {{ $value | humanizeDuration }}. Read "
              "the last Jobs' logs (kubectl logs job/NAME) and invoke backup.list."),
        _rule("PrefectBackupMissing", f"absent(kube_cronjob_status_last_successful_time{{{cronjob}}})",
              f"{max_hours}h", "critical", "backups",
              "No verified Prefect backup has ever been recorded",
              "The backup CronJob has never completed. Check it is scheduled (kubectl get cronjob) and take one "
              f"now: kubectl create job --from=cronjob/{k8s.name}-backup {k8s.name}-backup-manual."),
        _rule("PrefectBackupFailed",
              f"topk(1, kube_job_status_start_time{{{jobs}}}) and on (job_name) "
              f'(kube_job_failed{{{jobs},condition="true"}} == 1)', "5m", "critical", "backups",
              "The last Prefect backup Job failed (the backup or its verification)",
              "Read its log (kubectl logs job/{{ $labels.job_name }}): S3 unreachable, credentials, scratch space, "
              "or a failed verification (then do not rely on that backup). Take a new one once fixed."),
    ]


def alert_groups(config: StackConfig) -> list[dict[str, Any]]:
    """The rule groups of a stack on one host (the local and compose targets: HAProxy, the host's exporters)."""
    groups: list[dict[str, Any]] = [
        {"name": "prefect-api", "rules": api_rules(config)},
        {"name": "database", "rules": database_rules()},
        {"name": "redis", "rules": redis_rules()},
        {"name": "prefect-flows", "rules": prefect_rules(config)},
        {"name": "host", "rules": host_rules()},
    ]
    groups += yaml.safe_load(backup_alert_rules(config.backups.max_age_hours))["groups"]
    return _annotated(groups)


def kubernetes_alert_groups(config: StackConfig) -> list[dict[str, Any]]:
    """The rule groups on Kubernetes. They differ from ``alert_groups`` where the other targets read components
    it does not run, where an exporter leaves with its pod (see each adaptation below), and in that every
    selector is scoped to the stack's namespace."""
    namespace = config.kubernetes.namespace
    groups: list[dict[str, Any]] = [
        # No HAProxy: replica availability from kube-state-metrics; the HAProxy-only signals (5xx rate,
        # response time, queue, LoadBalancerDown) have no equivalent of ours (the ingress controller's
        # metrics belong to whoever runs it).
        {"name": "prefect-api", "rules": kubernetes_api_rules(config)},
        # PostgreSQL and PgBouncer: CloudNativePG's own metrics; an external PostgreSQL is watched by whoever
        # runs it (no exporter of ours reaches its internals), so there is no database group then.
        *([{"name": "database", "rules": kubernetes_database_rules(config)}]
          if config.kubernetes.postgres.mode == "cnpg" else []),
        # Redis: the Redis exporter inside the Redis pods serves the same redis_* names, but leaves with the pod
        # (see kubernetes_redis_rules); the stream and flow rules read this project's exporter.
        {"name": "redis", "rules": kubernetes_redis_rules(config)},
        {"name": "prefect-flows", "rules": prefect_rules(config, _kubernetes_exporter(config))},
        # No host group: there is no node_exporter of ours (kube-prometheus-stack runs its own, with its node
        # and PersistentVolume alerts). A scrape target down, restricted to the stack's namespace: up{} holds
        # the whole cluster's targets there. The API replicas are not scraped there (their replica rules read
        # kube-state-metrics).
        {"name": "monitoring", "rules": [
            _rule("MonitoringTargetDown", f'up{{namespace="{namespace}"}} == 0', "5m",
                  "warning", "monitoring",
                  "Prometheus cannot scrape {{ $labels.pod }} ({{ $labels.job }})",
                  "Its metrics and the alerts built on them are blind meanwhile. kubectl describe the pod; "
                  "read its logs."),
        ]},
        {"name": "prefect-backups", "rules": kubernetes_backup_rules(config)},
    ]
    return _annotated(groups)


def _annotated(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rule's area, runbook link and description, where the rule does not set its own."""
    for group in groups:
        for rule in group["rules"]:
            rule["labels"].setdefault("area", "backups")
            rule["annotations"].setdefault("runbook", RUNBOOK.format(anchor=rule["alert"].lower()))
            rule["annotations"].setdefault("description", rule["annotations"]["summary"])
    return groups


def alert_rules_yml(config: StackConfig) -> str:
    header = "# Rendered by prefect-stack from the configuration model; edit the model, not this file.\n"
    return header + yaml.safe_dump({"groups": alert_groups(config)}, sort_keys=False, width=1000)
