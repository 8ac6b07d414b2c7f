"""``invoke deploy`` for the compose target: render, build what is missing, and converge with Compose v2.

Compose recreates exactly the services whose definition changed; every service carries a hash of the files it
mounts, so a changed configuration file changes its definition too. API replicas are the exception to letting
Compose do it all at once: each changed replica is drained in HAProxy, replaced, and put back once HAProxy sees
it healthy, one at a time, so clients see no error.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from docker import DockerClient
from docker.errors import ImageNotFound
from docker.models.containers import Container

from infra.compose.project import (
    CONTAINER,
    CONTAINER_UID,
    LABEL_COMPONENT,
    LB_NAME,
    ComposeProject,
    DockerSocket,
    docker_pool_variables,
    flow_code_dir,
    render_project,
    worker_services,
    write_project,
)
from infra.config import StackConfig
from infra.containers.engine import compose_binary, docker_client, docker_host
from infra.containers.images import ensure_images, image_refs
from infra.errors import UserError
from infra.haproxy_runtime import parse_requests_in_flight, parse_server_stats
from infra.layout import TRUSTED_CA, StateLayout
from infra.progress import Progress
from infra.render.haproxy import BACKEND
from infra.render.prometheus import RETIRED_FILES
from infra.secrets import Secrets, ensure_secrets
from infra.tls import load_balancer_tls
from infra.work_pools.automations import desired_automations
from infra.work_pools.provision import load_balancer_api, provision
from infra.work_pools.templates import desired_pools

LABEL_DEFINITION = "io.prefect-stack.definition"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
UP_TIMEOUT_S = 300
HAPROXY_WAIT_S = 60


def project_dir(config: StackConfig) -> Path:
    """Where the rendered project lives: <state>/compose (compose.yaml, config/, secrets/ at 0600)."""
    return config.state_dir / "compose"


def compose_command(config: StackConfig, *args: str) -> list[str]:
    directory = project_dir(config)
    return [*compose_binary(), "--project-name", config.compose.project, "--project-directory", str(directory),
            "--file", str(directory / "compose.yaml"), *args]


def compose_env(config: StackConfig) -> dict[str, str]:
    env = dict(os.environ)
    if config.compose.docker_host:
        env["DOCKER_HOST"] = config.compose.docker_host
    return env


def run_compose(config: StackConfig, *args: str, timeout_s: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run Compose; a failure raises UserError with Compose's own words (they name the service)."""
    try:
        result = subprocess.run(compose_command(config, *args), capture_output=True, text=True, check=False,
                                env=compose_env(config), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise UserError(f"docker compose {' '.join(args)} did not finish within {timeout_s:.0f} s",
                        fix="see which service is not healthy: invoke status --target compose, "
                            "then invoke logs SERVICE --target compose") from None
    if result.returncode != 0:
        tail = "\n    ".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise UserError(f"docker compose {' '.join(args[:2])} failed:\n    {tail}",
                        fix="see the failing service's log: invoke logs SERVICE --target compose")
    return result


def containers(client: DockerClient, project: str) -> dict[str, Container]:
    """The project's containers by service name (stopped ones included)."""
    found = client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
    return {c.labels.get(SERVICE_LABEL, c.name): c for c in found}


def _definition_hashes(project: ComposeProject) -> dict[str, str]:
    hashes = {}
    for name, service in project.document["services"].items():
        text = json.dumps(service, sort_keys=True)
        hashes[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
        service["labels"][LABEL_DEFINITION] = hashes[name]
    return hashes


@dataclass
class ComposeDeployReport:
    created: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rolled: list[str] = field(default_factory=list)  # API replicas replaced one at a time
    provisioned: list[str] = field(default_factory=list)  # what provisioning the work pools did (its report)
    images_built: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def changed_nothing(self) -> bool:
        return not (self.created or self.recreated or self.removed or self.rolled)


def _check_upstream_images(config: StackConfig, client: DockerClient) -> None:
    """Grafana, Jaeger and Loki come from their registries: present locally, or pulled now, or a clear refusal."""
    for enabled, image, setting in ((config.compose.grafana, config.compose.grafana_image, "grafana"),
                                    (config.compose.jaeger, config.compose.jaeger_image, "jaeger"),
                                    (config.compose.loki, config.compose.loki_image, "loki")):
        if not (enabled and config.monitoring.enabled):
            continue
        try:
            client.images.get(image)
            continue
        except ImageNotFound:
            pass
        try:
            client.images.pull(image)
        except Exception as exc:  # any pull failure (no registry, no such digest, no auth) has one fix
            raise UserError(f"cannot pull {image} ({exc.__class__.__name__}: {str(exc)[:200]})",
                            fix=f"make the registry reachable (or load the image with docker load), or set "
                                f"compose.{setting}: false (its configuration is still rendered and checked)") from None


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port)) == 0  # noqa: S104


