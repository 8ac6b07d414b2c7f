"""pgbouncer.ini and its auth file.

Two pools onto the same database: ``<db>`` in transaction mode for the API replicas (many short transactions,
few server connections) and ``<db>_session`` in session mode for the background services, whose triggers
service holds a LISTEN connection, which transaction pooling cannot carry.
"""

from __future__ import annotations

from infra.config import StackConfig
from infra.layout import StateLayout
from infra.render import Addresses, RenderedFile
from infra.render.postgres import MONITOR_ROLE
from infra.secrets import Secrets

SESSION_POOL_SUFFIX = "_session"


def pgbouncer_ini(config: StackConfig, layout: StateLayout, addresses: Addresses) -> RenderedFile:
    pg, pb = config.postgres, config.pgbouncer
    server = f"host={addresses.postgres} port={pg.port} dbname={pg.database}"
    connections = 1 if config.logs.levels.pgbouncer in ("DEBUG", "INFO") else 0
    text = f"""\
;; Rendered by prefect-stack from the configuration model; edit the model, not this file.
[databases]
{pg.database} = {server} pool_mode=transaction
{pg.database}{SESSION_POOL_SUFFIX} = {server} pool_mode=session

[pgbouncer]
listen_addr = {addresses.bind('127.0.0.1')}
listen_port = {pb.port}
unix_socket_dir = {layout.run}
auth_type = scram-sha-256
auth_file = {layout.etc / "pgbouncer-userlist.txt"}
admin_users = {pg.user}
stats_users = {pg.user}, {MONITOR_ROLE}
pool_mode = transaction
default_pool_size = {pb.default_pool_size}
reserve_pool_size = 5
max_client_conn = {pb.max_client_conn}
;; asyncpg sets this on connect; PgBouncer must not refuse the connection for it.
ignore_startup_parameters = extra_float_digits
server_lifetime = 3600
;; A PostgreSQL that crashed is back within seconds (crash recovery): log in again every second, not every 15.
server_login_retry = {pb.server_login_retry_s}
;; A client waiting for a server connection, or a query running, longer than these gets an error Prefect maps to
;; 503 (retried by its clients) instead of hitting the replica's own statement timeout, which answers 500.
query_wait_timeout = {pb.query_wait_timeout_s}
query_timeout = {pb.query_timeout_s}
server_idle_timeout = 600
;; Logs go to stderr, captured by the supervisor. logs.levels.pgbouncer: DEBUG adds verbose, INFO and below log
;; each client connection, above INFO only problems.
verbose = {1 if config.logs.levels.pgbouncer == "DEBUG" else 0}
log_connections = {connections}
log_disconnections = {connections}
"""
    return RenderedFile(layout.etc / "pgbouncer.ini", text)


def pgbouncer_userlist(config: StackConfig, secrets: Secrets, layout: StateLayout) -> RenderedFile:
    # A plain-text password lets PgBouncer run SCRAM both towards clients and towards PostgreSQL.
    text = (f'"{config.postgres.user}" "{secrets.get("postgres_prefect")}"\n'
            f'"{MONITOR_ROLE}" "{secrets.get("postgres_monitor")}"\n')
    return RenderedFile(layout.etc / "pgbouncer-userlist.txt", text, secret=True)
