"""Grafana dashboards as code, one per concern, and the provisioning files that load them into Grafana.

Dashboards are built with grafana-foundation-sdk's typed builders and handed out as plain JSON models. Every
query reads the dashboard's ``datasource`` variable (any Prometheus datasource), so the same files import into
any Grafana, provisioned or not. Metric names and labels are a contract with the scrape jobs
(``infra/render/prometheus.py``) and the exporters behind them; ``panel_queries`` lists every expression so
tests can parse them (promtool) and evaluate them against a live Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    GraphTresholdsStyleMode,  # sic: the SDK's spelling
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TooltipDisplayMode,
)

from infra.config import StackConfig

TAG = "prefect-stack"
FOLDER = "Prefect stack"
DATASOURCE_VARIABLE = "datasource"
# Provisioned datasource uids: stable, so links and alert rules written by hand can name them.
PROMETHEUS_UID = "prometheus"
JAEGER_UID = "jaeger"
LOKI_UID = "loki"
# Every panel and query points at the variable, never at a uid: the dashboards then work in any Grafana.
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")

BACKEND = 'proxy="prefect_api"'
# Pseudo and container filesystems say nothing about the disks the stack writes to (same filter as the alerts).
FILESYSTEMS = 'fstype!~"tmpfs|ramfs|squashfs|overlay"'
NOT_TEMPLATE_DB = 'datname!~"template0|template1"'

STAT_HEIGHT = 4
GRAPH_HEIGHT = 8


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Section:
    """A dashboard row and the panels under it, laid out left to right in 24 grid columns."""

    title: str
    panels: Sequence[Builder[model.Panel]] = field(default_factory=list)


Steps = Sequence[tuple[float, str]]


def _thresholds(base: str, steps: Steps) -> ThresholdsConfig:
    # A base step with no value is Grafana's "from -infinity"; without explicit thresholds Grafana applies its
    # default (red from 80), which would paint a healthy count of 85 running flows red.
    return (ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=None, color=base)]
                   + [model.Threshold(value=value, color=color) for value, color in steps]))


def _states(mapping: dict[int, tuple[str, str]]) -> list[model.ValueMapping]:
    """Value mappings for a 0/1 gauge: number -> (text, color)."""
    return [model.ValueMap(options={
        str(value): model.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(sorted(mapping.items()))
    })]


UP_DOWN = {0: ("down", "red"), 1: ("up", "green")}


def _targets(queries: Sequence[Query]) -> list[Builder[Any]]:
    targets: list[Builder[Any]] = []
    for i, query in enumerate(queries):
        target = Dataquery().expr(query.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        targets.append(target)
    return targets


def _graph(title: str, description: str, unit: str, *queries: Query, width: int = 12, stacked: bool = False,
           limit: float | None = None) -> TimeseriesPanel:
    """A time series; ``limit`` draws a dashed red line at a bound (a configured limit, an alert threshold)."""
    panel = (TimeseriesPanel().title(title).description(description).datasource(DATASOURCE)
             .targets(_targets(queries)).unit(unit).span(width).height(GRAPH_HEIGHT)
             .fill_opacity(10).line_width(1)
             .legend(VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
                     .placement(LegendPlacement.BOTTOM))
             .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)))
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40)
    if limit is not None:
        panel = (panel.thresholds(_thresholds("transparent", [(limit, "red")]))
                 .thresholds_style(GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED)))
    return panel


def _stat(title: str, description: str, unit: str, expr: str, *, base: str = "text", steps: Steps = (),
          mappings: dict[int, tuple[str, str]] | None = None, width: int = 4) -> StatPanel:
    """One number, the latest value of ``expr``, colored by ``steps`` (value, color) above ``base``."""
    panel = (StatPanel().title(title).description(description).datasource(DATASOURCE)
             .targets(_targets([Query(expr)])).unit(unit).span(width).height(STAT_HEIGHT)
             .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .thresholds(_thresholds(base, steps)))
    if mappings is not None:
        # A state, not a quantity: its sparkline would only be a flat line.
        panel = panel.mappings(_states(mappings)).graph_mode(BigValueGraphMode.NONE)
    else:
        panel = panel.graph_mode(BigValueGraphMode.AREA)
    return panel


def _dashboard(uid: str, title: str, description: str, sections: Sequence[Section]) -> dict[str, Any]:
    builder = (Dashboard(title).uid(uid).description(description).tags([TAG])
               .refresh("30s").time("now-6h", "now").timezone("browser")
               .tooltip(model.DashboardCursorSync.CROSSHAIR)
               .with_variable(DatasourceVariable(DATASOURCE_VARIABLE).label("Data source").type("prometheus"))
               .link(DashboardLink("Prefect stack").type(model.DashboardLinkType.DASHBOARDS).tags([TAG])
                     .as_dropdown(True).include_vars(True).keep_time(True)))
    for section in sections:
        builder = builder.with_row(Row(section.title))
        for panel in section.panels:
            builder = builder.with_panel(panel)
    built = builder.build()
    # Stable panel ids (the SDK leaves them unset): links such as ?viewPanel=N keep working across renders.
    for number, panel_model in enumerate(built.panels or [], start=1):
        panel_model.id_val = number
    document: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
    return document


def _rate_window(config: StackConfig) -> str:
    # Four scrapes: rate() needs two samples, and the window survives one missed scrape. A fixed window (not
    # Grafana's $__rate_interval) keeps every expression plain PromQL that Prometheus itself can evaluate.
    return f"{4 * config.monitoring.scrape_interval_s}s"


def _count(expr: str) -> str:
    # The exporter may leave out a state with no runs: read that as 0, but only while the exporter reads Prefect,
    # so an exporter outage shows as "No data" rather than as a reassuring 0.
    return f"{expr} or 0 * (max(prefect_exporter_up) == 1)"


def overview(config: StackConfig) -> dict[str, Any]:
    now = Section("Now", [
        _stat("Running flow runs", "Flow runs in state RUNNING.", "short",
              _count('sum(prefect_flow_runs{state="RUNNING"})')),
        _stat("Late flow runs", "Scheduled runs past their start time: no worker picked them up.", "short",
              "sum(prefect_late_flow_runs)", base="green", steps=[(1, "orange")]),
        _stat("Oldest late flow run", "How long the oldest late run has waited. Check its work pool's workers.",
              "s", "max(prefect_oldest_late_flow_run_age_seconds)", base="green", steps=[(60, "orange"), (600, "red")]),
        _stat("Failed or crashed (1h)", "Flow runs that ended FAILED or CRASHED in the last hour.", "short",
              _count('sum(prefect_flow_runs_finished_recent{state=~"FAILED|CRASHED"})'),
              base="green", steps=[(1, "orange")]),
        _stat("Workers online", "Workers that sent a heartbeat within their last 3 heartbeat intervals, over "
              "every work pool.", "short",
              _count("sum(prefect_work_pool_online_workers)"), base="red", steps=[(1, "green")]),
        _stat("Alerts firing", "Alerts firing now, over the whole stack (invoke alerts lists them).", "short",
              'count(ALERTS{alertstate="firing"}) or vector(0)', base="green", steps=[(1, "red")]),
    ])
    flow_runs = Section("Flow runs", [
        _graph("Flow runs by state", "Non-terminal flow runs now: scheduled, pending, running, late, paused, "
               "cancelling.", "short", Query("sum by (state) (prefect_flow_runs)", "{{state}}"), stacked=True),
        _graph("Finished in the last hour", "Flow runs that reached a terminal state in the last hour.", "short",
               Query("sum by (state) (prefect_flow_runs_finished_recent)", "{{state}}"), stacked=True),
        _graph("Late flow runs over time", "Runs past their scheduled start. A rising line means no worker takes them.",
               "short", Query("sum(prefect_late_flow_runs)", "late"), width=8),
        _graph("Oldest late flow run age", "Wait of the oldest late run.", "s",
               Query("max(prefect_oldest_late_flow_run_age_seconds)", "oldest late run"), width=8),
        _graph("Task runs by state", "Task runs by state.", "short",
               Query("sum by (state) (prefect_task_runs)", "{{state}}"), width=8),
    ])
    window = f"monitoring.finished_runs_window_s = {config.monitoring.finished_runs_window_s}s"
    work_pools = Section("Work pools", [
        _graph("Online workers by work pool", "Workers of each pool that sent a heartbeat within their last 3 "
               "heartbeat intervals (30 s each by default), as Prefect counts them ONLINE. A pool at 0 runs nothing.",
               "short", Query("sum by (work_pool) (prefect_work_pool_online_workers)", "{{work_pool}}"), width=8),
        _graph("Workers by work pool", "Workers per pool and the status Prefect's foreman last recorded (it runs "
               "with the background services).", "short",
               Query("sum by (work_pool, status) (prefect_work_pool_workers)", "{{work_pool}} {{status}}"), width=8),
        _graph("Worker heartbeat age", "Time since a pool's newest worker heartbeat; Prefect marks a worker "
               "OFFLINE after a few missed heartbeats.", "s",
               Query("max by (work_pool) (prefect_work_pool_last_heartbeat_age_seconds)", "{{work_pool}}"), width=8),
        _graph("Work queue backlog", "Runs due in each queue (late ones included) that no worker has claimed yet. "
               "Steady growth while workers are online: they cannot keep up.", "short",
               Query("sum by (work_pool, work_queue) (prefect_work_queue_backlog)", "{{work_pool}}/{{work_queue}}"),
               width=8),
        _graph("Pickup delay", f"From a run's scheduled start to a worker's claim (PENDING), median and 99th "
               f"percentile per pool over the runs claimed in the trailing window ({window}). Growing: the "
               "workers are busy, too few, or poll too seldom (workers.query_interval_s).", "s",
               Query('max by (work_pool) (prefect_work_pool_pickup_delay_seconds{quantile="0.5"})',
                     "{{work_pool}} p50"),
               Query('max by (work_pool) (prefect_work_pool_pickup_delay_seconds{quantile="0.99"})',
                     "{{work_pool}} p99"), width=8),
        _graph("Run outcomes by work pool", f"Flow runs that ended in the trailing window ({window}), per pool "
               "and final state. CRASHED: the run's process or infrastructure went away (read the workers' logs).",
               "short",
               # Runs of no pool (a flow called from a script) have an empty work_pool: name them.
               Query('label_replace(sum by (work_pool, state) (prefect_flow_runs_finished_recent), "work_pool", '
                     '"no pool", "work_pool", "")', "{{work_pool}} {{state}}"), width=8),
    ])
    events = Section("Event pipeline", [
        _graph("Event consumer lag", "Events in the stream not yet delivered to each consumer group. Growing lag "
               "means the services process events slower than they arrive.", "short",
               Query("max by (stream, group) (prefect_event_consumer_lag)", "{{stream}} {{group}}"), width=8),
        _graph("Event consumer pending", "Events delivered to a consumer but not acknowledged.", "short",
               Query("max by (stream, group) (prefect_event_consumer_pending)", "{{stream}} {{group}}"), width=8),
        _graph("Event stream length", "Entries kept in each Redis stream.", "short",
               Query("max by (stream) (prefect_event_stream_length)", "{{stream}}"), width=8),
    ])
    exporter = Section("Exporter", [
        _graph("Exporter reaches Prefect", "1 when the domain exporter's last scrape read the Prefect API; at 0 "
               "every panel above is stale.", "short", Query("min(prefect_exporter_up)", "exporter up"),
               Query('min(up{job="prefect-exporter"})', "exporter scraped")),
        _graph("Exporter scrape duration", f"Time the exporter needs to read Prefect (the Prometheus scrape interval "
               f"is {config.monitoring.scrape_interval_s}s).", "s",
               Query("max(prefect_exporter_scrape_duration_seconds)", "scrape duration"),
               limit=float(config.monitoring.scrape_interval_s)),
    ])
    return _dashboard("prefect-stack-overview", "Prefect stack / Overview",
                      "Flow runs, work pools and the event pipeline, as Prefect itself sees them.",
                      [now, flow_runs, work_pools, events, exporter])


def _replica_processes(config: StackConfig) -> tuple[StatPanel, Section]:
    """The replicas as Prometheus scrapes them (job prefect-api, through HAProxy's metrics listener)."""
    w, replicas = _rate_window(config), config.api.replicas
    scraped = _stat("Replicas scraped", "Replicas whose /api/metrics Prometheus could read.", "short",
                    'sum(up{job="prefect-api"})', base="red", steps=[(1, "orange"), (replicas, "green")])
    return scraped, Section("API replicas", [
        _graph("Scrape status", "1 when Prometheus read the replica's metrics.", "short",
               Query('up{job="prefect-api"}', "{{component}}"), width=8),
        _graph("Resident memory", "Memory of each replica's process.", "bytes",
               Query('sum by (component) (process_resident_memory_bytes{job="prefect-api"})', "{{component}}"),
               width=8),
        _graph("CPU", "CPU time per second of each replica (1 = one core).", "short",
               Query(f'sum by (component) (rate(process_cpu_seconds_total{{job="prefect-api"}}[{w}]))',
                     "{{component}}"), width=8),
    ])


def _replica_pods(config: StackConfig) -> tuple[StatPanel, Section]:
    """The replicas on Kubernetes, where nothing scrapes them (their metrics need the API admin's credential, and
    no HAProxy there holds it for Prometheus): availability from kube-state-metrics, memory and CPU from the
    kubelet's cAdvisor, both scraped by kube-prometheus-stack."""
    k8s, replicas = config.kubernetes, config.api.replicas
    deployment = f'namespace="{k8s.namespace}",deployment="{k8s.name}-api"'
    # The Deployment's pods (<deployment>-<replica set hash>-<pod hash>), their Prefect container only: cAdvisor
    # also reports the pod's cgroup (container="") and the init container.
    pods = f'namespace="{k8s.namespace}",pod=~"{k8s.name}-api-[a-z0-9]+-[a-z0-9]+",container="api"'
    # kube-prometheus-stack scrapes the kubelet every 30 s by default: rate() needs two of those samples.
    w = f"{max(4 * config.monitoring.scrape_interval_s, 120)}s"
    available = _stat("Replicas available", f"Available pods of the API Deployment, of api.replicas = {replicas} "
                      "(kube-state-metrics).", "short",
                      f"sum(kube_deployment_status_replicas_available{{{deployment}}})",
                      base="red", steps=[(1, "orange"), (replicas, "green")])
    return available, Section("API replicas", [
        _graph("Ready", "1 when the replica's container passes its readiness probe (kube-state-metrics).", "short",
               Query(f"max by (pod) (kube_pod_container_status_ready{{{pods}}})", "{{pod}}"), width=8),
        _graph("Working-set memory", "Memory of each replica's container, as the kubelet counts it against its "
               "limit (cAdvisor).", "bytes",
               Query(f"sum by (pod) (container_memory_working_set_bytes{{{pods}}})", "{{pod}}"), width=8),
        _graph("CPU", "CPU time per second of each replica's container (1 = one core; cAdvisor).", "short",
               Query(f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{pods}}}[{w}]))", "{{pod}}"), width=8),
    ])


