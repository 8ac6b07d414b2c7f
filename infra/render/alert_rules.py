"""Prometheus alerting rules for the whole stack, one group per concern; each is unit-tested with promtool.

Every rule carries ``severity`` (page: wake someone; critical: act today; warning: look soon), an ``area``
label that Alertmanager inhibits by, a ``summary``, a ``description`` that says what to do, and a ``runbook``
anchor in the README. The rules read only metric names and job labels, never addresses: the same file serves
the local, compose and Kubernetes targets.
"""

from __future__ import annotations

from typing import Any

import yaml

from infra.backup.metrics import alert_rules as backup_alert_rules
from infra.config import StackConfig

RUNBOOK = "README.md#runbook-{anchor}"
BACKEND = 'proxy="prefect_api"'


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


def alert_rules_yml(config: StackConfig) -> str:
    groups: list[dict[str, Any]] = [
        {"name": "prefect-api", "rules": api_rules(config)},
        {"name": "host", "rules": host_rules()},
    ]
    groups += yaml.safe_load(backup_alert_rules(config.backups.max_age_hours))["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule["labels"].setdefault("area", "backups")
            rule["annotations"].setdefault("runbook", RUNBOOK.format(anchor=rule["alert"].lower()))
            rule["annotations"].setdefault("description", rule["annotations"]["summary"])
    header = "# Rendered by prefect-stack from the configuration model; edit the model, not this file.\n"
    return header + yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000)
