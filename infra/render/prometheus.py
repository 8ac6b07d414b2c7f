"""prometheus.yml: what Prometheus scrapes, how often, and where it sends alerts.

Target-neutral: every address comes from ``Addresses`` (loopback on the local target, service names in compose
and Kubernetes), and credentials are read from files (``basic_auth.password_file``), never written here.
Every job labels its targets with the component name an operator knows (``api-2``, ``haproxy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.config import StackConfig
from infra.layout import TRUSTED_CA
from infra.render import Addresses, RenderedFile
from infra.render.haproxy import SCRAPE_USER, replica_metrics_path, server_name

RULES_FILE = "prometheus-rules.yml"
# Prometheus's own password at HAProxy's metrics listener (secret prometheus_scrape), read from this file. Prefect's
# /api/metrics sits behind the admin's basic auth: HAProxy adds that, so Prometheus never holds it.
SCRAPE_PASSWORD_FILE = "prometheus-scrape-password"  # noqa: S105 - a file name, not a secret
# Rendered by earlier versions and read by nothing now; deploy deletes them. prometheus-api-password held the API
# admin's password, with which Prometheus scraped the replicas directly.
RETIRED_FILES = ("prometheus-api-password",)


def _job(name: str, target: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"job_name": name, **extra, "static_configs": [{"targets": [target], "labels": {"component": component}}]}


def scrape_jobs(config: StackConfig, addresses: Addresses, etc: Path) -> list[dict[str, Any]]:
    """One job per kind of endpoint. Job names are part of the alert rules' and dashboards' contract."""
    monitoring, lb = config.monitoring, config.load_balancer
    # The stats listener's TLS, which the metrics listener shares (infra/render/haproxy.py).
    haproxy_tls = ({"scheme": "https", "tls_config": {"ca_file": str(etc / TRUSTED_CA)}}
                   if config.stats_tls_enabled else {})
    return [
        _job("prometheus", f"{addresses.prometheus}:{monitoring.prometheus_port}", "prometheus"),
        _job("alertmanager", f"{addresses.alertmanager}:{monitoring.alertmanager_port}", "alertmanager"),
        _job("node", f"{addresses.node_exporter}:{monitoring.node_exporter_port}", "node"),
        # HAProxy's built-in exporter: per-replica request rates, 5xx, response times, queue, server states.
        _job("haproxy", f"{addresses.load_balancer}:{lb.stats_port}", "haproxy", **haproxy_tls),
        _job("postgres", f"{addresses.exporter('postgres')}:{monitoring.postgres_exporter_port}", "postgres"),
        _job("redis", f"{addresses.exporter('redis')}:{monitoring.redis_exporter_port}", "redis"),
        # Prefect's flow runs, work pools and event pipeline, and PgBouncer's pools (infra/exporter).
        _job("prefect-exporter", f"{addresses.exporter('prefect')}:{monitoring.prefect_exporter_port}",
             "prefect-exporter"),
        # Each replica through HAProxy's metrics listener, one path per replica (so each stays its own target),
        # with Prometheus's own credential: HAProxy admits only that GET and adds the API's auth toward the replica.
        {"job_name": "prefect-api", **haproxy_tls,
         "basic_auth": {"username": SCRAPE_USER, "password_file": str(etc / SCRAPE_PASSWORD_FILE)},
         "static_configs": [
             {"targets": [f"{addresses.load_balancer}:{monitoring.api_metrics_port}"],
              "labels": {"component": server_name(i), "__metrics_path__": replica_metrics_path(i)}}
             for i in range(1, config.api.replicas + 1)
         ]},
    ]


def prometheus_yml(config: StackConfig, addresses: Addresses, etc: Path) -> RenderedFile:
    monitoring = config.monitoring
    document = {
        "global": {
            "scrape_interval": f"{monitoring.scrape_interval_s}s",
            "evaluation_interval": f"{monitoring.evaluation_interval_s}s",
            "external_labels": {"stack": "prefect"},
        },
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"{addresses.alertmanager}:{monitoring.alertmanager_port}"]}]}
        ]},
        "rule_files": [str(etc / RULES_FILE)],
        "scrape_configs": scrape_jobs(config, addresses, etc),
    }
    header = "# Rendered by prefect-stack from the configuration model; edit the model, not this file.\n"
    return RenderedFile(etc / "prometheus.yml", header + yaml.safe_dump(document, sort_keys=False))
