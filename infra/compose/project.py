"""The compose project: the compose file and every file its containers read, rendered from the one model.

Every configuration file comes from the same renderers as the local target (``infra/render``), with compose
service names as addresses and the container layout as paths. What holds a credential (redis.conf, the
PgBouncer user list, haproxy.cfg, Prefect's environment, password files) is a compose *secret*: a file mounted
into the containers that need it, never a value in the compose file or in a container's environment listing.
Everything else is a compose *config*.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import yaml
from pydantic import SecretStr

from infra.config import CONFIG_FILE_ENV, IN_CONTAINER_ENV, StackConfig, WorkersConfig, cpu_cores
from infra.containers import images
from infra.layout import TRUSTED_CA, StateLayout
from infra.render import Addresses, RenderedFile
from infra.render.dashboards import dashboards, grafana_provisioning
from infra.render.effective_config import effective_config_file
from infra.render.haproxy import OPERATOR_TLS_PEM, TLS_PEM, haproxy_cfg, maintenance_map
from infra.render.jaeger import JAEGER_DATA_DIR, JAEGER_OTLP_HTTP, JAEGER_UI, jaeger_needs_volume, jaeger_yaml
from infra.render.loki import LOKI_DATA_DIR, LOKI_HTTP, loki_otlp_logs_url, loki_yaml
from infra.render.monitoring import monitoring_programs
from infra.render.pgbouncer import pgbouncer_ini, pgbouncer_userlist
from infra.render.postgres import pg_hba_conf, pg_ident_conf, postgresql_conf
from infra.render.prefect import api_environment, migration_environment, services_environment
from infra.render.prefect_logging import component_environment, logging_environment, logging_files
from infra.render.redis import redis_conf
from infra.render.tracing import server_tracing_environment
from infra.render.workers import CONTAINER_FLOW_CODE_DIR, worker_command, worker_settings
from infra.scripts import script
from infra.secrets import BACKUP_SECRETS, SECRET_NAMES, Secrets
from infra.tls import LoadBalancerTls

# The container layout, created by the images (compose/images/system/Dockerfile): one unprivileged user, the
# same directory tree as a local state directory, the project's venv and code under /opt/prefect-stack.
CONTAINER_ROOT = Path(str(images.APP_ROOT))
CONTAINER = StateLayout(CONTAINER_ROOT)
CONTAINER_UID = images.APP_UID
APP_ROOT = images.APP_HOME
VENV_BIN = APP_ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
PG_BIN = PurePosixPath("/usr/lib/postgresql/15/bin")
SECRETS_IN_CONTAINER = PurePosixPath("/run/secrets")
LABEL_FILES = "io.prefect-stack.files"  # hash of the files a service mounts: a change recreates the service
LABEL_COMPONENT = "io.prefect-stack.component"

BACKEND, FRONTEND = "backend", "frontend"
LOOPBACK = "127.0.0.1"
MIGRATE = "migrate"
BACKUP_SCHEDULER = "backup-scheduler"
GRAFANA_PORT = 3000
# The one-shot migration creates the roles with their passwords, as the superuser: it needs these and no others.
MIGRATION_SECRETS = ("postgres_superuser", "postgres_prefect", "postgres_monitor")

# Hardening, as on Kubernetes (infra/kubernetes/objects.py, container_security_context), on every service: no
# capability (every process runs as an unprivileged user, the project's or the upstream image's own, and none was
# found to need one: PostgreSQL's start script chowns nothing, the data directories are the user's in the images),
# no privilege gained through setuid binaries or file capabilities, and a read-only root filesystem: a process
# writes only to its volumes and to the tmpfs mounts below, which hold nothing that must survive a restart.
TMP = PurePosixPath("/tmp")  # noqa: S108 - a tmpfs of the container's own
# Every tmpfs is bounded: its pages count against the container's memory limit.
TMPFS_SIZE = "64m"
# Sockets and lock files: PostgreSQL's and PgBouncer's Unix sockets, HAProxy's admin socket, the backup lock.
RUN_DIR = CONTAINER.run
# HOME and PREFECT_HOME of the Prefect processes: the API rewrites its UI (about 17 MB) there at every start.
HOME_DIR = CONTAINER.prefect_home
# Workers run flow code, which is not ours: a fork bomb or a thread leak stops at this many tasks (threads count)
# instead of taking the host's process table.
WORKER_PIDS_LIMIT = 4096
# Where a docker pool's worker finds the engine (the engine's own socket is mounted here).
DOCKER_SOCKET = PurePosixPath("/var/run/docker.sock")


@dataclass(frozen=True)
class DockerSocket:
    """The Docker engine's Unix socket on the host and its group: docker pools' workers mount the socket, and
    their (unprivileged) user joins that group to use it."""

    path: PurePosixPath | Path = DOCKER_SOCKET
    gid: int | None = None


class Images(Protocol):
    """The project's image references (``infra.containers.images.ImageRefs``)."""

    @property
    def system(self) -> str: ...

    @property
    def prefect(self) -> str: ...