def _preflight(config: StackConfig, running: dict[str, Container]) -> None:
    if running:
        return  # our own containers hold the ports
    lb, compose = config.load_balancer, config.compose
    wanted = {"load_balancer.port": (lb.bind_address, lb.port), "load_balancer.stats_port": (lb.bind_address,
                                                                                            lb.stats_port)}
    if config.monitoring.enabled:
        wanted["monitoring.prometheus_port"] = ("127.0.0.1", config.monitoring.prometheus_port)
        wanted["monitoring.alertmanager_port"] = ("127.0.0.1", config.monitoring.alertmanager_port)
        if compose.grafana:
            wanted["compose.grafana_port"] = ("127.0.0.1", compose.grafana_port)
        if compose.jaeger:
            wanted["compose.jaeger_ui_port"] = ("127.0.0.1", compose.jaeger_ui_port)
    busy = [f"{field_name} ({host}:{port})" for field_name, (host, port) in wanted.items() if _port_in_use(host, port)]
    if busy:
        raise UserError(f"ports already in use on this host: {', '.join(busy)}",
                        fix="stop what listens there, or choose other ports in the configuration")


def haproxy_command(client: DockerClient, project: str, command: str) -> str:
    """One HAProxy runtime-API command, through the admin socket inside the load balancer's container."""
    found = containers(client, project).get("haproxy")
    if found is None or found.status != "running":
        return ""
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(CONTAINER.haproxy_socket)!r})\ns.sendall(sys.argv[1].encode()+b'\\n')\n"
            "out=b''\nwhile True:\n  d=s.recv(65536)\n  if not d: break\n  out+=d\nsys.stdout.write(out.decode())")
    result = found.exec_run(["python3", "-c", code, command])
    return result.output.decode(errors="replace") if result.exit_code == 0 else ""


def haproxy_server_states(client: DockerClient, project: str) -> dict[str, str]:
    """HAProxy's view of each API replica: UP, DOWN, DRAIN, MAINT (from ``show stat``)."""
    rows = parse_server_stats(haproxy_command(client, project, "show stat"))
    return {server: row.get("status", "") for server, row in rows.items()}


def _wait_haproxy(client: DockerClient, project: str, server: str, want: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        state = haproxy_server_states(client, project).get(server, "")
        if state.startswith(want):
            return
        if time.monotonic() > deadline:
            raise UserError(f"HAProxy still reports {server} as {state or 'unknown'} after {timeout_s:.0f} s "
                            f"(expected {want})",
                            fix=f"see the replica's log: invoke logs {server} --target compose")
        time.sleep(0.25)


def _requests(client: DockerClient, project: str, server: str) -> int:
    """HTTP requests the replica is answering; websockets (workers keep event and log streams open for as long
    as they run) are not waited for: they are closed once the replica is out, and Prefect's clients reconnect."""
    return parse_requests_in_flight(haproxy_command(client, project, "show sess all"), server)


def wait_container_healthy(client: DockerClient, project: str, service: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        container = containers(client, project).get(service)
        health = ((container.attrs.get("State", {}).get("Health") or {}).get("Status")) if container else None
        if container is not None and container.status == "running" and health == "healthy":
            return
        if time.monotonic() > deadline:
            raise UserError(f"{service} is not healthy {timeout_s:.0f} s after its restart (health: {health})",
                            fix=f"see its log: invoke logs {service} --target compose")
        time.sleep(0.5)


def roll_replica(config: StackConfig, client: DockerClient, service: str, recreate: bool = True) -> None:
    """Replace (or only restart) one API replica with no failed request: drain, wait for its requests,
    maintenance, replace, then back in service once HAProxy's checks pass."""
    project = config.compose.project
    haproxy_command(client, project, f"set server {BACKEND}/{service} state drain")
    deadline = time.monotonic() + config.load_balancer.timeout_server_s
    while _requests(client, project, service) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    haproxy_command(client, project, f"set server {BACKEND}/{service} state maint")
    haproxy_command(client, project, f"shutdown sessions server {BACKEND}/{service}")
    if recreate:
        run_compose(config, "up", "--detach", "--no-deps", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), service)
    else:
        run_compose(config, "restart", "--timeout", "30", service)
        # A restarted container's health starts over ("starting"); back in service only once it passes again.
        wait_container_healthy(client, project, service, UP_TIMEOUT_S)
    haproxy_command(client, project, f"set server {BACKEND}/{service} state ready")
    _wait_haproxy(client, project, service, "UP", HAPROXY_WAIT_S)


def _up_changed(config: StackConfig, project: ComposeProject, changed: Callable[[str], bool],
                components: tuple[str, ...]) -> None:
    """Recreate, and wait healthy, the changed services of these components (nothing else)."""
    services = [s for s in project.service_names() if changed(s)
                and project.document["services"][s]["labels"].get(LABEL_COMPONENT) in components]
    if services:
        run_compose(config, "up", "--detach", "--no-deps", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), *services)


