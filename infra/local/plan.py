"""What the local target runs: the supervised programs, in start order, and the files each one reads."""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from infra.config import REPO_ROOT, StackConfig
from infra.errors import UserError
from infra.executables import binary, venv_bin, venv_python
from infra.layout import TRUSTED_CA, StateLayout
from infra.local.tls import ensure_loopback_certificate
from infra.local.workers import worker_programs
from infra.render import Addresses, RenderedFile
from infra.render.dashboards import dashboards, grafana_provisioning
from infra.render.effective_config import effective_config_file
from infra.render.haproxy import OPERATOR_TLS_PEM, TLS_PEM, haproxy_cfg, maintenance_map
from infra.render.monitoring import monitoring_programs
from infra.render.pgbackrest import pgbackrest_conf
from infra.render.pgbouncer import pgbouncer_ini, pgbouncer_userlist
from infra.render.postgres import pg_hba_conf, pg_ident_conf, postgresql_conf
from infra.render.prefect import api_environment, migration_environment, services_environment
from infra.render.prefect_logging import component_environment, logging_files
from infra.render.redis import redis_conf
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


API_SERVER = "infra.logs.api_server"  # an API replica's program (python -m)


def service_user(config: StackConfig) -> str | None:
    """The unprivileged user processes run as: the configured one as root, else whoever runs deploy."""
    return config.local.run_as if os.geteuid() == 0 else None


def os_user_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


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


def build_plan(config: StackConfig, secrets: Secrets, addresses: Addresses | None = None) -> LocalPlan:
    addresses = addresses or Addresses()
    layout = StateLayout(config.state_dir)
    run_as = service_user(config)
    etc = layout.etc
    postgres_files = (
        postgresql_conf(config, layout, collector=True),
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
            command=(binary("pgbouncer", "/usr/sbin/pgbouncer"), str(etc / "pgbouncer.ini")),
            files=(pgbouncer_ini(config, layout, addresses), pgbouncer_userlist(config, secrets, layout)),
            port=config.pgbouncer.port,
            stop_signal="INT",  # safe shutdown: wait for clients' transactions to finish
            # ...but not for the services' session connection (LISTEN), which is never released: the API would
            # wait on a paused PgBouncer until supervisord's kill (measured: 32 s with the default 30).
            stop_wait_s=5,
        ),
        Program(
            name="redis",
            component="redis",
            command=(binary("redis-server", "/usr/bin/redis-server"), str(etc / "redis.conf")),
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
    prefect_logging = logging_files(config, layout)
    for i in range(1, config.api.replicas + 1):
        port = config.api_port(i)
        programs.append(
            Program(
                name=f"api-{i}",
                component="api",
                # `prefect server start --no-services` with the request-id layer around Prefect's app.
                command=traced(config, (str(venv_python()), "-m", API_SERVER, "--host", "127.0.0.1",
                                        "--port", str(port))),
                environment={**api_env, **server_tracing_environment(config, "prefect-api", f"api-{i}"),
                             **component_environment(f"api-{i}"), "PYTHONPATH": str(REPO_ROOT)},
                files=prefect_logging,
                port=port,
                start_secs=5,
            )
        )
    services_env = services_environment(config, secrets, layout, addresses)
    for i in range(1, config.services_replicas + 1):
        programs.append(
            Program(
                name=f"services-{i}",
                component="services",
                command=traced(config, (prefect, "server", "services", "start")),
                environment={**services_env, **server_tracing_environment(config, "prefect-services",
                                                                          f"services-{i}"),
                             **component_environment(f"services-{i}")},
                files=prefect_logging,
                start_secs=5,
            )
        )
    haproxy_files = [haproxy_cfg(config, secrets, layout, addresses), maintenance_map(layout)]
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
            command=(binary("haproxy", "/usr/sbin/haproxy"), "-W", "-db", "-f", str(etc / "haproxy.cfg")),
            files=tuple(haproxy_files),
            port=config.load_balancer.port,
            stop_signal="USR1",  # soft stop: finish in-flight requests
        )
    )
    # After the API and the load balancer they reach it through (deploy provisions their pools in between).
    programs += worker_programs(config, secrets, layout)
    if config.monitoring.enabled:
        programs += monitoring_programs(config, secrets, layout, addresses)
        extra_files += grafana_files(config, layout, addresses)
    rotation = config.logs.rotation
    programs.append(
        Program(
            name="log-pruner",
            component="log-pruner",
            # supervisord rotates by size and count only: this removes rotated files past the age limit, and
            # PostgreSQL's collector files past the count. As the operator, who owns supervisord's files.
            command=(str(venv_python()), "-m", "infra.logs.prune", "--dir", str(layout.logs),
                     "--max-age-days", str(rotation.max_age_days), "--keep", str(rotation.keep)),
            environment={"PYTHONPATH": str(REPO_ROOT)},
            as_operator=True,
        )
    )
    return LocalPlan(
        config=config,
        layout=layout,
        programs=tuple(programs),
        supervisor_conf=supervisord_conf(programs, layout, run_as, config.logs.rotation),
        migration_env={**migration_environment(config, secrets, layout, addresses),
                       **component_environment("migrate")},
        run_as=run_as,
        extra_files=extra_files,
    )