def compose_addresses(config: StackConfig) -> Addresses:
    """Service names as addresses; every server binds all interfaces of its container."""
    return Addresses(
        postgres="postgres", pgbouncer="pgbouncer", redis="redis",
        api=tuple(f"api-{i}" for i in range(1, config.api.replicas + 1)),
        load_balancer="haproxy", prometheus="prometheus", alertmanager="alertmanager",
        node_exporter="node-exporter", exporters="prefect-exporter",
        postgres_exporter="postgres-exporter", redis_exporter="redis-exporter", prefect_exporter="prefect-exporter",
        listen="0.0.0.0",  # noqa: S104 - inside a container; the compose networks are the boundary
        # Any address of the stack's own networks: "samenet" is every subnet the server's interfaces are on.
        client_networks=("samenet",),
        dns_resolver="127.0.0.11:53",  # Docker's embedded DNS, in every container on a user-defined network
    )


@dataclass
class ComposeProject:
    """The rendered project: ``document`` is the compose file; ``files`` are relative to the project directory."""

    name: str
    document: dict[str, Any]
    files: list[RenderedFile] = field(default_factory=list)

    @property
    def compose_yaml(self) -> str:
        header = ("# Rendered by prefect-stack from the configuration model (infra/config.py): edit the model and\n"
                  "# run `invoke deploy --target compose`, not this file.\n")
        return header + yaml.safe_dump(self.document, sort_keys=False, width=120)

    def service_names(self) -> list[str]:
        return list(self.document["services"])


@dataclass
class _Builder:
    config: StackConfig
    secrets: Secrets
    images: Images
    project: ComposeProject
    mounted: dict[str, list[RenderedFile]] = field(default_factory=dict)

    def file(self, service: str, rendered: RenderedFile, target: PurePosixPath | Path | None = None) -> dict[str, str]:
        """Mount one rendered file into ``service`` at ``target`` (default: its path in the container layout)."""
        target = target or rendered.path
        kind = "secrets" if rendered.secret else "config"
        relative = PurePosixPath(str(rendered.path)).relative_to("/").as_posix().replace("/", "__")
        name = relative.removeprefix("var__lib__prefect-stack__etc__").replace("__", "-")
        key = name.replace(".", "_")
        project_path = Path(kind) / name
        top = self.project.document.setdefault("secrets" if rendered.secret else "configs", {})
        top[key] = {"file": f"./{project_path.as_posix()}"}
        if all(f.path != project_path for f in self.project.files):
            self.project.files.append(RenderedFile(project_path, rendered.content, rendered.secret))
        self.mounted.setdefault(service, []).append(rendered)
        return {"source": key, "target": str(target)}

    def secret(self, service: str, name: str, directory: PurePosixPath | Path = SECRETS_IN_CONTAINER) -> dict[str, str]:
        """One generated secret (``infra.secrets``) at <directory>/<name> (default /run/secrets/<name>)."""
        top = self.project.document.setdefault("secrets", {})
        top[name] = {"file": f"./secrets/{name}"}
        project_path = Path("secrets") / name
        if all(f.path != project_path for f in self.project.files):
            self.project.files.append(RenderedFile(project_path, self.secrets.get(name), secret=True))
        self.mounted.setdefault(service, [])
        return {"source": name, "target": str(PurePosixPath(str(directory)) / name)}

    def add(self, name: str, component: str, image: str, command: list[str], *,
            files: tuple[RenderedFile, ...] = (), secrets: tuple[str, ...] = (),
            state_secrets: tuple[str, ...] = (), environment: dict[str, str] | None = None,
            networks: tuple[str, ...] = (BACKEND,),
            ports: tuple[str, ...] = (), volumes: tuple[str | dict[str, Any], ...] = (),
            healthcheck: list[str] | None = None,
            depends_on: dict[str, str] | None = None, memory: str | None = None, stop_signal: str | None = None,
            stop_grace_s: int | None = None, restart: str = "unless-stopped", start_period_s: int = 30,
            cpus: float | None = None,
            user: str | None = f"{CONTAINER_UID}:{CONTAINER_UID}",
            writable: tuple[PurePosixPath | Path, ...] = ()) -> dict[str, Any]:
        """One service. ``user`` None: an upstream image, run as the user it declares. ``writable``: directories
        of the containers' user, on a tmpfs each (the root filesystem is read-only; /tmp is always writable)."""
        mounts_config = [self.file(name, f) for f in files if not f.secret]
        mounts_secret = ([self.file(name, f) for f in files if f.secret] + [self.secret(name, s) for s in secrets]
                         + [self.secret(name, s, CONTAINER.secrets) for s in state_secrets])
        service: dict[str, Any] = {"image": image, "command": command}
        if user:
            service["user"] = user
        # Exactly one init per container, to reap zombies and forward signals to the program: the project's images
        # have tini as their entrypoint (images.INIT_ENTRYPOINT), so Docker's own is off, explicitly (a daemon can
        # default to one); an upstream image's entrypoint is the program itself, so Docker adds its init.
        service["init"] = image not in (self.images.system, self.images.prefect)
        service["cap_drop"] = ["ALL"]
        service["security_opt"] = ["no-new-privileges:true"]
        service["read_only"] = True
        service["tmpfs"] = [f"{TMP}:size={TMPFS_SIZE},mode=1777",
                            *(f"{path}:size={TMPFS_SIZE},mode=0755,uid={CONTAINER_UID},gid={CONTAINER_UID}"
                              for path in writable)]
        if environment:
            service["environment"] = dict(sorted(environment.items()))
        if mounts_config:
            service["configs"] = mounts_config
        if mounts_secret:
            service["secrets"] = mounts_secret
        if volumes:
            service["volumes"] = list(volumes)
        if ports:
            service["ports"] = list(ports)
        service["networks"] = list(networks)
        if depends_on:
            service["depends_on"] = {dep: {"condition": cond} for dep, cond in depends_on.items()}
        if healthcheck:
            service["healthcheck"] = {"test": ["CMD", *healthcheck], "interval": "5s", "timeout": "5s",
                                      "retries": 6, "start_period": f"{start_period_s}s"}
        service["restart"] = restart
        if stop_signal:
            service["stop_signal"] = f"SIG{stop_signal}"
        if stop_grace_s:
            service["stop_grace_period"] = f"{stop_grace_s}s"
        service["deploy"] = {"resources": {"limits": {"cpus": str(cpus or self.config.compose.cpus),
                                                      "memory": memory or self.config.compose.memory}}}
        # Docker's json-file driver rotates by size and keeps a count (logs.rotation); `docker logs` and
        # `invoke logs` read the rotated files too. Age is not a json-file option: the count bounds the disk.
        rotation = self.config.logs.rotation
        service["logging"] = {"driver": "json-file",
                              "options": {"max-size": f"{rotation.max_size_mb}m", "max-file": str(rotation.keep)}}
        service["labels"] = {LABEL_COMPONENT: component}
        self.project.document["services"][name] = service
        for volume in volumes:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith(("/", ".")):
                self.project.document.setdefault("volumes", {})[source] = {}
        return service

    def seal(self, secrets: Secrets) -> None:
        """Label each service with a hash of what it mounts, so changed content recreates it (compose compares
        only the compose file)."""
        for name, service in self.project.document["services"].items():
            digest = hashlib.sha256()
            for rendered in sorted(self.mounted.get(name, []), key=lambda f: str(f.path)):
                digest.update(str(rendered.path).encode() + b"\0" + rendered.content.encode() + b"\0")
            for mount in service.get("secrets", []):
                if mount["source"] in SECRET_NAMES:
                    digest.update(mount["source"].encode() + b"\0" + secrets.get(mount["source"]).encode())
            service["labels"][LABEL_FILES] = digest.hexdigest()[:16]