def api(config: StackConfig, *, kubernetes: bool = False) -> dict[str, Any]:
    w = _rate_window(config)
    replicas = config.api.replicas
    responses = f"haproxy_backend_http_responses_total{{{BACKEND}}}"
    replicas_now, processes = _replica_pods(config) if kubernetes else _replica_processes(config)
    now = Section("Now", [
        _stat("Replicas in service", f"Replicas HAProxy routes to, of api.replicas = {replicas}.", "short",
              f"sum(haproxy_backend_active_servers{{{BACKEND}}})",
              base="red", steps=[(1, "orange"), (replicas, "green")]),
        replicas_now,
        _stat("Requests", "Responses per second through HAProxy.", "reqps", f"sum(rate({responses}[{w}]))"),
        _stat("5xx ratio", "Share of responses that are server errors (alert at 5%).", "percentunit",
              f'sum(rate(haproxy_backend_http_responses_total{{{BACKEND},code="5xx"}}[{w}])) '
              f"/ (sum(rate({responses}[{w}])) > 0)",  # no traffic: no data, not NaN
              base="green", steps=[(0.01, "orange"), (0.05, "red")]),
        _stat("Response time", "HAProxy's average over the last 1024 requests (alert above 1 s).", "s",
              f"max(haproxy_backend_response_time_average_seconds{{{BACKEND}}})",
              base="green", steps=[(0.5, "orange"), (1, "red")]),
        _stat("Queued requests", "Requests waiting for a free replica.", "short",
              f"sum(haproxy_backend_current_queue{{{BACKEND}}})", base="green", steps=[(1, "orange")]),
    ])
    traffic = Section("Traffic", [
        _graph("Responses by status class", "Responses per second by HTTP status class.", "reqps",
               Query(f"sum by (code) (rate({responses}[{w}]))", "{{code}}"), stacked=True),
        _graph("Responses by replica", "How HAProxy spreads the load over the replicas.", "reqps",
               Query(f"sum by (server) (rate(haproxy_server_http_responses_total{{{BACKEND}}}[{w}]))", "{{server}}")),
        _graph("5xx by replica", "Server errors per second, by replica: one replica alone points at that process.",
               "reqps", Query(f'sum by (server) (rate(haproxy_server_http_responses_total{{{BACKEND},code="5xx"}}'
                              f"[{w}]))", "{{server}}")),
        _graph("Response time by replica", "Average response time per replica and for the backend.", "s",
               Query(f"max by (server) (haproxy_server_response_time_average_seconds{{{BACKEND}}})", "{{server}}"),
               Query(f"max(haproxy_backend_response_time_average_seconds{{{BACKEND}}})", "backend"),
               limit=1.0),
    ])
    balancer = Section("Load balancer", [
        _graph("Replica state", "1 while HAProxy has the replica UP; 0 when it is down, drained or in maintenance.",
               "short", Query(f'max by (server) (haproxy_server_status{{{BACKEND},state="UP"}})', "{{server}}"),
               width=8),
        _graph("Sessions by replica", "Open connections from HAProxy to each replica.", "short",
               Query(f"sum by (server) (haproxy_server_current_sessions{{{BACKEND}}})", "{{server}}"), width=8),
        _graph("Frontend sessions and queue", "Client connections held by HAProxy, and requests queued for a "
               "replica.", "short", Query("sum by (proxy) (haproxy_frontend_current_sessions)", "{{proxy}} sessions"),
               Query(f"sum(haproxy_backend_current_queue{{{BACKEND}}})", "queued"), width=8),
    ])
    return _dashboard("prefect-stack-api", "Prefect stack / API and load balancer",
                      "The Prefect API replicas and the HAProxy load balancer in front of them.",
                      [now, traffic, balancer, processes])


