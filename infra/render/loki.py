"""Loki's configuration (the log store of the compose and Kubernetes targets), from the model.

One single-binary Loki (``-target=all``) per stack: TSDB index and chunks on the filesystem of one volume, schema
v13, retention applied by its compactor. What it receives is the Prefect processes' log records over OTLP (its
native ``/otlp/v1/logs``): each record's trace and span ids land as structured metadata (``trace_id``,
``span_id``), which Grafana's Loki datasource links to Jaeger (infra/render/dashboards.py).
"""

from __future__ import annotations

from typing import Any

import yaml

from infra.config import StackConfig

LOKI_HTTP = 3100
# Loki's native OTLP/HTTP logs endpoint: a full URL for OTEL_EXPORTER_OTLP_LOGS_ENDPOINT (used as it is).
LOKI_OTLP_LOGS_PATH = "/otlp/v1/logs"
# The image's data directory (grafana/loki's Dockerfile creates it for its user, 10001): the volume goes here.
LOKI_DATA_DIR = "/loki"
# The upstream image's user (grafana/loki cmd/loki/Dockerfile: USER 10001).
LOKI_USER = 10001
# The day the schema below starts: before any record a new stack can hold. Changing the schema later means adding a
# second entry from a future date, never editing this one (Loki reads old chunks with the schema of their day).
SCHEMA_FROM = "2024-04-01"
# The TSDB index is cut per day; the compactor's retention must be a multiple of it.
INDEX_PERIOD_HOURS = 24
# Our one scale onto Loki's own levels (server.log_level).
_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}


def loki_otlp_logs_url(host: str) -> str:
    """Where the Prefect processes export their log records when the stack's Loki runs at ``host``."""
    return f"http://{host}:{LOKI_HTTP}{LOKI_OTLP_LOGS_PATH}"


def loki_yaml(config: StackConfig) -> str:
    """Single-binary Loki: OTLP and push API in, retention from ``logs.loki_storage``, no tenant."""
    retention = f"{config.logs.loki_storage.retention_days * INDEX_PERIOD_HOURS}h"
    document: dict[str, Any] = {
        # No tenants and no authentication: Loki is reachable only from the stack's own processes and Grafana
        # (compose: the internal back-end network, no published port; Kubernetes: its NetworkPolicy). A reverse
        # proxy with authentication in front would be needed before it is exposed any further.
        "auth_enabled": False,
        "target": "all",
        "server": {"http_listen_port": LOKI_HTTP, "grpc_listen_port": 9095,
                   "log_level": _LEVELS[config.logs.levels.monitoring],
                   "log_format": "json" if config.logs.format == "json" else "logfmt"},
        "common": {
            "path_prefix": LOKI_DATA_DIR,
            # One instance: the rings live in memory and announce the loopback address (no interface lookup).
            "instance_addr": "127.0.0.1",
            "replication_factor": 1,
            "ring": {"kvstore": {"store": "inmemory"}},
            "storage": {"filesystem": {"chunks_directory": f"{LOKI_DATA_DIR}/chunks",
                                       "rules_directory": f"{LOKI_DATA_DIR}/rules"}},
        },
        "schema_config": {"configs": [{"from": SCHEMA_FROM, "store": "tsdb", "object_store": "filesystem",
                                       "schema": "v13",
                                       "index": {"prefix": "index_", "period": f"{INDEX_PERIOD_HOURS}h"}}]},
        "limits_config": {
            # OTLP records carry their trace/span ids and attributes as structured metadata: without it Loki
            # refuses every OTLP batch.
            "allow_structured_metadata": True,
            "retention_period": retention,
            "volume_enabled": True,
        },
        # The ruler (part of -target=all) copies rules to a scratch directory: on the volume, the root being
        # read-only. No rules are shipped; the alerts are Prometheus's.
        "ruler": {"rule_path": f"{LOKI_DATA_DIR}/rules-temp"},
        "compactor": {"working_directory": f"{LOKI_DATA_DIR}/compactor", "compaction_interval": "10m",
                      "retention_enabled": True, "retention_delete_delay": "2h",
                      "delete_request_store": "filesystem"},
        # Loki reports usage to grafana.com by default: the stack's processes call no one outside.
        "analytics": {"reporting_enabled": False},
    }
    return "# Rendered by prefect-stack from the configuration model.\n" + yaml.safe_dump(document, sort_keys=False)
