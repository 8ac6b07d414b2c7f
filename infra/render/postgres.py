"""postgresql.conf, pg_hba.conf and pg_ident.conf for the stack's own PostgreSQL cluster."""

from __future__ import annotations

from infra.config import StackConfig
from infra.layout import StateLayout
from infra.render import RenderedFile

# logs.levels.postgres on PostgreSQL's own scale (log_min_messages).
LOG_MIN_MESSAGES = {"DEBUG": "debug1", "INFO": "info", "WARNING": "warning", "ERROR": "error", "CRITICAL": "fatal"}

# Read-only role of the exporters: pg_monitor's statistics views, SELECT on Prefect's tables, PgBouncer's SHOW.
MONITOR_ROLE = "prefect_monitor"


# The collector names each file by the time it was opened, so a size rotation starts a new file; the log
# pruner (infra/logs/prune.py) keeps logs.rotation.keep of them and none older than max_age_days.
JSONLOG_FILENAME = "postgresql-%Y%m%d-%H%M%S.log"  # the jsonlog file takes .json in place of .log
JSONLOG_GLOB = "postgresql-*.json"


def _logging(config: StackConfig, layout: StateLayout, collector: bool) -> str:
    if collector and config.logs.format == "json":
        # jsonlog needs the collector: one JSON object per line in files of PostgreSQL's own; the supervisor's
        # postgres.log keeps only what is written before the collector starts.
        return f"""\
logging_collector = on
log_destination = 'jsonlog'
log_directory = '{layout.postgres_logs}'
log_filename = '{JSONLOG_FILENAME}'
log_file_mode = 0600
log_rotation_size = {config.logs.rotation.max_size_mb}MB
log_rotation_age = 0
"""
    # Compose and text: stderr, captured by the supervisor (<state>/log/postgres.log) or the container runtime.
    return "logging_collector = off\n"


def postgresql_conf(config: StackConfig, layout: StateLayout, listen: str = "127.0.0.1",
                    collector: bool = False) -> RenderedFile:
    """``collector``: PostgreSQL writes its own log files (jsonlog with logs.format json), as on the local target;
    else stderr, which the supervisor or the container runtime captures."""
    pg = config.postgres
    if config.backups.physical.enabled:
        from infra.render.pgbackrest import archive_command

        # Every WAL segment goes to the physical repository; archive_timeout bounds the data-loss window.
        archive = (f"archive_mode = on\narchive_command = '{archive_command(layout)}'\n"
                   "archive_timeout = 60\n")
    else:
        archive = "archive_mode = off\n"
    text = f"""\
# Rendered by prefect-stack from the configuration model; edit the model, not this file.
data_directory = '{layout.postgres_data}'
hba_file = '{layout.etc / "pg_hba.conf"}'
ident_file = '{layout.etc / "pg_ident.conf"}'
listen_addresses = '{listen}'
port = {pg.port}
unix_socket_directories = '{layout.run}'
unix_socket_permissions = 0700
max_connections = {pg.max_connections}
shared_buffers = {pg.shared_buffers}
password_encryption = scram-sha-256
# Prefect's searches use trigram indexes; the extension is created by deploy (pg_trgm).
# WAL settings ready for physical backups and point-in-time recovery (pgBackRest).
wal_level = replica
max_wal_senders = 4
{archive}{_logging(config, layout, collector)}log_min_messages = {LOG_MIN_MESSAGES[config.logs.levels.postgres]}
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 5000
log_connections = off
log_disconnections = off
"""
    return RenderedFile(layout.etc / "postgresql.conf", text)


def pg_hba_conf(config: StackConfig, layout: StateLayout,
                client_networks: tuple[str, ...] = ("127.0.0.1/32", "::1/128")) -> RenderedFile:
    tcp = "".join(f"host    all       all       {network:<14} scram-sha-256\n" for network in client_networks)
    text = """\
# Rendered by prefect-stack. Unix socket: the operating-system users mapped in pg_ident.conf (the operator and
# the service user) may act as the superuser without a password, so a lost password never locks out an admin.
# TCP: passwords only, SCRAM only.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer map=admins
local   all       all                      scram-sha-256
""" + tcp
    return RenderedFile(layout.etc / "pg_hba.conf", text)


def pg_ident_conf(admin_os_users: list[str], layout: StateLayout) -> RenderedFile:
    lines = ["# Rendered by prefect-stack: operating-system users allowed to connect as the 'postgres' superuser."]
    lines += [f"admins  {user}  postgres" for user in sorted(set(admin_os_users))]
    return RenderedFile(layout.etc / "pg_ident.conf", "\n".join(lines) + "\n")