def _env_file(role: str, environment: dict[str, str]) -> RenderedFile:
    """A Prefect process's environment as a secret file, read by ``infra.containers.entrypoint`` at start."""
    return RenderedFile(CONTAINER.etc / f"{role}.env.json", json.dumps(environment, indent=2, sort_keys=True) + "\n",
                        secret=True)


def _with_env(env_file: RenderedFile, command: list[str], follow_redis: bool = False) -> list[str]:
    follow = ["--follow-redis"] if follow_redis else []
    return [PYTHON, "-m", "infra.containers.entrypoint", str(env_file.path), *follow, "--", *command]


def _traced(config: StackConfig, command: list[str]) -> list[str]:
    return [str(VENV_BIN / "opentelemetry-instrument"), *command] if config.tracing.enabled else command


def _prefect_in_containers(config: StackConfig, env: dict[str, str]) -> dict[str, str]:
    """Prefect processes that call the API do so through the load balancer's service name."""
    scheme = "https" if config.api_url.startswith("https") else "http"
    env = {**env, "PREFECT_API_URL": f"{scheme}://{LB_NAME}:{config.load_balancer.port}/api"}
    return env


def _http_check(port: int, path: str) -> list[str]:
    return ["curl", "-fsS", "-o", "/dev/null", "--max-time", "4", f"http://127.0.0.1:{port}{path}"]


def _tcp_check(*targets: tuple[str, int]) -> list[str]:
    """Connectable, for processes that serve nothing of their own (background services)."""
    pairs = ", ".join(f"({host!r}, {port})" for host, port in targets)
    code = f"import socket\nfor t in [{pairs}]: socket.create_connection(t, 3).close()"
    return [PYTHON, "-c", code]


def _container_config(config: StackConfig) -> StackConfig:
    """The model as seen from inside the containers: the compose target, the container layout as the state
    directory (scratch space included: a host's scratch_dir means nothing in a container), and with the stack's
    own Jaeger (and no other collector configured) the Prefect processes send their spans to it, and with the
    stack's own Loki (and no other logs endpoint configured) their log records to Loki."""
    local = config.local.model_copy(update={"state_dir": CONTAINER_ROOT})
    backups = config.backups.model_copy(update={"scratch_dir": None})
    update: dict[str, object] = {"target": "compose", "local": local, "backups": backups}
    logs = config.logs
    if loki_runs(config) and logs.otlp_endpoint is None:
        logs = logs.model_copy(update={"otlp_endpoint": loki_otlp_logs_url("loki")})
    if jaeger_runs(config) and config.tracing.otlp_endpoint is None:
        update["tracing"] = config.tracing.model_copy(
            update={"enabled": True, "otlp_endpoint": f"http://jaeger:{JAEGER_OTLP_HTTP}"})
        if logs.otlp_endpoint is None:
            # Jaeger stores spans only: its OTLP receiver has no logs pipeline and would refuse every /v1/logs
            # batch. With Loki running the records go there instead (logs.otlp_endpoint).
            logs = logs.model_copy(update={"export_otlp": False})
    update["logs"] = logs
    return config.model_copy(update=update)


