"""What the local target runs: the supervised programs, in start order, and the files each one reads."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.config import REPO_ROOT, StackConfig
from infra.errors import UserError
from infra.exporter.event_streams import STREAMS
from infra.layout import StateLayout
from infra.local.tls import ensure_loopback_certificate
from infra.render import Addresses, RenderedFile
from infra.render.alert_rules import alert_rules_yml
from infra.render.alertmanager import alertmanager_yml
from infra.render.dashboards import dashboards, grafana_provisioning
from infra.render.haproxy import OPERATOR_TLS_PEM, TLS_PEM, TRUSTED_CA, haproxy_cfg
from infra.render.pgbackrest import pgbackrest_conf
from infra.render.pgbouncer import pgbouncer_ini, pgbouncer_userlist
from infra.render.postgres import MONITOR_ROLE, pg_hba_conf, pg_ident_conf, postgresql_conf
from infra.render.prefect import api_environment, migration_environment, services_environment
from infra.render.prometheus import API_PASSWORD_FILE, RULES_FILE, prometheus_yml
from infra.render.redis import MESSAGING_DB, MONITOR_USER, redis_conf
from infra.render.supervisor import Program, supervisord_conf
from infra.render.tracing import server_tracing_environment
from infra.secrets import Secrets
from infra.tls import load_balancer_tls


@dataclass(frozen=True)
class LocalPlan:
    config: StackConfig
    layout: StateLayout
    programs: tuple[Program, ...]
    supervisor_conf: RenderedFile
    migration_env: dict[str, str]
    run_as: str | None  # None: run as the invoking (non-root) user
    # Files no program's fingerprint depends on (read afresh by their consumer, or by Prometheus).
    extra_files: tuple[RenderedFile, ...] = ()

    @property
    def files(self) -> list[RenderedFile]:
        seen: dict[Path, RenderedFile] = {}
        for program in self.programs:
            for rendered in program.files:
                seen[rendered.path] = rendered
        return [*seen.values(), *self.extra_files, self.supervisor_conf]

    def program(self, name: str) -> Program:
        for program in self.programs:
            if program.name == name:
                return program
        raise UserError(
            f"no component named {name!r}",
            fix=f"choose one of: {', '.join(p.name for p in self.programs)}",
        )

    def by_component(self, component: str) -> list[Program]:
        return [p for p in self.programs if p.component == component]


def service_user(config: StackConfig) -> str | None:
    """The unprivileged user processes run as: the configured one as root, else whoever runs deploy."""
    return config.local.run_as if os.geteuid() == 0 else None


def os_user_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _binary(name: str, *candidates: str) -> str:
    for candidate in candidates:
        if Path(candidate).is_file():
            return candidate
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} is not installed", fix="run scripts/bootstrap.sh to install the stack's packages")
    return found


def trusted_ca_file(config: StackConfig) -> Path | None:
    """The certificate HTTPS clients of the load balancer trust (rendered by deploy), or None when TLS is off."""
    return StateLayout(config.state_dir).etc / TRUSTED_CA if config.tls_enabled else None


def venv_bin() -> Path:
    """The interpreter running the tasks is the one with Prefect installed (bootstrap's .venv)."""
    return Path(sys.executable).parent


def venv_python() -> Path:
    """The venv's interpreter under one stable name: ``sys.executable`` is python or python3 depending on how the
    task was started, and a rendered command must not change with it (that would restart the program)."""
    return venv_bin() / "python"


def effective_config_file(config: StackConfig, layout: StateLayout) -> RenderedFile:
    """The configuration this deploy applied, for processes that need it later (the backup scheduler)."""
    document = config.model_dump(mode="json")
    document["local"]["state_dir"] = str(config.state_dir)
    text = "# Rendered by prefect-stack: the effective configuration of the last deploy.\n"
    return RenderedFile(layout.etc / "stack.effective.yaml", text + yaml.safe_dump(document, sort_keys=False))


EXPORTER_POSTGRES_PASSWORD = "exporter-postgres-password"  # noqa: S105 - a file name
EXPORTER_REDIS_PASSWORD = "exporter-redis-password"  # noqa: S105 - a file name


def traced(config: StackConfig, command: tuple[str, ...]) -> tuple[str, ...]:
    """The unchanged Prefect command, run under opentelemetry-instrument when tracing is on."""
    if not config.tracing.enabled:
        return command
    return (str(venv_bin() / "opentelemetry-instrument"), *command)


def grafana_files(config: StackConfig, layout: StateLayout, addresses: Addresses) -> tuple[RenderedFile, ...]:
    """Dashboards and provisioning for any Grafana to mount (Grafana itself is not packaged for this host):
    <state>/etc/grafana/provisioning is Grafana's provisioning directory, <state>/etc/grafana/dashboards the JSON."""
    grafana = layout.etc / "grafana"
    prometheus = f"http://{addresses.prometheus}:{config.monitoring.prometheus_port}"
    files = [RenderedFile(grafana / "dashboards" / name, json.dumps(model, indent=2) + "\n")
             for name, model in dashboards(config).items()]
    for relative, text in grafana_provisioning(config, prometheus, None, str(grafana / "dashboards")).items():
        files.append(RenderedFile(grafana / "provisioning" / relative, text))
    return tuple(files)


def monitoring_programs(
    config: StackConfig, secrets: Secrets, layout: StateLayout, addresses: Addresses, python: str | None = None,
    repo_root: Path = REPO_ROOT,
) -> list[Program]:
    """Prometheus, Alertmanager, node_exporter and the exporters, each with its own data directory. The compose
    target runs the same programs in containers: ``python`` and ``repo_root`` are then the image's."""
    python = python or str(venv_python())
    monitoring, etc = config.monitoring, layout.etc
    redis_url = f"redis://{addresses.redis}:{config.redis.port}"
    password = secrets.get("prefect_auth").partition(":")[2]
    prometheus_files = (
        prometheus_yml(config, addresses, etc),
        RenderedFile(etc / RULES_FILE, alert_rules_yml(config)),
        RenderedFile(etc / API_PASSWORD_FILE, password, secret=True),
    )
    return [
        Program(
            name="prometheus",
            component="prometheus",
            command=(_binary("prometheus", "/usr/bin/prometheus"), f"--config.file={etc / 'prometheus.yml'}",
                     f"--storage.tsdb.path={layout.prometheus_data}",
                     f"--storage.tsdb.retention.time={monitoring.retention}",
                     f"--web.listen-address={addresses.bind(addresses.prometheus)}:{monitoring.prometheus_port}"),
            files=prometheus_files,
            port=monitoring.prometheus_port,
        ),
        Program(
            name="alertmanager",
            component="alertmanager",
            command=(_binary("prometheus-alertmanager", "/usr/bin/prometheus-alertmanager"),
                     f"--config.file={etc / 'alertmanager.yml'}", f"--storage.path={layout.alertmanager_data}",
                     f"--web.listen-address={addresses.bind(addresses.alertmanager)}:{monitoring.alertmanager_port}",
                     # An empty address turns off gossip clustering, which would otherwise listen on *:9094.
                     "--cluster.listen-address="),
            files=(alertmanager_yml(config, etc, layout.secrets),),
            port=monitoring.alertmanager_port,
        ),
        Program(
            name="node-exporter",
            component="node-exporter",
            command=(_binary("prometheus-node-exporter", "/usr/bin/prometheus-node-exporter"),
                     f"--web.listen-address={addresses.bind(addresses.node_exporter)}:{monitoring.node_exporter_port}",
                     # The backup scheduler's metrics (last verified backup, failures) are textfiles here.
                     f"--collector.textfile.directory={layout.metrics}"),
            port=monitoring.node_exporter_port,
        ),
        Program(
            name="postgres-exporter",
            component="postgres-exporter",
            command=(_binary("prometheus-postgres-exporter", "/usr/bin/prometheus-postgres-exporter"),
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
            command=(_binary("prometheus-redis-exporter", "/usr/bin/prometheus-redis-exporter"),
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


def build_plan(config: StackConfig, secrets: Secrets, addresses: Addresses | None = None) -> LocalPlan:
    addresses = addresses or Addresses()
    layout = StateLayout(config.state_dir)
    run_as = service_user(config)
    etc = layout.etc
    postgres_files = (
        postgresql_conf(config, layout),
        pg_hba_conf(config, layout),
        pg_ident_conf([os_user_name(), *([run_as] if run_as else [])], layout),
    )
    prefect = str(venv_bin() / "prefect")
    programs: list[Program] = [
        Program(
            name="postgres",
            component="postgres",
            command=(str(config.postgres.bin_dir / "postgres"), "-c", f"config_file={etc / 'postgresql.conf'}"),
            files=postgres_files,
            port=config.postgres.port,
            stop_signal="INT",  # fast shutdown: roll back open transactions, checkpoint, exit
            stop_wait_s=120,
            start_secs=3,
        ),
        Program(
            name="pgbouncer",
            component="pgbouncer",
            command=(_binary("pgbouncer", "/usr/sbin/pgbouncer"), str(etc / "pgbouncer.ini")),
            files=(pgbouncer_ini(config, layout, addresses), pgbouncer_userlist(config, secrets, layout)),
            port=config.pgbouncer.port,
            stop_signal="INT",  # safe shutdown: wait for clients' transactions to finish
        ),
        Program(
            name="redis",
            component="redis",
            command=(_binary("redis-server", "/usr/bin/redis-server"), str(etc / "redis.conf")),
            files=(redis_conf(config, secrets, layout),),
            port=config.redis.port,
        ),
    ]
    if config.backups.s3.endpoint_url is None:
        # The local S3-compatible endpoint for backups (moto): offline by default, real S3 by configuration.
        programs.append(
            Program(
                name="s3",
                component="s3",
                command=(str(venv_bin() / "moto_server"), "-H", "127.0.0.1", "-p", str(config.backups.s3.local_port)),
                port=config.backups.s3.local_port,
                environment={"HOME": str(layout.prefect_home)},
            )
        )
    effective = effective_config_file(config, layout)
    extra_files: tuple[RenderedFile, ...] = (effective,)
    if config.backups.schedule_enabled:
        programs.append(
            Program(
                name="backup-scheduler",
                component="backup-scheduler",
                command=(str(venv_python()), "-m", "infra.backup.scheduler"),
                # The scheduler re-reads the effective configuration before each run: a configuration change
                # never restarts it, so a deploy cannot cut a nightly backup short.
                environment={"PREFECT_STACK_CONFIG": str(effective.path), "PYTHONPATH": str(REPO_ROOT)},
                as_operator=True,
                stop_wait_s=6 * 3600,  # SIGTERM lets a running backup and its verification finish first
            )
        )
    api_env = api_environment(config, secrets, layout, addresses)
    for i in range(1, config.api.replicas + 1):
        port = config.api_port(i)
        programs.append(
            Program(
                name=f"api-{i}",
                component="api",
                command=traced(config, (prefect, "server", "start", "--no-services", "--host", "127.0.0.1",
                                        "--port", str(port))),
                environment={**api_env, **server_tracing_environment(config, "prefect-api", f"api-{i}")},
                port=port,
                start_secs=5,
            )
        )
    services_env = services_environment(config, secrets, layout, addresses)
    for i in range(1, config.services.replicas + 1):
        programs.append(
            Program(
                name=f"services-{i}",
                component="services",
                command=traced(config, (prefect, "server", "services", "start")),
                environment={**services_env, **server_tracing_environment(config, "prefect-services",
                                                                          f"services-{i}")},
                start_secs=5,
            )
        )
    haproxy_files = [haproxy_cfg(config, secrets, layout, addresses)]
    if config.tls_enabled:
        lb_tls = load_balancer_tls(config, layout.secrets)
        haproxy_files.append(RenderedFile(etc / TLS_PEM, lb_tls.pem_bundle, secret=True))
        if lb_tls.operator is not None:
            haproxy_files.append(RenderedFile(etc / OPERATOR_TLS_PEM, lb_tls.operator.pem_bundle, secret=True))
        # Read by every HTTPS client of the load balancer, the stack's own processes included (not a secret).
        extra_files += (RenderedFile(etc / TRUSTED_CA, lb_tls.trusted),)
    if config.backups.physical.enabled:
        extra_files += (pgbackrest_conf(config, secrets, layout),)
        if config.backups.s3.endpoint_url is None:
            certificate, key = ensure_loopback_certificate(layout.secrets)
            haproxy_files.append(RenderedFile(etc / "s3-tls.pem", certificate + key, secret=True))
            extra_files += (RenderedFile(etc / "s3-tls.crt", certificate),)
    programs.append(
        Program(
            name="haproxy",
            component="haproxy",
            command=(_binary("haproxy", "/usr/sbin/haproxy"), "-W", "-db", "-f", str(etc / "haproxy.cfg")),
            files=tuple(haproxy_files),
            port=config.load_balancer.port,
            stop_signal="USR1",  # soft stop: finish in-flight requests
        )
    )
    if config.monitoring.enabled:
        programs += monitoring_programs(config, secrets, layout, addresses)
        extra_files += grafana_files(config, layout, addresses)
    return LocalPlan(
        config=config,
        layout=layout,
        programs=tuple(programs),
        supervisor_conf=supervisord_conf(programs, layout, run_as),
        migration_env=migration_environment(config, secrets, layout, addresses),
        run_as=run_as,
        extra_files=extra_files,
    )
