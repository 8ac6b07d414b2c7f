"""The monitoring programs (Prometheus, Alertmanager, the exporters) with the files each one reads: the local target
supervises them, the compose target runs the same programs in containers."""

from __future__ import annotations

import json
from pathlib import Path

from infra.config import REPO_ROOT, StackConfig
from infra.executables import binary, venv_python
from infra.exporter.event_streams import STREAMS
from infra.layout import StateLayout
from infra.render import Addresses, RenderedFile
from infra.render.alert_rules import alert_rules_yml
from infra.render.alertmanager import alertmanager_yml
from infra.render.postgres import MONITOR_ROLE
from infra.render.prometheus import RULES_FILE, SCRAPE_PASSWORD_FILE, prometheus_yml
from infra.render.redis import MESSAGING_DB, MONITOR_USER
from infra.render.supervisor import Program
from infra.secrets import Secrets

EXPORTER_POSTGRES_PASSWORD = "exporter-postgres-password"  # noqa: S105 - a file name
EXPORTER_REDIS_PASSWORD = "exporter-redis-password"  # noqa: S105 - a file name
# logs.levels.monitoring on Prometheus's and Alertmanager's scale (--log.level), which stops at error.
PROMETHEUS_LOG_LEVEL = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "error"}


def monitoring_programs(
    config: StackConfig, secrets: Secrets, layout: StateLayout, addresses: Addresses, python: str | None = None,
    repo_root: Path = REPO_ROOT,
) -> list[Program]:
    """Prometheus, Alertmanager, node_exporter and the exporters, each with its own data directory. The compose
    target runs the same programs in containers: ``python`` and ``repo_root`` are then the image's."""
    python = python or str(venv_python())
    monitoring, etc = config.monitoring, layout.etc
    redis_url = f"redis://{addresses.redis}:{config.redis.port}"
    prometheus_files = (
        prometheus_yml(config, addresses, etc),
        RenderedFile(etc / RULES_FILE, alert_rules_yml(config)),
        # Prometheus's own credential at HAProxy's metrics listener; never the API admin's.
        RenderedFile(etc / SCRAPE_PASSWORD_FILE, secrets.get("prometheus_scrape"), secret=True),
    )
    return [
        Program(
            name="prometheus",
            component="prometheus",
            command=(binary("prometheus", "/usr/bin/prometheus"), f"--config.file={etc / 'prometheus.yml'}",
                     f"--storage.tsdb.path={layout.prometheus_data}",
                     f"--storage.tsdb.retention.time={monitoring.retention}",
                     f"--web.listen-address={addresses.bind(addresses.prometheus)}:{monitoring.prometheus_port}",
                     f"--log.level={PROMETHEUS_LOG_LEVEL[config.logs.levels.monitoring]}"),
            files=prometheus_files,
            port=monitoring.prometheus_port,
        ),
        Program(
            name="alertmanager",
            component="alertmanager",
            command=(binary("prometheus-alertmanager", "/usr/bin/prometheus-alertmanager"),
                     f"--config.file={etc / 'alertmanager.yml'}", f"--storage.path={layout.alertmanager_data}",
                     f"--web.listen-address={addresses.bind(addresses.alertmanager)}:{monitoring.alertmanager_port}",
                     # An empty address turns off gossip clustering, which would otherwise listen on *:9094.
                     "--cluster.listen-address=", f"--log.level={PROMETHEUS_LOG_LEVEL[config.logs.levels.monitoring]}"),
            files=(alertmanager_yml(config, etc, layout.secrets),),
            port=monitoring.alertmanager_port,
        ),
        Program(
            name="node-exporter",
            component="node-exporter",
            command=(binary("prometheus-node-exporter", "/usr/bin/prometheus-node-exporter"),
                     f"--web.listen-address={addresses.bind(addresses.node_exporter)}:{monitoring.node_exporter_port}",
                     # The backup scheduler's metrics (last verified backup, failures) are textfiles here.
                     f"--collector.textfile.directory={layout.metrics}"),
            port=monitoring.node_exporter_port,
        ),
        Program(
            name="postgres-exporter",
            component="postgres-exporter",
            command=(binary("prometheus-postgres-exporter", "/usr/bin/prometheus-postgres-exporter"),
                     f"--web.listen-address={addresses.bind(addresses.exporter('postgres'))}:{monitoring.postgres_exporter_port}"),
            # The password stays in a file: the environment carries only where and who.
            environment={
                "DATA_SOURCE_URI": f"{addresses.postgres}:{config.postgres.port}/{config.postgres.database}"
                                   "?sslmode=disable",
                "DATA_SOURCE_USER": MONITOR_ROLE,
                "DATA_SOURCE_PASS_FILE": str(etc / EXPORTER_POSTGRES_PASSWORD),
            },
            files=(RenderedFile(etc / EXPORTER_POSTGRES_PASSWORD, secrets.get("postgres_monitor"), secret=True),),
            port=monitoring.postgres_exporter_port,
        ),
        Program(
            name="redis-exporter",
            component="redis-exporter",
            command=(binary("prometheus-redis-exporter", "/usr/bin/prometheus-redis-exporter"),
                     f"-redis.addr={redis_url}", f"-redis.user={MONITOR_USER}",
                     f"-redis.password-file={etc / 'exporter-redis-passwords.json'}",
                     f"-web.listen-address={addresses.bind(addresses.exporter('redis'))}:{monitoring.redis_exporter_port}",
                     "-check-single-streams=" + ",".join(f"db{MESSAGING_DB}={s}" for s in STREAMS)),
            files=(RenderedFile(etc / "exporter-redis-passwords.json",
                                json.dumps({redis_url: secrets.get("redis_monitor")}), secret=True),),
            port=monitoring.redis_exporter_port,
        ),
        Program(
            name="prefect-exporter",
            component="prefect-exporter",
            command=(python, "-m", "infra.exporter.server",
                     f"--listen={addresses.bind(addresses.exporter('prefect'))}:{monitoring.prefect_exporter_port}",
                     f"--postgres={addresses.postgres}:{config.postgres.port}/{config.postgres.database}",
                     f"--pgbouncer={addresses.pgbouncer}:{config.pgbouncer.port}",
                     f"--redis={addresses.redis}:{config.redis.port}",
                     f"--postgres-password-file={etc / EXPORTER_POSTGRES_PASSWORD}",
                     f"--redis-password-file={etc / EXPORTER_REDIS_PASSWORD}",
                     f"--finished-runs-window={monitoring.finished_runs_window_s}"),
            environment={"PYTHONPATH": str(repo_root)},
            files=(RenderedFile(etc / EXPORTER_POSTGRES_PASSWORD, secrets.get("postgres_monitor"), secret=True),
                   RenderedFile(etc / EXPORTER_REDIS_PASSWORD, secrets.get("redis_monitor"), secret=True)),
            port=monitoring.prefect_exporter_port,
        ),
    ]