def jaeger_runs(config: StackConfig) -> bool:
    return config.compose.jaeger and config.monitoring.enabled


def loki_runs(config: StackConfig) -> bool:
    return config.compose.loki and config.monitoring.enabled


LB_NAME = "haproxy"  # the load balancer's service name: Prefect processes in the containers call the API by it


def render_project(config: StackConfig, secrets: Secrets, images: Images,
                   tls: LoadBalancerTls | None = None, docker_socket: DockerSocket | None = None) -> ComposeProject:
    """The whole compose project for ``config``: pure, so the repository's compose/ folder can be checked.

    ``tls``: the load balancer's certificates (``infra.tls.load_balancer_tls`` with the name ``haproxy``), needed
    when ``config.tls_enabled``. ``docker_socket``: the engine's socket, for the workers of docker pools."""
    if config.tls_enabled and tls is None:
        raise ValueError("TLS is on: render_project needs the load balancer's certificates")
    trusted = (RenderedFile(CONTAINER.etc / TRUSTED_CA, tls.trusted),) if tls and config.tls_enabled else ()
    inner = _container_config(config)
    addresses = compose_addresses(config)
    etc = CONTAINER.etc
    project = ComposeProject(name=config.compose.project, document={"name": config.compose.project, "services": {}})
    b = _Builder(config, secrets, images, project)
    pg, lb = config.postgres, config.load_balancer
    published = lb.bind_address

    # --- data layer ---------------------------------------------------------------------------------------------
    # The script is a shipped file; what it needs comes in the service's environment (paths only: the superuser's
    # password stays in its compose secret).
    start_postgres = RenderedFile(etc / "postgres-start.sh", script("postgres/start.sh"))
    b.add("postgres", "postgres", images.system, ["sh", str(start_postgres.path)],
          files=(start_postgres, postgresql_conf(inner, CONTAINER, listen="*"),
                 pg_hba_conf(inner, CONTAINER, addresses.client_networks),
                 pg_ident_conf(["prefect-stack"], CONTAINER)),
          environment={"POSTGRES_BIN": str(PG_BIN), "POSTGRES_DATA": str(CONTAINER.postgres_data),
                       "POSTGRES_SUPERUSER_PASSWORD_FILE": str(SECRETS_IN_CONTAINER / "postgres_superuser"),
                       "POSTGRES_CONFIG_FILE": str(etc / "postgresql.conf")},
          secrets=("postgres_superuser",),
          volumes=(f"postgres-data:{CONTAINER.postgres_data}",), writable=(RUN_DIR,),
          healthcheck=[str(PG_BIN / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(pg.port), "-U", "postgres"],
          memory=config.compose.postgres_memory, stop_signal="INT", stop_grace_s=120)
    b.add("pgbouncer", "pgbouncer", images.system, ["pgbouncer", str(etc / "pgbouncer.ini")],
          files=(pgbouncer_ini(inner, CONTAINER, addresses), pgbouncer_userlist(inner, secrets, CONTAINER)),
          healthcheck=[str(PG_BIN / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(config.pgbouncer.port)],
          depends_on={"postgres": "service_healthy"}, stop_signal="INT", stop_grace_s=30, writable=(RUN_DIR,))
    b.add("redis", "redis", images.system, ["redis-server", str(etc / "redis.conf")],
          files=(redis_conf(inner, secrets, CONTAINER, bind="0.0.0.0 -::*"),),
          volumes=(f"redis-data:{CONTAINER.redis_data}",), memory=config.compose.redis_memory,
          # PING answers (PONG, or NOAUTH without a password): the server is up and serving.
          healthcheck=["sh", "-c", f"redis-cli -p {config.redis.port} ping 2>&1 | grep -qE 'PONG|NOAUTH'"])
    if config.backups.s3.endpoint_url is None:
        port = config.backups.s3.local_port
        b.add("s3", "s3", images.prefect, [str(VENV_BIN / "moto_server"), "-H", "0.0.0.0", "-p", str(port)],  # noqa: S104
              environment={"HOME": str(CONTAINER.prefect_home)}, writable=(HOME_DIR,),
              healthcheck=["curl", "-s", "-o", "/dev/null", "--max-time", "4", f"http://127.0.0.1:{port}/"])

    # --- Prefect ------------------------------------------------------------------------------------------------
    migrate_env = _env_file("migrate", _prefect_in_containers(
        config, migration_environment(inner, secrets, CONTAINER, addresses)))
    # The Prefect processes' logging configuration (logs.format json), mounted in each of them.
    prefect_logging = logging_files(inner, CONTAINER)
    b.add(MIGRATE, "migrate", images.prefect,
          _with_env(migrate_env, [PYTHON, "-m", "infra.containers.migrate", "--host", "postgres",
                                  "--port", str(pg.port), "--database", pg.database, "--user", pg.user,
                                  "--secrets", str(SECRETS_IN_CONTAINER)]),
          files=(migrate_env, *prefect_logging, *trusted), secrets=MIGRATION_SECRETS,
          environment=component_environment(MIGRATE),
          depends_on={"postgres": "service_healthy"}, restart="no", memory=config.compose.api_memory,
          writable=(HOME_DIR,))
    api_env = _env_file("api", _prefect_in_containers(config, api_environment(inner, secrets, CONTAINER, addresses)))
    prefect = str(VENV_BIN / "prefect")
    data_ready = {MIGRATE: "service_completed_successfully", "pgbouncer": "service_healthy",
                  "redis": "service_healthy"}
    for i in range(1, config.api.replicas + 1):
        port = config.api_port(i)
        b.add(f"api-{i}", "api", images.prefect,
              # `prefect server start --no-services` with the request-id layer around Prefect's app.
              _with_env(api_env, _traced(inner, [PYTHON, "-m", "infra.logs.api_server",
                                                  "--host", "0.0.0.0", "--port", str(port)])),  # noqa: S104
              files=(api_env, *prefect_logging, *trusted),
              environment={**server_tracing_environment(inner, "prefect-api", f"api-{i}"),
                           **component_environment(f"api-{i}")},
              healthcheck=_http_check(port, "/api/health"), depends_on=data_ready,
              memory=config.compose.api_memory, stop_grace_s=30, writable=(HOME_DIR,))
    services_env = _env_file("services", _prefect_in_containers(
        config, services_environment(inner, secrets, CONTAINER, addresses)))
    for i in range(1, config.services_replicas + 1):
        b.add(f"services-{i}", "services", images.prefect,
              # Restarted with Redis: they silently stop consuming its streams after it restarts otherwise.
              _with_env(services_env, _traced(inner, [prefect, "server", "services", "start"]), follow_redis=True),
              files=(services_env, *prefect_logging, *trusted),
              environment={**server_tracing_environment(inner, "prefect-services", f"services-{i}"),
                           **component_environment(f"services-{i}")},
              healthcheck=_tcp_check(("pgbouncer", config.pgbouncer.port), ("redis", config.redis.port)),
              depends_on=data_ready, memory=config.compose.api_memory, stop_grace_s=30, writable=(HOME_DIR,))
    haproxy_files = [haproxy_cfg(inner, secrets, CONTAINER, addresses), maintenance_map(CONTAINER)]
    if tls is not None and config.tls_enabled:
        haproxy_files += [RenderedFile(etc / TLS_PEM, tls.pem_bundle, secret=True), *trusted]
        if tls.operator is not None:
            haproxy_files.append(RenderedFile(etc / OPERATOR_TLS_PEM, tls.operator.pem_bundle, secret=True))
    stats_probe = _http_check(lb.stats_port, "/metrics")
    if config.stats_tls_enabled:
        stats_probe = [*stats_probe[:-1], "--cacert", str(etc / TRUSTED_CA),
                       f"https://127.0.0.1:{lb.stats_port}/metrics"]
    b.add(LB_NAME, "haproxy", images.system, ["haproxy", "-W", "-db", "-f", str(etc / "haproxy.cfg")],
          files=tuple(haproxy_files),
          networks=(BACKEND, FRONTEND),
          ports=(f"{published}:{lb.port}:{lb.port}", f"{published}:{lb.stats_port}:{lb.stats_port}"),
          healthcheck=stats_probe,
          depends_on={f"api-{i}": "service_started" for i in range(1, config.api.replicas + 1)},
          stop_signal="USR1", stop_grace_s=30, writable=(RUN_DIR,))

    # --- workers ------------------------------------------------------------------------------------------------
    _workers(b, inner, secrets, trusted, docker_socket or DockerSocket())

    # --- backups ------------------------------------------------------------------------------------------------
    _backup_scheduler(b, inner)

    # --- observability ------------------------------------------------------------------------------------------
    if config.monitoring.enabled:
        _monitoring(b, inner, secrets, addresses, trusted if config.stats_tls_enabled else ())
    b.seal(secrets)
    project.document["networks"] = {
        # Back-end traffic (database, Redis, replicas, exporters) never leaves the host's bridge.
        BACKEND: {"internal": True},
        # Only what is published (load balancer, Prometheus, Alertmanager, Grafana, Jaeger UI).
        FRONTEND: {},
    }
    return project


def flow_code_dir(config: StackConfig) -> Path:
    """The host directory of flow code the workers mount: workers.flow_code_dir, else <state_dir>/flows."""
    return (config.workers.flow_code_dir or config.state_dir / "flows").expanduser()


def worker_service(name: str) -> str:
    """The compose service of the worker ``name`` of ``workers.numbered()`` (default-1: worker-default-1)."""
    return f"worker-{name}"


def worker_services(config: StackConfig) -> list[str]:
    return [worker_service(name) for name, _ in config.workers.numbered()] if config.workers.enabled else []


def compose_memory(quantity: str) -> str:
    """A Kubernetes memory quantity (512Mi, 1Gi) in Docker's spelling (512m, 1g): both count in powers of 1024."""
    number, unit = quantity[:-2], quantity[-2:]
    return number + {"Ki": "k", "Mi": "m", "Gi": "g"}[unit]


def _flow_code_mounts(config: StackConfig) -> list[dict[str, Any]]:
    """The flow-code directory, read-only, at the same path as on the host (a deployment made there with
    ``from_source(source=<dir>)`` names that path) and at CONTAINER_FLOW_CODE_DIR (the workers' working
    directory, the path the other targets' images use). Never created by Docker: deploy checks it exists."""
    host = flow_code_dir(config)
    targets = dict.fromkeys([str(host), CONTAINER_FLOW_CODE_DIR])
    return [{"type": "bind", "source": str(host), "target": target, "read_only": True,
             "bind": {"create_host_path": False}} for target in targets]


def docker_pool_variables(config: StackConfig, prefect_image: str) -> dict[str, Any]:
    """What a docker pool's flow-run containers need from this stack (``desired_pools``'s target variables): the
    project's Prefect image (local only: never pulled), the network where the load balancer answers by name, and
    the flow code and the CA the worker's settings (which every flow run inherits) point to, at the same paths."""
    mounts = [f"{m['source']}:{m['target']}:ro" for m in _flow_code_mounts(config)]
    if config.tls_enabled:
        mounts.append(f"{StateLayout(config.state_dir).etc / TRUSTED_CA}:{CONTAINER.etc / TRUSTED_CA}:ro")
    # Hardened like the stack's own containers (no capability, no privilege gain, a read-only root with bounded
    # scratch, a pids limit), and removed once finished: Compose does not know them, so destroy could not either.
    hardening = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "read_only": True,
                 "tmpfs": {str(TMP): f"size={TMPFS_SIZE},mode=1777",
                           str(HOME_DIR): f"size={TMPFS_SIZE},mode=0755,uid={CONTAINER_UID},gid={CONTAINER_UID}"},
                 "pids_limit": WORKER_PIDS_LIMIT}
    return {"image": prefect_image, "image_pull_policy": "Never",
            "networks": [f"{config.compose.project}_{FRONTEND}"], "volumes": mounts, "auto_remove": True,
            "container_create_kwargs": hardening}


def _workers(b: _Builder, inner: StackConfig, secrets: Secrets, trusted: tuple[RenderedFile, ...],
             socket: DockerSocket) -> None:
    """One service per worker of the model: a client of the API like any other, through the load balancer.

    Only the front-end network: the load balancer is there, and the database, Redis and the API replicas are
    not (a flow's code has no business there), while flows keep the egress they usually need. The credential
    comes in the environment file (a compose secret); the worker's settings are plain environment.
    """
    config = b.config
    if not config.workers.enabled:
        return
    client = {"PREFECT_API_AUTH_STRING": secrets.get("prefect_auth"), "PREFECT_HOME": str(HOME_DIR),
              "HOME": str(HOME_DIR)}
    if config.tls_enabled:
        client["PREFECT_API_SSL_CERT_FILE"] = str(CONTAINER.etc / TRUSTED_CA)
    env_file = _env_file("worker", _prefect_in_containers(config, client))
    # Each container has its own network namespace: every worker serves /health on the same loopback port.
    port = config.workers.health_base_port
    settings = {**worker_settings(inner, LOOPBACK, port), **logging_environment(inner, CONTAINER.etc)}
    prefect_logging = logging_files(inner, CONTAINER)
    pools = {pool.name: pool for pool in config.workers.pools}
    for name, worker in config.workers.numbered():
        kind = config.pool_type(pools[worker.pool])
        command = list(worker_command(str(VENV_BIN / "prefect"), kind, name, worker))
        # The links the worker and its flows log point to the UI as people reach it, not as the containers do.
        environment = {**settings, "PREFECT_UI_URL": config.public_api_url.removesuffix("/api"),
                       **component_environment(worker_service(name))}
        if kind == "docker":
            environment["DOCKER_HOST"] = f"unix://{DOCKER_SOCKET}"
        cpus = cpu_cores(worker.resources.cpu_limit) if worker.resources.cpu_limit else None
        mounts: list[dict[str, Any]] = _flow_code_mounts(config)
        if kind == "docker":
            # Root on the host for whoever controls a flow of this pool (docs/workers.md): opt-in only.
            mounts.append({"type": "bind", "source": str(socket.path), "target": str(DOCKER_SOCKET),
                           "bind": {"create_host_path": False}})
        service = b.add(worker_service(name), "worker", b.images.prefect, _with_env(env_file, command),
                        files=(env_file, *prefect_logging, *trusted), environment=environment,
                        networks=(FRONTEND,),
                        volumes=tuple(mounts),
                        healthcheck=_http_check(port, "/health"),
                        # A client: it starts once the API answers through the load balancer (deploy has
                        # provisioned its pool by then).
                        depends_on={LB_NAME: "service_healthy"},
                        memory=compose_memory(worker.resources.memory_limit), cpus=cpus,
                        # Its flow runs are its children: a stop ends them (they turn Crashed, and the
                        # crash-retry automation schedules them again).
                        stop_grace_s=30, writable=(HOME_DIR,))
        if kind == "docker" and socket.gid is not None:
            service["group_add"] = [str(socket.gid)]
        service["working_dir"] = CONTAINER_FLOW_CODE_DIR
        service["deploy"]["resources"]["limits"]["pids"] = WORKER_PIDS_LIMIT


def backup_secrets(config: StackConfig) -> tuple[str, ...]:
    """The secrets the backup container is given: the local S3 endpoint's key only when that endpoint is used."""
    local_s3 = config.backups.s3.endpoint_url is None
    return tuple(name for name in BACKUP_SECRETS if name != "s3_local" or local_s3)


def _backup_scheduler(b: _Builder, inner: StackConfig) -> None:
    """The nightly backup and verification (``python -m infra.backup.scheduler``, as the local target supervises
    it), and the container where `invoke backup|restore|... --target compose` run their work (docker compose exec):
    the same code, next to the database. With backups.schedule_enabled false it only hosts those tasks."""
    config = b.config
    # Without the workers section: nothing run in this container reads it, and a change of a worker's settings
    # must recreate the workers only, not this container (a running backup would be cut).
    effective = effective_config_file(inner.model_copy(update={"workers": WorkersConfig(enabled=False)}), CONTAINER)
    reachable = [("postgres", config.postgres.port)]
    depends = {"postgres": "service_healthy"}
    if config.backups.s3.endpoint_url is None:
        reachable.append(("s3", config.backups.s3.local_port))
        depends["s3"] = "service_healthy"
    b.add(BACKUP_SCHEDULER, "backup-scheduler", b.images.prefect, [PYTHON, "-m", "infra.backup.scheduler"],
          files=(effective,),
          # The code reads its secrets where the local target keeps them (<state>/secrets), and only those the
          # backup work needs: not the API admin's, Redis', HAProxy's or Grafana's (least privilege).
          state_secrets=backup_secrets(config),
          environment={CONFIG_FILE_ENV: str(effective.path), IN_CONTAINER_ENV: "1"},
          # The back-end network is internal: a real S3 endpoint is reached through the front-end one.
          networks=(BACKEND,) if config.backups.s3.endpoint_url is None else (BACKEND, FRONTEND),
          # metrics: the textfiles node-exporter serves (the backup-age alert); scratch: dumps and restores.
          volumes=(f"metrics:{CONTAINER.metrics}", f"backup-scratch:{inner.scratch_dir}"),
          healthcheck=_tcp_check(*reachable), depends_on=depends, memory=config.compose.api_memory,
          # A stop lets a running backup finish for this long (the scheduler finishes its run on SIGTERM); a longer
          # one is cut, leaves no manifest, and shows as a failed run in the metrics.
          stop_grace_s=300,
          # run: the backup lock; home: HOME of the tools the backup tasks run (invoke, psql, pg_dump).
          writable=(RUN_DIR, HOME_DIR))


def _monitoring(b: _Builder, inner: StackConfig, secrets: Secrets, addresses: Addresses,
                trusted: tuple[RenderedFile, ...]) -> None:
    config, etc = b.config, CONTAINER.etc
    monitoring = config.monitoring
    programs = {p.name: p for p in monitoring_programs(inner, secrets, CONTAINER, addresses, python=PYTHON,
                                                       repo_root=Path(str(APP_ROOT)))}
    probes = {"prometheus": "/-/ready", "alertmanager": "/-/ready"}
    published = {"prometheus": monitoring.prometheus_port, "alertmanager": monitoring.alertmanager_port}
    volumes = {"prometheus": f"prometheus-data:{CONTAINER.prometheus_data}",
               "alertmanager": f"alertmanager-data:{CONTAINER.alertmanager_data}",
               "node-exporter": f"metrics:{CONTAINER.metrics}"}
    depends = {"postgres-exporter": "postgres", "redis-exporter": "redis", "prefect-exporter": "pgbouncer"}
    for name, program in programs.items():
        image = b.images.prefect if name == "prefect-exporter" else b.images.system
        port = program.port or 0
        mounted = (*program.files, *trusted) if name == "prometheus" else program.files
        b.add(name, program.component, image, list(program.command), files=mounted,
              environment=dict(program.environment), networks=(BACKEND, FRONTEND) if name in published else (BACKEND,),
              ports=(f"{LOOPBACK}:{published[name]}:{published[name]}",) if name in published else (),
              volumes=(volumes[name],) if name in volumes else (),
              healthcheck=_http_check(port, probes.get(name, "/metrics")),
              depends_on={depends[name]: "service_healthy"} if name in depends else None)
    if config.compose.grafana:
        grafana_dir = PurePosixPath("/etc/grafana")
        files = [RenderedFile(Path(str(grafana_dir / "dashboards" / name)), json.dumps(model, indent=2) + "\n")
                 for name, model in dashboards(config).items()]
        jaeger = f"http://jaeger:{JAEGER_UI}" if config.compose.jaeger else None
        loki = f"http://loki:{LOKI_HTTP}" if loki_runs(config) else None
        for relative, text in grafana_provisioning(config, f"http://prometheus:{monitoring.prometheus_port}", jaeger,
                                                   str(grafana_dir / "dashboards"), loki).items():
            files.append(RenderedFile(Path(str(grafana_dir / "provisioning" / relative)), text))
        b.add("grafana", "grafana", config.compose.grafana_image, [], files=tuple(files),
              secrets=("grafana_admin",),
              environment={"GF_SECURITY_ADMIN_USER": "admin",
                           "GF_SECURITY_ADMIN_PASSWORD__FILE": str(SECRETS_IN_CONTAINER / "grafana_admin"),
                           "GF_PATHS_PROVISIONING": str(grafana_dir / "provisioning"),
                           "GF_ANALYTICS_REPORTING_ENABLED": "false", "GF_USERS_ALLOW_SIGN_UP": "false"},
              networks=(BACKEND, FRONTEND), ports=(f"{LOOPBACK}:{config.compose.grafana_port}:{GRAFANA_PORT}",),
              volumes=("grafana-data:/var/lib/grafana",),
              healthcheck=["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{GRAFANA_PORT}/api/health"],
              depends_on={"prometheus": "service_healthy"}, user=None)
        b.project.document["services"]["grafana"].pop("command")
    if jaeger_runs(config):
        jaeger_config = RenderedFile(etc / "jaeger.yaml", jaeger_yaml(config))
        b.add("jaeger", "jaeger", config.compose.jaeger_image, ["--config", str(etc / "jaeger.yaml")],
              files=(jaeger_config,), environment={"JAEGER_LISTEN_HOST": "0.0.0.0"},  # noqa: S104
              networks=(BACKEND, FRONTEND), ports=(f"{LOOPBACK}:{config.compose.jaeger_ui_port}:{JAEGER_UI}",),
              volumes=(f"jaeger-data:{JAEGER_DATA_DIR}",) if jaeger_needs_volume(config) else (), user=None)
    if loki_runs(config):
        loki_config = RenderedFile(etc / "loki.yaml", loki_yaml(config))
        # The back-end network only, no published port: its clients are the Prefect processes and Grafana, and it
        # has no authentication (auth_enabled false). No healthcheck: the image is distroless (no shell, no wget
        # or curl to run one), so nothing waits on it: the OTLP exporters retry (then drop) what it refuses.
        b.add("loki", "loki", config.compose.loki_image,
              [f"-config.file={etc / 'loki.yaml'}", "-target=all"], files=(loki_config,),
              volumes=(f"loki-data:{LOKI_DATA_DIR}",), user=None)


def write_project(project: ComposeProject, directory: Path, owner_uid: int | None) -> list[Path]:
    """Write the project files atomically; secret files 0600, owned by the containers' user when we can chown.

    Compose mounts file secrets as they are on the host (no uid/mode for file secrets outside Swarm), so the
    containers' unprivileged user must own them. Returns the files whose content changed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    changed = []
    for rendered in [*project.files, RenderedFile(Path("compose.yaml"), project.compose_yaml)]:
        path = directory / rendered.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.read_text() == rendered.content:
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(rendered.content)
        tmp.chmod(rendered.mode)
        if rendered.secret and owner_uid is not None:
            os.chown(tmp, owner_uid, owner_uid)
        tmp.replace(path)
        changed.append(path)
    return changed


@dataclass(frozen=True)
class _Placeholders:
    """Image references of a rendering made without building: the tags are content hashes computed at deploy."""

    system: str = "prefect-stack/system:content-hash"
    prefect: str = "prefect-stack/prefect:content-hash"


def placeholder_secrets() -> Secrets:
    """Stand-ins for a rendering that is shown, not deployed: every real secret is generated at deploy."""
    values: dict[str, Any] = {name: SecretStr(f"generated-at-deploy-{name}") for name in SECRET_NAMES}
    return Secrets(**values)


def placeholder_tls() -> LoadBalancerTls:
    """Stand-in certificates: the deployment's CA and certificate are generated at deploy (infra/tls.py)."""
    generated = "generated at deploy\n"
    return LoadBalancerTls(generated, generated, "the deployment's CA, " + generated, Path("lb_ca.crt"))


def reference_rendering(config: StackConfig) -> ComposeProject:
    """What the repository's compose/ folder holds: the project for ``config`` without its secret files.

    With no state directory configured, the one root gets (the workers mount its flows/ directory), so the
    repository's copy does not depend on who renders it."""
    if config.local.state_dir is None:
        config = config.model_copy(update={"local": config.local.model_copy(
            update={"state_dir": Path(str(images.APP_ROOT))})})
    project = render_project(config, placeholder_secrets(), _Placeholders(), placeholder_tls())
    project.files = [f for f in project.files if not f.secret]
    return project


def write_reference(project: ComposeProject, directory: Path) -> list[Path]:
    """Write a reference rendering (no secret in it) into ``directory``; stale files there are removed."""
    wanted = {directory / "compose.yaml": project.compose_yaml}
    wanted.update({directory / f.path: f.content for f in project.files})
    for stale in (directory / "config").glob("*") if (directory / "config").exists() else []:
        if stale not in wanted:
            stale.unlink()
    for path, content in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return sorted(wanted)