def postgres(config: StackConfig) -> dict[str, Any]:
    w = _rate_window(config)
    database = config.postgres.database
    pool_size = config.pgbouncer.default_pool_size
    now = Section("Now", [
        _stat("PostgreSQL", "Whether postgres_exporter can query the database.", "none", "min(pg_up)",
              mappings=UP_DOWN),
        _stat("PgBouncer", "Whether the PgBouncer collector can query PgBouncer's admin console.", "none",
              "min(pgbouncer_up)", mappings=UP_DOWN),
        _stat("Connections used", "Backends over max_connections; new connections fail at 100%.", "percentunit",
              "sum(pg_stat_database_numbackends) / max(pg_settings_max_connections)",
              base="green", steps=[(0.8, "orange"), (0.9, "red")]),
        _stat("Clients waiting", "Clients PgBouncer holds until a server connection frees up.", "short",
              "sum(pgbouncer_pools_client_waiting_connections)", base="green", steps=[(1, "orange")]),
        _stat("Longest client wait", "The longest a client has waited for a server connection.", "s",
              "max(pgbouncer_pools_client_maxwait_seconds)", base="green", steps=[(1, "orange"), (5, "red")]),
        _stat(f"Size of {database}", "On-disk size of Prefect's database.", "bytes",
              f'sum(pg_database_size_bytes{{datname="{database}"}})'),
    ])
    postgresql = Section("PostgreSQL", [
        _graph("Backends", "Connections per database, against max_connections.", "short",
               Query(f"sum by (datname) (pg_stat_database_numbackends{{{NOT_TEMPLATE_DB}}})", "{{datname}}"),
               Query("max(pg_settings_max_connections)", "max_connections")),
        _graph("Transactions", "Commits and rollbacks per second.", "ops",
               Query(f"sum by (datname) (rate(pg_stat_database_xact_commit{{{NOT_TEMPLATE_DB}}}[{w}]))",
                     "{{datname}} commit"),
               Query(f"sum by (datname) (rate(pg_stat_database_xact_rollback{{{NOT_TEMPLATE_DB}}}[{w}]))",
                     "{{datname}} rollback")),
        _graph("Database size", "Growth here is mostly events and logs; services.events_retention bounds it.",
               "bytes", Query(f"sum by (datname) (pg_database_size_bytes{{{NOT_TEMPLATE_DB}}})", "{{datname}}")),
        _graph("Deadlocks", "Deadlocks per second; PostgreSQL cancels one transaction of each.", "short",
               Query(f"sum by (datname) (rate(pg_stat_database_deadlocks{{{NOT_TEMPLATE_DB}}}[{w}]))",
                     "{{datname}}")),
    ])
    pgbouncer = Section("PgBouncer", [
        _graph("Client connections", "Clients with a server connection (active) and clients queued (waiting).",
               "short",
               Query("sum by (database) (pgbouncer_pools_client_active_connections)", "{{database}} active"),
               Query("sum by (database) (pgbouncer_pools_client_waiting_connections)", "{{database}} waiting"),
               width=8),
        _graph("Server connections", f"Connections to PostgreSQL per pool; a pool holds at most "
               f"pgbouncer.default_pool_size = {pool_size} (dashed line).", "short",
               Query("sum by (database) (pgbouncer_pools_server_active_connections)", "{{database}} active"),
               Query("sum by (database) (pgbouncer_pools_server_idle_connections)", "{{database}} idle"),
               width=8, limit=float(pool_size)),
        _graph("Client wait", "Longest wait for a server connection, per database. Sustained waits mean the "
               "pool is too small for the load.", "s",
               Query("max by (database) (pgbouncer_pools_client_maxwait_seconds)", "{{database}}"), width=8),
    ])
    return _dashboard("prefect-stack-postgres", "Prefect stack / PostgreSQL and PgBouncer",
                      "The database and the connection pooler in front of it.", [now, postgresql, pgbouncer])


