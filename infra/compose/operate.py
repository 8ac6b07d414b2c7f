"""Operating a deployed compose stack: status, settle, logs, restart, stop, destroy. Read through the Docker SDK.

Status speaks the same ``ComponentStatus`` as the local target, so ``invoke status`` prints one table for both.
A container is healthy when Docker's health check passes; HAProxy's own view is added to the load balancer's
row, as on the local target: a replica that answers but is not routed to makes ``haproxy`` unhealthy.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import docker.errors
from docker import DockerClient
from docker.models.containers import Container

from infra.compose.deploy import (
    containers,
    haproxy_server_states,
    project_dir,
    roll_replica,
    run_compose,
)
from infra.compose.project import MIGRATE
from infra.config import StackConfig
from infra.containers.engine import docker_client
from infra.errors import UserError
from infra.logs.read import LogQuery, StreamFollower, read_and_show, split_lines, stamped_records
from infra.status import ComponentStatus

DOWN_TIMEOUT_S = 150


def _uptime(container: Container) -> int | None:
    started = container.attrs.get("State", {}).get("StartedAt", "")
    if not started or started.startswith("0001"):
        return None
    moment = datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00")
    return int((datetime.now(UTC) - moment).total_seconds())


def _status_of(service: str, container: Container) -> ComponentStatus:
    state = container.attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status")
    running = container.status == "running"
    component = container.labels.get("io.prefect-stack.component", service)
    if service == MIGRATE:  # one-shot: healthy once it exited 0
        healthy = container.status == "exited" and state.get("ExitCode") == 0
        return ComponentStatus(service, component, healthy, f"exited {state.get('ExitCode')}"
                               if container.status == "exited" else container.status, None, None,
                               detail="" if healthy else "the migration did not complete: invoke logs migrate")
    healthy = running and health in ("healthy", None)
    detail = "" if healthy else f"health: {health or 'none'}"
    restarts = container.attrs.get("RestartCount", 0)
    if restarts:
        detail = (detail + f"; restarted {restarts}x").lstrip("; ")
    return ComponentStatus(service, component, healthy, container.status, state.get("Pid") or None, None,
                           version=container.image.tags[0].rsplit(":", 1)[-1][:12] if container.image.tags else None,
                           uptime_s=_uptime(container) if running else None, detail=detail)


def status(config: StackConfig) -> list[ComponentStatus]:
    client = docker_client(config)
    found = containers(client, config.compose.project)
    if not found:
        raise UserError(f"no container of compose project {config.compose.project!r} exists",
                        fix="deploy it: invoke deploy --target compose")
    statuses = [_status_of(service, container) for service, container in sorted(found.items())]
    routed = haproxy_server_states(client, config.compose.project)
    for s in statuses:
        if s.name == "haproxy" and s.healthy:
            not_up = sorted(name for name, state in routed.items() if not state.startswith("UP"))
            if not_up or not routed:
                s.healthy = False
                s.detail = f"not routed to: {', '.join(f'{n} {routed[n]}' for n in not_up)}" if routed \
                    else "no answer from the runtime API"
    return statuses


def settle(config: StackConfig, timeout_s: float, interval_s: float = 0.5) -> list[ComponentStatus]:
    """Poll until every service is healthy (and routed to), for at most ``timeout_s``; the last statuses either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = status(config)
        if all(s.healthy for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(interval_s)


def service_container(config: StackConfig, name: str, client: DockerClient | None = None) -> Container:
    """The container of one service of the project, or a UserError naming those that exist."""
    found = containers(client or docker_client(config), config.compose.project)
    if name not in found:
        raise UserError(f"no service named {name!r} in compose project {config.compose.project!r}",
                        fix=f"choose one of: {', '.join(sorted(found)) or '(none: deploy first)'}")
    return found[name]


def _container_lines(container: Container, query: LogQuery) -> Iterator[str]:
    """The container's log lines (what the process wrote on stdout and stderr), each prefixed with Docker's
    timestamp; read when the merge first asks for them."""
    chosen: dict[str, Any] = {"tail": query.tail if query.tail is not None else "all"}
    if query.since is not None:
        chosen["since"] = query.since
    if query.until is not None:
        chosen["until"] = query.until
    text: bytes = container.logs(stdout=True, stderr=True, timestamps=True, **chosen)
    yield from text.decode(errors="replace").splitlines()


def _container_stream(container: Container) -> Iterator[str]:
    """New lines from now on, until the container stops or the reader is interrupted."""
    return split_lines(container.logs(stdout=True, stderr=True, timestamps=True, stream=True, follow=True,
                                      since=datetime.now(UTC)))


def logs(config: StackConfig, query: LogQuery) -> int:
    """One service's container log, or every service's merged in time order, as the query says."""
    if query.component:
        chosen = {query.component: service_container(config, query.component)}
    else:
        chosen = containers(docker_client(config), config.compose.project)
        if not chosen:
            raise UserError(f"no container of compose project {config.compose.project!r}",
                            fix="deploy first: invoke deploy --target compose")
    sources = {name: stamped_records(name, _container_lines(c, query)) for name, c in sorted(chosen.items())}
    followers = None
    if query.follow:
        followers = [StreamFollower({name: _container_stream(c) for name, c in chosen.items()}).poll]
    return read_and_show(sources, query, followers)


def restart(config: StackConfig, name: str) -> float:
    """Restart one service and wait until healthy; an API replica is drained in HAProxy first."""
    started = time.monotonic()
    container = service_container(config, name)
    if name.startswith("api-"):
        roll_replica(config, docker_client(config), name, recreate=False)
    else:
        container.restart(timeout=120)
        deadline = time.monotonic() + 180
        while True:
            container.reload()
            current = _status_of(name, container)
            if current.healthy:
                break
            if time.monotonic() > deadline:
                raise UserError(f"{name} is not healthy 180 s after its restart ({current.detail})",
                                fix=f"see its log: invoke logs {name} --target compose")
            time.sleep(0.5)
    return time.monotonic() - started


def stop(config: StackConfig) -> bool:
    """Stop every container; volumes (data) and secrets stay, and deploy starts them again."""
    if not containers(docker_client(config), config.compose.project):
        return False
    run_compose(config, "stop", "--timeout", "120", timeout_s=DOWN_TIMEOUT_S)
    return True


def _remove_by_label(client: DockerClient, labelled: dict[str, str], timeout_s: float = 60) -> bool:
    """Remove the labelled containers, networks (disconnecting any endpoint left, stale ones included) and
    volumes; True when none is left within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for container in client.containers.list(all=True, filters=labelled):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True, v=True)
        for network in client.networks.list(filters=labelled):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.reload()
                for endpoint in (network.attrs.get("Containers") or {}).values():
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        network.disconnect(endpoint.get("Name", ""), force=True)
                network.remove()
        for volume in client.volumes.list(filters=labelled):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                volume.remove(force=True)
        left = (client.containers.list(all=True, filters=labelled) + client.networks.list(filters=labelled)
                + client.volumes.list(filters=labelled))
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)  # between bounded attempts: the engine finishes removals in the background


def destroy(config: StackConfig) -> list[str]:
    """Remove the project's containers, networks and volumes, and its rendered files. Returns what was removed."""
    client = docker_client(config)
    project = config.compose.project
    labelled = {"label": f"com.docker.compose.project={project}"}
    removed = [f"container {name}" for name in containers(client, project)]
    removed += [f"volume {v.name}" for v in client.volumes.list(filters=labelled)]
    removed += [f"network {n.name}" for n in client.networks.list(filters=labelled)]
    if (project_dir(config) / "compose.yaml").exists():
        try:
            run_compose(config, "down", "--volumes", "--remove-orphans", "--timeout", "120",
                        timeout_s=DOWN_TIMEOUT_S)
        except UserError:
            # Docker 20.10 can keep a stale endpoint of a container that was killed (seen after a SIGKILL test):
            # the network then "has active endpoints" though no container is left. Finish by label, with the
            # endpoints disconnected by force; what still cannot be removed re-raises Compose's error.
            if not _remove_by_label(client, labelled):
                raise
    else:  # the rendered files are gone: remove by label
        _remove_by_label(client, labelled)
    state = config.state_dir
    if state.exists():
        shutil.rmtree(state)
        removed.append(f"state {state}")
    return removed
