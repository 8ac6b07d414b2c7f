"""Environment of the Prefect processes: API replicas, background services and the migration step.

The settings that make several processes one highly available server:
- Redis for the messaging broker and cache, causal ordering, concurrency lease storage and Docket; without
  them each process keeps its own in-memory copy and they disagree;
- migrations and block registration happen once, before any replica starts (replicas do neither), which
  removes the start-up race on a fresh database;
- PgBouncer in transaction mode forbids server-side prepared-statement caches.
"""

from __future__ import annotations

from infra.config import StackConfig
from infra.layout import TRUSTED_CA, StateLayout
from infra.render import Addresses
from infra.render.pgbouncer import SESSION_POOL_SUFFIX
from infra.render.prefect_logging import logging_environment
from infra.render.redis import DOCKET_DB, MESSAGING_DB
from infra.secrets import Secrets

# Prefect's shared state in Redis (prefect-redis), the same for every target and every Redis topology.
REDIS_BACKENDS = {
    "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
}


def _common(config: StackConfig, secrets: Secrets, layout: StateLayout, addresses: Addresses) -> dict[str, str]:
    redis_password = secrets.get("redis")
    env = {
        "PREFECT_HOME": str(layout.prefect_home),
        "HOME": str(layout.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_AUTH_STRING": secrets.get("prefect_auth"),
        # Processes that call the API themselves go through the load balancer with the same credentials.
        "PREFECT_API_URL": config.api_url,
        "PREFECT_API_AUTH_STRING": secrets.get("prefect_auth"),
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
        **REDIS_BACKENDS,
        "PREFECT_SERVER_DOCKET_URL": f"redis://:{redis_password}@{addresses.redis}:{config.redis.port}/{DOCKET_DB}",
        "PREFECT_REDIS_MESSAGING_HOST": addresses.redis,
        "PREFECT_REDIS_MESSAGING_PORT": str(config.redis.port),
        "PREFECT_REDIS_MESSAGING_DB": str(MESSAGING_DB),
        "PREFECT_REDIS_MESSAGING_PASSWORD": redis_password,
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": config.services.events_retention,
        # Longer than Prefect's 10 s: a database stalled for a while delays requests instead of failing them.
        "PREFECT_SERVER_DATABASE_TIMEOUT": str(config.api.db_timeout_s),
    }
    env.update(_levels(config.logs.levels.api))
    # The stack's JSON lines (logs.format); each target adds the process's component name.
    env.update(logging_environment(config, layout.etc))
    if config.tls_enabled:
        # The load balancer's certificate is signed by the deployment's CA (or is the operator's): trust exactly it.
        env["PREFECT_API_SSL_CERT_FILE"] = str(layout.etc / TRUSTED_CA)
    return env


def _levels(level: str) -> dict[str, str]:
    return {"PREFECT_SERVER_LOGGING_LEVEL": level, "PREFECT_LOGGING_LEVEL": level}


def _database_url(config: StackConfig, secrets: Secrets, host: str, port: int, database: str) -> str:
    user, password = config.postgres.user, secrets.get("postgres_prefect")
    return f"postgresql+asyncpg://{user}:{password}@{host}:{port}/{database}"


def api_environment(
    config: StackConfig, secrets: Secrets, layout: StateLayout, addresses: Addresses
) -> dict[str, str]:
    env = _common(config, secrets, layout, addresses)
    env.update(
        {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": _database_url(
                config, secrets, addresses.pgbouncer, config.pgbouncer.port, config.postgres.database
            ),
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_STATEMENT_CACHE_SIZE": "0",
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_PREPARED_STATEMENT_CACHE_SIZE": "0",
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": str(config.api.db_pool_size),
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": str(config.api.db_max_overflow),
            "PREFECT_SERVER_METRICS_ENABLED": "true",
            "PREFECT_SERVER_UI_API_URL": config.public_api_url,
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            # The UI is copied and rewritten with the API URL at start; site-packages is not writable by
            # the service user, so the copy goes below the state directory.
            "PREFECT_SERVER_UI_STATIC_DIRECTORY": str(layout.prefect_home / "ui"),
            "PREFECT_SERVER_API_KEEPALIVE_TIMEOUT": str(config.api.keepalive_timeout),
        }
    )
    return env


def services_environment(
    config: StackConfig, secrets: Secrets, layout: StateLayout, addresses: Addresses
) -> dict[str, str]:
    env = _common(config, secrets, layout, addresses)
    env.update(_levels(config.logs.levels.services))
    # Session pool: the triggers service LISTENs for automation changes on this connection.
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = _database_url(
        config, secrets, addresses.pgbouncer, config.pgbouncer.port, config.postgres.database + SESSION_POOL_SUFFIX
    )
    return env


def migration_environment(
    config: StackConfig, secrets: Secrets, layout: StateLayout, addresses: Addresses
) -> dict[str, str]:
    env = _common(config, secrets, layout, addresses)
    # Straight to PostgreSQL: DDL and alembic's version bookkeeping want one plain session.
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = _database_url(
        config, secrets, addresses.postgres, config.postgres.port, config.postgres.database
    )
    env["PREFECT_SERVER_DATABASE_TIMEOUT"] = "120"
    return env