def redis(config: StackConfig) -> dict[str, Any]:
    w = _rate_window(config)
    now = Section("Now", [
        _stat("Redis", "Whether redis_exporter can reach Redis.", "none", "min(redis_up)", mappings=UP_DOWN,
              width=6),
        # maxmemory 0 means "no limit": the comparison drops it rather than divide by zero.
        _stat("Memory used", "Used memory over maxmemory; at 100% Redis evicts or refuses writes.", "percentunit",
              "max(redis_memory_used_bytes) / (max(redis_memory_max_bytes) > 0)",
              base="green", steps=[(0.8, "orange"), (0.9, "red")], width=6),
        _stat("Connected clients", "Client connections.", "short", "sum(redis_connected_clients)", width=6),
        _stat("Commands", "Commands processed per second.", "ops",
              f"sum(rate(redis_commands_processed_total[{w}]))", width=6),
    ])
    details = Section("Redis", [
        _graph("Memory", "Used memory and the maxmemory limit.", "bytes",
               Query("max(redis_memory_used_bytes)", "used"), Query("max(redis_memory_max_bytes)", "maxmemory")),
        _graph("Client connections", "Client connections (API replicas, services, workers' event clients).",
               "short", Query("sum(redis_connected_clients)", "clients")),
        _graph("Commands per second", "Commands processed per second.", "ops",
               Query(f"sum(rate(redis_commands_processed_total[{w}]))", "commands")),
        _graph("Stream length", "Entries in each Redis stream (Prefect's event messaging).", "short",
               Query("max by (stream) (redis_stream_length)", "{{stream}}")),
    ])
    return _dashboard("prefect-stack-redis", "Prefect stack / Redis",
                      "Redis: Prefect's messaging (event streams) and the Docket task queue.", [now, details])


