"""PgBouncer's pools from its admin console (SHOW POOLS), as Prometheus gauges.

Debian's prometheus-pgbouncer-exporter 1.7 crashes against PgBouncer 1.18 (``KeyError: 'total_requests'``);
reading the console directly needs nothing more than psycopg. The console speaks only the simple query
protocol, hence ``ClientCursor``.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

# SHOW POOLS column -> (metric suffix, help)
POOL_COLUMNS = {
    "cl_active": ("client_active_connections", "Client connections paired with a server connection."),
    "cl_waiting": ("client_waiting_connections", "Client connections waiting for a server connection."),
    "sv_active": ("server_active_connections", "Server connections in use by a client."),
    "sv_idle": ("server_idle_connections", "Server connections idle and ready."),
    "maxwait": ("client_maxwait_seconds", "How long the oldest waiting client has waited."),
}


def collect_pools(conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[Metric]:
    cursor = conn.execute("SHOW POOLS")
    columns = [c.name for c in cursor.description or ()]
    families = {
        column: GaugeMetricFamily(f"pgbouncer_pools_{suffix}", text, labels=["database", "user"])
        for column, (suffix, text) in POOL_COLUMNS.items()
    }
    for row in cursor.fetchall():
        values = dict(zip(columns, row, strict=False))
        if values.get("database") == "pgbouncer":
            continue  # the admin console itself
        for column, family in families.items():
            value = float(str(values.get(column, 0)))
            if column == "maxwait":
                value += float(str(values.get("maxwait_us", 0))) / 1e6
            family.add_metric([str(values.get("database")), str(values.get("user"))], value)
    yield from families.values()
