"""Health of every component, as an operator reads it: running, healthy, pid, port, version, and why not."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import psycopg
import redis

from infra.api_client import load_balancer_verify
from infra.config import StackConfig
from infra.console import wait_until
from infra.database.admin import admin_connect
from infra.haproxy_runtime import all_servers_up, server_stats
from infra.haproxy_runtime import version as haproxy_version
from infra.layout import StateLayout
from infra.local.plan import LocalPlan
from infra.local.supervisor import ProcessInfo, Supervisor
from infra.local.workers import COMPONENT as WORKER
from infra.local.workers import workers_prefect_version
from infra.render.supervisor import Program
from infra.secrets import Secrets
from infra.status import ComponentStatus

PROBE_TIMEOUT_S = 3.0
# Probes target loopback only: never route them through an HTTP(S)_PROXY from the environment.
# No keep-alive: a pooled connection to a replica that just restarted would fail a probe for nothing.
_http = httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0))


def _probe_lb(config: StackConfig, url: str) -> int:
    """Status code of a GET through the load balancer (or its stats listener), one fresh connection."""
    with httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False, verify=load_balancer_verify(config),
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return client.get(url).status_code


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def api_ready(port: int) -> bool:
    response = _http.get(f"http://127.0.0.1:{port}/api/ready")
    return response.status_code == 200


def lb_ready(config: StackConfig) -> bool:
    """The API answers ready through the load balancer (at least one replica is up in HAProxy)."""
    return _probe_lb(config, f"{config.api_url}/ready") == 200


def wait_for_load_balancer(config: StackConfig, layout: StateLayout, timeout_s: float = 120) -> None:
    """Until HAProxy itself reports every replica UP and the API answers ready through it."""
    wait_until(lambda: all_servers_up(layout.haproxy_socket) and lb_ready(config), timeout_s,
               "the API through the load balancer", fix="read invoke logs haproxy and invoke status")


def not_routed_replicas(layout: StateLayout) -> list[str]:
    """API replicas HAProxy does not send requests to, with its state for each (``api-2 DOWN``)."""
    servers = server_stats(layout.haproxy_socket)
    if not servers:
        return ["no API server in the load balancer"]
    return [f"{name} {row.get('status', '?')}" for name, row in sorted(servers.items()) if row.get("status") != "UP"]


def _basic_auth(auth_string: str) -> tuple[str, str]:
    user, _, password = auth_string.partition(":")
    return user, password


def probe(program: Program, plan: LocalPlan, secrets: Secrets) -> tuple[bool, str | None, str]:
    """(healthy, version, detail) for one running program."""
    config = plan.config
    if program.component == "postgres":
        with admin_connect(config, plan.layout) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return True, str(row[0]) if row else None, ""
    if program.component == "pgbouncer":
        params: dict[str, Any] = {
            "host": "127.0.0.1", "port": config.pgbouncer.port, "user": config.postgres.user,
            "password": secrets.get("postgres_prefect"), "connect_timeout": 3,
        }
        with psycopg.connect(dbname=config.postgres.database, **params) as conn:
            conn.execute("SELECT 1")
        # The admin console speaks only the simple query protocol: ClientCursor.
        with psycopg.connect(
            dbname="pgbouncer", autocommit=True, cursor_factory=psycopg.ClientCursor, **params
        ) as conn:
            row = conn.execute("SHOW VERSION").fetchone()
        return True, str(row[0]).removeprefix("PgBouncer ") if row else None, ""
    if program.component == "redis":
        client = redis.Redis(port=config.redis.port, password=secrets.get("redis"), socket_timeout=PROBE_TIMEOUT_S)
        info = client.info("server")
        client.close()
        return True, str(info["redis_version"]), ""
    if program.component == "api":
        assert program.port is not None  # noqa: S101 - every API program has a port
        ready = _http.get(f"http://127.0.0.1:{program.port}/api/ready")
        if ready.status_code != 200:
            return False, None, f"/api/ready answered {ready.status_code}"
        version = _http.get(
            f"http://127.0.0.1:{program.port}/api/admin/version",
            auth=_basic_auth(secrets.get("prefect_auth")),
        )
        return True, version.json() if version.status_code == 200 else None, ""
    if program.component == "haproxy":
        lb = config.load_balancer
        through = _probe_lb(config, f"{config.api_url}/health")
        scheme = "https" if config.stats_tls_enabled else "http"
        metrics = _probe_lb(config, f"{scheme}://127.0.0.1:{lb.stats_port}/metrics")
        problems = []
        if through != 200 or metrics != 200:
            problems.append(f"/api/health via LB: {through}, /metrics: {metrics}")
        # HAProxy's own view of the replicas: a replica that answers but is not routed to (still DOWN after a
        # restart, drained, in maintenance) means the stack is not yet serving at full strength.
        not_routed = not_routed_replicas(plan.layout)
        if not_routed:
            problems.append("not routed to: " + ", ".join(not_routed))
        return not problems, haproxy_version(plan.layout.haproxy_socket), "; ".join(problems)
    if program.component == "s3":
        from infra.backup.storage import BackupStore

        BackupStore.from_config(config, secrets).ensure_bucket()
        return True, None, ""
    if program.component in ("prometheus", "alertmanager"):
        ready = _http.get(f"http://127.0.0.1:{program.port}/-/ready")
        return ready.status_code == 200, None, "" if ready.status_code == 200 else f"/-/ready: {ready.status_code}"
    if program.component in ("node-exporter", "postgres-exporter", "redis-exporter", "prefect-exporter"):
        code = _http.get(f"http://127.0.0.1:{program.port}/metrics").status_code
        return code == 200, None, "" if code == 200 else f"/metrics: {code}"
    if program.component == WORKER:
        # Prefect's worker health endpoint: 503 once the worker has not polled its pool for a while.
        code = _http.get(f"http://127.0.0.1:{program.port}/health").status_code
        return code == 200, workers_prefect_version(config), "" if code == 200 else f"/health: {code} (not polling)"
    # Background services have no port; supervisor's RUNNING (past startsecs) is the signal.
    return True, None, ""


def component_status(
    program: Program, info: ProcessInfo | None, plan: LocalPlan, secrets: Secrets
) -> ComponentStatus:
    if info is None or not info.running:
        return ComponentStatus(
            program.name, program.component, False, info.state if info else "ABSENT", None, program.port,
            detail=f"not running (invoke logs {program.name})",
        )
    try:
        healthy, version, detail = probe(program, plan, secrets)
    except Exception as exc:  # any failed probe is an unhealthy component, reported with its reason
        healthy, version, detail = False, None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return ComponentStatus(
        program.name, program.component, healthy, info.state, info.pid, program.port, version, info.uptime_s, detail
    )


def stack_status(plan: LocalPlan, secrets: Secrets) -> list[ComponentStatus]:
    supervisor = Supervisor(plan.layout)
    infos = supervisor.processes() if supervisor.is_running() else {}
    return [component_status(p, infos.get(p.name), plan, secrets) for p in plan.programs]