def backups(config: StackConfig) -> dict[str, Any]:
    max_age_s = config.backups.max_age_hours * 3600
    max_age = f"backups.max_age_hours = {config.backups.max_age_hours}"
    now = Section("Now", [
        _stat("Newest verified backup", f"Age of the newest backup that passed verification; the alert fires "
              f"past {max_age}.", "s", "time() - max(prefect_backup_last_verified_backup_timestamp_seconds)",
              base="green", steps=[(max_age_s, "red")]),
        _stat("Newest backup", "Age of the newest successful backup, verified or not.", "s",
              "time() - max(prefect_backup_last_success_timestamp_seconds)",
              base="green", steps=[(max_age_s, "red")]),
        _stat("Last attempt", "Whether the last backup attempt succeeded (invoke logs backup-scheduler).", "none",
              "max(prefect_backup_last_attempt_success)", mappings={0: ("failed", "red"), 1: ("succeeded", "green")}),
        _stat("Last verification", "Whether the last verification passed. Do not rely on a backup that failed it.",
              "none", "max(prefect_backup_last_verification_success)",
              mappings={0: ("FAILED", "red"), 1: ("passed", "green")}),
        _stat("Last duration", "Duration of the last successful backup.", "s",
              "max(prefect_backup_last_duration_seconds)"),
        _stat("Last size", "Stored size of the last successful backup.", "bytes",
              "max(prefect_backup_last_size_bytes)"),
    ])
    history = Section("History", [
        _graph("Age of the newest verified backup", f"Saw-tooth: resets at each verified backup. The dashed line is "
               f"{max_age}.", "s",
               Query("time() - max by (method) (prefect_backup_last_verified_backup_timestamp_seconds)", "{{method}}"),
               limit=float(max_age_s)),
        _graph("Backup size", "Stored size of each successful backup: a sudden drop deserves a look.", "bytes",
               Query("max by (method) (prefect_backup_last_size_bytes)", "{{method}}")),
        _graph("Backup duration", "Duration of each successful backup.", "s",
               Query("max by (method) (prefect_backup_last_duration_seconds)", "{{method}}")),
        _graph("Attempt and verification results", "1 = succeeded, 0 = failed.", "short",
               Query("max by (method) (prefect_backup_last_attempt_success)", "backup {{method}}"),
               Query("max by (method) (prefect_backup_last_verification_success)", "verification {{method}}")),
    ])
    return _dashboard("prefect-stack-backups", "Prefect stack / Backups",
                      "Backups and their verification, from the metrics every run leaves for node_exporter.",
                      [now, history])