def _docker_socket(config: StackConfig) -> DockerSocket | None:
    """The engine's socket for the workers of docker pools (None: no such worker), checked to be mountable."""
    pools = {pool.name: config.pool_type(pool) for pool in config.workers.pools}
    if not config.workers.enabled or all(pools[w.pool] != "docker" for _, w in config.workers.numbered()):
        return None
    url = docker_host(config)
    if not url.startswith("unix://"):
        raise UserError(f"the workers of docker pools mount the engine's socket, but the engine is at {url}",
                        fix="use an engine on this host through its unix:// socket (compose.docker_host), or give "
                            "those pools type process")
    path = Path(url.removeprefix("unix://"))
    if not path.is_socket():
        raise UserError(f"{path} (the Docker engine's socket) is not a socket on this host",
                        fix="point compose.docker_host at the engine's socket on this host")
    return DockerSocket(path, path.stat().st_gid)


def _prepare_flow_code(config: StackConfig) -> None:
    """The flow-code directory the workers mount: created when it is the default, refused when the workers'
    user could not read it (Docker would otherwise create an empty root-owned one, or the runs fail later)."""
    if not config.workers.enabled:
        return
    directory = flow_code_dir(config)
    if config.workers.flow_code_dir is None:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
    if not directory.is_dir():
        raise UserError(f"workers.flow_code_dir {directory} is not a directory",
                        fix="create it and put the flow code there, or set workers.flow_code_dir: null for "
                            "<state_dir>/flows")
    mode = directory.stat()
    readable = (mode.st_mode & 0o005 == 0o005 or (mode.st_uid == CONTAINER_UID and mode.st_mode & 0o500 == 0o500)
                or (mode.st_gid == CONTAINER_UID and mode.st_mode & 0o050 == 0o050))
    if not readable:
        raise UserError(f"the workers (uid {CONTAINER_UID}) cannot read {directory}",
                        fix=f"chmod o+rx {directory} (and o+r its files), or chown it to uid {CONTAINER_UID}")


def deploy(config: StackConfig, progress: Progress) -> tuple[ComposeProject, ComposeDeployReport]:
    started = time.monotonic()
    report = ComposeDeployReport()
    # The pools' templates are checked (a bad job variable or key is refused, naming it) before anything changes.
    refs = image_refs(config)
    pools = desired_pools(config, {"docker": docker_pool_variables(config, refs.prefect)})
    automations = desired_automations(config)
    socket_of_engine = _docker_socket(config)
    _prepare_flow_code(config)
    client = docker_client(config)
    secrets: Secrets = ensure_secrets(config.state_dir / "secrets")
    report.images_built = [r.ref for r in ensure_images(config, client, progress) if r.action != "up to date"]
    _check_upstream_images(config, client)
    tls = load_balancer_tls(config, config.state_dir / "secrets", names=(LB_NAME,)) if config.tls_enabled else None
    project = render_project(config, secrets, refs, tls, socket_of_engine)
    hashes = _definition_hashes(project)
    before = containers(client, config.compose.project)
    _preflight(config, {k: v for k, v in before.items() if v.status == "running"})
    write_project(project, project_dir(config), CONTAINER_UID if os.geteuid() == 0 else None)
    for name in RETIRED_FILES:  # secrets no service mounts any more
        (project_dir(config) / "secrets" / name).unlink(missing_ok=True)
    if tls is not None:  # where `invoke env` points Prefect clients on this host (as on the local target)
        trusted = StateLayout(config.state_dir).etc / TRUSTED_CA
        trusted.parent.mkdir(parents=True, exist_ok=True)
        trusted.write_text(tls.trusted)

    def changed(service: str) -> bool:
        existing = before.get(service)
        return existing is not None and existing.labels.get(LABEL_DEFINITION) != hashes[service]

    # Replicas that exist and changed are replaced one at a time behind HAProxy; the rest goes in one `up`.
    # A new image may bring a new schema: the migration runs (and must succeed) before the first replica rolls.
    rolling = [s for s in project.service_names() if s.startswith("api-") and changed(s)
               and before[s].status == "running" and "haproxy" in before]
    if rolling:
        # Servers before their clients, so a rotated credential is accepted before a client presents it:
        # PostgreSQL and Redis, then the migration (it uses both, and sets the roles' passwords straight in
        # PostgreSQL), then PgBouncer (it logs in with them), then the replicas one at a time.
        _up_changed(config, project, changed, ("postgres", "redis"))
        run_compose(config, "up", "--no-deps", "--exit-code-from", "migrate", "migrate")
        _up_changed(config, project, changed, ("pgbouncer",))
    for service in rolling:
        roll_replica(config, client, service)
        report.rolled.append(service)
    # The server first; the workers, its clients, once their pools are as the model says (a worker never creates
    # its pool, and one started first would only wait for it).
    workers = worker_services(config)
    server = [s for s in project.service_names() if s not in workers]
    run_compose(config, "up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), "--remove-orphans", *server)
    if config.workers.enabled:
        report.provisioned = provision(load_balancer_api(config, secrets.get("prefect_auth")), pools,
                                       automations).lines()
    if workers:  # (`up` with no service named would mean every service)
        run_compose(config, "up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), *workers)
    after = containers(client, config.compose.project)
    for service in project.service_names():
        if service in report.rolled:
            continue
        if service not in before:
            report.created.append(service)
        elif after.get(service) is not None and after[service].id != before[service].id:
            report.recreated.append(service)
    report.removed = [s for s in before if s not in hashes]
    report.elapsed_s = time.monotonic() - started
    return project, report