def host(config: StackConfig) -> dict[str, Any]:
    w = _rate_window(config)
    used = f"1 - node_filesystem_avail_bytes{{{FILESYSTEMS}}} / node_filesystem_size_bytes{{{FILESYSTEMS}}}"
    now = Section("Now", [
        _stat("CPU busy", "Share of CPU time not idle, over every core.", "percentunit",
              f'1 - avg(rate(node_cpu_seconds_total{{mode="idle"}}[{w}]))',
              base="green", steps=[(0.8, "orange"), (0.95, "red")], width=6),
        _stat("Memory used", "Share of memory not available to new processes.", "percentunit",
              "1 - sum(node_memory_MemAvailable_bytes) / sum(node_memory_MemTotal_bytes)",
              base="green", steps=[(0.8, "orange"), (0.95, "red")], width=6),
        _stat("Load (1m)", "Runnable processes, averaged over a minute; compare with the number of cores.", "short",
              "max(node_load1)", width=6),
        _stat("Fullest filesystem", "Used share of the fullest real filesystem (alert at 95%).", "percentunit",
              f"max({used})", base="green", steps=[(0.75, "orange"), (0.95, "red")], width=6),
    ])
    details = Section("Host", [
        _graph("CPU by mode", "Cores busy per mode (user, system, iowait...).", "short",
               Query(f'sum by (mode) (rate(node_cpu_seconds_total{{mode!="idle"}}[{w}]))', "{{mode}}"), stacked=True),
        _graph("Memory", "Memory in use and the total.", "bytes",
               Query("sum(node_memory_MemTotal_bytes) - sum(node_memory_MemAvailable_bytes)", "used"),
               Query("sum(node_memory_MemTotal_bytes)", "total")),
        _graph("Filesystem used", "Used share per mount point.", "percentunit", Query(used, "{{mountpoint}}"),
               limit=0.95),
        _graph("Load average (1m)", "Runnable processes, averaged over a minute.", "short",
               Query("node_load1", "{{instance}}")),
        _graph("Network received", "Bytes received per second, per interface.", "Bps",
               Query(f'sum by (device) (rate(node_network_receive_bytes_total{{device!="lo"}}[{w}]))', "{{device}}")),
        _graph("Disk busy", "Share of time each disk had I/O in flight; near 100% the disk is the bottleneck.",
               "percentunit", Query(f"sum by (device) (rate(node_disk_io_time_seconds_total[{w}]))", "{{device}}")),
    ])
    return _dashboard("prefect-stack-host", "Prefect stack / Host",
                      "The machine under the stack, from node_exporter.", [now, details])


def dashboards(config: StackConfig, *, kubernetes: bool = False) -> dict[str, dict[str, Any]]:
    """Every dashboard's JSON model, keyed by the file name Grafana's file provider loads it from. ``kubernetes``:
    the API replicas' panels read kube-state-metrics and cAdvisor (see ``_replica_pods``)."""
    return {
        "prefect-overview.json": overview(config),
        "prefect-api.json": api(config, kubernetes=kubernetes),
        "prefect-postgres.json": postgres(config),
        "prefect-redis.json": redis(config),
        "prefect-backups.json": backups(config),
        "prefect-host.json": host(config),
    }


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query of every panel, rows' collapsed panels included."""
    queries: list[tuple[str, str]] = []
    for panel in dashboard.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets") or []:
                queries.append((inner.get("title", ""), target.get("expr", "")))
    return queries


def loki_datasource(loki_url: str, jaeger: bool) -> dict[str, Any]:
    """Grafana's Loki datasource. With the stack's Jaeger, a record's ``trace_id`` (structured metadata, where
    Loki puts an OTLP record's trace id) becomes a link to that trace in the Jaeger datasource."""
    datasource: dict[str, Any] = {"name": "Loki (Prefect stack)", "uid": LOKI_UID, "type": "loki", "access": "proxy",
                                  "url": loki_url, "editable": False, "jsonData": {"maxLines": 1000}}
    if jaeger:
        datasource["jsonData"]["derivedFields"] = [{
            "name": "trace_id",
            # "label" matches a label or structured-metadata field by name (no regex over the line).
            "matcherType": "label",
            "matcherRegex": "trace_id",
            "datasourceUid": JAEGER_UID,
            # Provisioning files expand $VAR: $$ keeps Grafana's own ${__value.raw} (the trace id) literal.
            "url": "$${__value.raw}",
            "urlDisplayLabel": "Trace in Jaeger",
        }]
    return datasource


def jaeger_datasource(jaeger_url: str) -> dict[str, Any]:
    return {"name": "Jaeger (Prefect stack)", "uid": JAEGER_UID, "type": "jaeger", "access": "proxy",
            "url": jaeger_url, "editable": False}


def grafana_provisioning(config: StackConfig, prometheus_url: str, jaeger_url: str | None,
                         dashboards_dir: str, loki_url: str | None = None) -> dict[str, str]:
    """Grafana's provisioning files (relative path -> YAML): the datasources and the dashboard file provider."""
    datasources: list[dict[str, Any]] = [{
        "name": "Prometheus (Prefect stack)",
        "uid": PROMETHEUS_UID,
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": True,
        "editable": False,
        "jsonData": {
            # Grafana never asks for a step finer than the scrape interval, and sizes $__rate_interval from it.
            "timeInterval": f"{config.monitoring.scrape_interval_s}s",
            "httpMethod": "POST",
        },
    }]
    if jaeger_url is not None:
        datasources.append(jaeger_datasource(jaeger_url))
    if loki_url is not None:
        datasources.append(loki_datasource(loki_url, jaeger=jaeger_url is not None))
    provider = {
        "name": TAG,
        "orgId": 1,
        "folder": FOLDER,
        "folderUid": TAG,
        "type": "file",
        # The files are rendered from the model: edits in the UI would be lost at the next render, so refuse them.
        "disableDeletion": True,
        "allowUiUpdates": False,
        "updateIntervalSeconds": 30,
        "options": {"path": dashboards_dir, "foldersFromFilesStructure": False},
    }
    header = "# Rendered by prefect-stack from the configuration model; edit the model, not this file.\n"
    return {
        "datasources/prefect-stack.yaml": header + yaml.safe_dump(
            {"apiVersion": 1, "datasources": datasources}, sort_keys=False),
        "dashboards/prefect-stack.yaml": header + yaml.safe_dump(
            {"apiVersion": 1, "providers": [provider]}, sort_keys=False),
    }
