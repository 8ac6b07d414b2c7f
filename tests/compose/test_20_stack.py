"""The compose target on a real Docker engine: deployed by the real CLI on free ports under a project name of its
own, then used, broken and redeployed as an operator would, and destroyed without a trace."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker.models.containers import Container

from infra.compose.deploy import containers
from infra.compose.project import CONTAINER
from infra.console import wait_until
from infra.containers.images import INIT_ENTRYPOINT
from infra.secrets import load_secrets
from tests.compose.conftest import ComposeStack
from tests.conftest import create_runs_while_killing
from tests.double_work import duplicated_events, duplicated_scheduled_runs

pytestmark = pytest.mark.compose

CLIENTS, REQUESTS_PER_CLIENT, KILL_AFTER = 20, 20, 100


def test_every_service_is_healthy(compose_stack: ComposeStack) -> None:
    result = compose_stack.invoke("status", "--json")
    report = json.loads(result.stdout)
    unhealthy = [c["name"] for c in report["components"] if not c["healthy"]]
    assert unhealthy == [] and result.returncode == 0
    names = {c["name"] for c in report["components"]}
    assert {"postgres", "pgbouncer", "redis", "s3", "migrate", "api-1", "api-2", "services-1", "services-2",
            "haproxy", "prometheus", "alertmanager"} <= names


def test_two_services_containers_create_each_scheduled_run_once(compose_stack: ComposeStack) -> None:
    with compose_stack.client() as client:
        assert duplicated_scheduled_runs(client) == []


def test_two_services_containers_persist_each_event_once(compose_stack: ComposeStack) -> None:
    with compose_stack.client() as client:
        assert duplicated_events(client) == {}


def _pid1_status(container: Container) -> dict[str, str]:
    """/proc/1/status of the container (its init), read as the container's user."""
    result = container.exec_run(["cat", "/proc/1/status"])
    assert result.exit_code == 0, result.output
    return {key: value.strip() for key, _, value in
            (line.partition(":") for line in result.output.decode().splitlines())}


def test_every_container_runs_without_capabilities_or_privilege_gain(compose_stack: ComposeStack) -> None:
    """As rendered (cap_drop ALL, no-new-privileges), and as the kernel applies it to the running init."""
    problems: dict[str, list[str]] = {}
    for name, container in containers(compose_stack.docker, compose_stack.config.compose.project).items():
        host = container.attrs["HostConfig"]
        found = problems.setdefault(name, [])
        if "ALL" not in (host.get("CapDrop") or []) or host.get("CapAdd"):
            found.append(f"CapDrop {host.get('CapDrop')}, CapAdd {host.get('CapAdd')}")
        if "no-new-privileges:true" not in (host.get("SecurityOpt") or []):
            found.append(f"SecurityOpt {host.get('SecurityOpt')}")
        if container.status == "running":
            status = _pid1_status(container)
            if int(status["CapBnd"], 16) or int(status["CapEff"], 16):
                found.append(f"capabilities CapBnd {status['CapBnd']}, CapEff {status['CapEff']}")
            if status.get("NoNewPrivs") != "1":
                found.append(f"NoNewPrivs {status.get('NoNewPrivs')}")
    assert {name: found for name, found in problems.items() if found} == {}


def test_every_root_filesystem_is_read_only(compose_stack: ComposeStack) -> None:
    """A directory the containers' user owns in the image, but which is no volume or tmpfs, cannot be written;
    /tmp (a tmpfs) can."""
    probe = CONTAINER.logs / "hardening-probe"
    problems: dict[str, list[str]] = {}
    for name, container in containers(compose_stack.docker, compose_stack.config.compose.project).items():
        found = problems.setdefault(name, [])
        if container.attrs["HostConfig"].get("ReadonlyRootfs") is not True:
            found.append("ReadonlyRootfs is not true")
        if container.status != "running":
            continue
        denied = container.exec_run(["touch", str(probe)])
        if denied.exit_code == 0 or b"Read-only file system" not in denied.output:
            found.append(f"touch {probe}: exit {denied.exit_code} {denied.output[-200:]!r}")
        scratch = container.exec_run(["sh", "-c", "touch /tmp/hardening-probe && rm /tmp/hardening-probe"])
        if scratch.exit_code != 0:
            found.append(f"/tmp not writable: {scratch.output[-200:]!r}")
    assert {name: found for name, found in problems.items() if found} == {}


def test_every_container_has_exactly_one_init(compose_stack: ComposeStack) -> None:
    """The images' entrypoint, tini, is PID 1, and Docker added no init of its own (docker-init above tini)."""
    problems: dict[str, list[str]] = {}
    for name, container in containers(compose_stack.docker, compose_stack.config.compose.project).items():
        found = problems.setdefault(name, [])
        if container.attrs["HostConfig"].get("Init"):
            found.append("HostConfig.Init is set on an image whose entrypoint is tini")
        if container.status != "running":
            continue
        cmdline = container.exec_run(["cat", "/proc/1/cmdline"]).output.split(b"\0")
        if cmdline[:2] != [part.encode() for part in INIT_ENTRYPOINT]:
            found.append(f"PID 1 is {cmdline!r}")
        top = container.top()
        commands = [row[top["Titles"].index("CMD")] for row in top["Processes"]]
        inits = [c for c in commands if c.split()[0].rsplit("/", 1)[-1] in ("tini", "docker-init")]
        if len(inits) != 1:
            found.append(f"inits: {inits}")
    assert {name: found for name, found in problems.items() if found} == {}


def test_no_secret_in_any_container_environment(compose_stack: ComposeStack) -> None:
    secrets = load_secrets(compose_stack.config.state_dir / "secrets")
    values = [secrets.get(name).partition(":")[2] or secrets.get(name)
              for name in ("postgres_superuser", "postgres_prefect", "redis", "prefect_auth", "haproxy_stats",
                           "postgres_monitor", "redis_monitor", "s3_local")]
    for name, container in containers(compose_stack.docker, compose_stack.config.compose.project).items():
        listing = json.dumps(container.attrs["Config"].get("Env") or []) + json.dumps(container.attrs["Config"]["Cmd"])
        assert not [v for v in values if v in listing], f"a secret is in {name}'s environment or command"


def test_flows_and_flow_runs_through_the_load_balancer(compose_stack: ComposeStack) -> None:
    with compose_stack.client() as client:
        flow = client.post("/flows/", json={"name": f"compose-{uuid.uuid4().hex[:8]}"})
        assert flow.status_code in (200, 201), flow.text
        run = client.post("/flow_runs/", json={"flow_id": flow.json()["id"]})
        assert run.status_code in (200, 201), run.text
        assert client.get(f"/flow_runs/{run.json()['id']}").json()["flow_id"] == flow.json()["id"]


def test_a_real_flow_runs_against_the_compose_stack(compose_stack: ComposeStack, tmp_path: Path) -> None:
    exports = compose_stack.invoke("env")
    assert exports.returncode == 0, exports.stderr
    script = tmp_path / "hello.py"
    name = f"compose-hello-{uuid.uuid4().hex[:6]}"
    script.write_text(textwrap.dedent(f"""
        from prefect import flow, task

        @task
        def double(x: int) -> int:
            return 2 * x

        @flow(name={name!r})
        def hello() -> int:
            return double(21)

        assert hello() == 42
    """))
    shell = f"{exports.stdout}\nexport PREFECT_HOME={tmp_path}\nexec {sys.executable} {script}"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    with compose_stack.client() as client:
        runs = client.post("/flow_runs/filter", json={"flows": {"name": {"any_": [name]}}}).json()
    assert [r["state_type"] for r in runs] == ["COMPLETED"]


def test_a_second_deploy_with_nothing_changed_recreates_nothing(compose_stack: ComposeStack) -> None:
    before = compose_stack.containers()
    result = compose_stack.invoke("deploy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "nothing changed" in result.stderr
    assert compose_stack.containers() == before


def _create_runs(compose_stack: ComposeStack, flow_id: str, kill: Callable[[], object]) -> Any:
    return create_runs_while_killing(compose_stack.config.api_url, compose_stack.auth, compose_stack.verify, flow_id,
                                     kill, CLIENTS, REQUESTS_PER_CLIENT, KILL_AFTER)


def _count(compose_stack: ComposeStack, flow_id: str) -> int:
    with compose_stack.client() as client:
        return int(client.post("/flow_runs/count", json={"flows": {"id": {"any_": [flow_id]}}}).json())


def _flow(compose_stack: ComposeStack, prefix: str) -> str:
    with compose_stack.client() as client:
        return str(client.post("/flows/", json={"name": f"{prefix}-{uuid.uuid4().hex[:6]}"}).json()["id"])


def test_docker_kill_of_an_api_container_under_load_fails_no_request(compose_stack: ComposeStack) -> None:
    """`docker kill` is a manual stop to Docker (no restart policy applies): no client notices, status names the
    stopped replica, and a deploy brings it back."""
    victim = containers(compose_stack.docker, compose_stack.config.compose.project)["api-2"]
    flow_id = _flow(compose_stack, "compose-kill")
    done, failures = asyncio.run(_create_runs(compose_stack, flow_id, victim.kill))
    assert failures == []
    assert _count(compose_stack, flow_id) == len(done) == CLIENTS * REQUESTS_PER_CLIENT
    status = json.loads(compose_stack.invoke("status", "--json").stdout)
    assert {c["name"]: c["healthy"] for c in status["components"]}["api-2"] is False
    result = compose_stack.invoke("deploy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    compose_stack.wait_healthy("after the redeploy")


def _invoke_under_traffic(compose_stack: ComposeStack, *args: str) -> tuple[subprocess.CompletedProcess[str], int,
                                                                            list[str]]:
    """Run an invoke task while four clients create flow runs through the load balancer; every failure kept."""
    flow_id = _flow(compose_stack, "compose-traffic")
    failures: list[str] = []
    stop = False

    async def traffic() -> int:
        sent = 0
        async with httpx.AsyncClient(base_url=compose_stack.config.api_url, auth=compose_stack.auth, timeout=60,
                                     verify=compose_stack.verify) as client:
            while not stop:
                try:
                    response = await client.post("/flow_runs/", json={"flow_id": flow_id,
                                                                      "idempotency_key": str(uuid.uuid4())})
                    if response.status_code not in (200, 201):
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                sent += 1
        return sent

    async def main() -> tuple[subprocess.CompletedProcess[str], list[int]]:
        nonlocal stop
        clients = [asyncio.create_task(traffic()) for _ in range(4)]
        result = await asyncio.to_thread(compose_stack.invoke, *args)
        stop = True
        return result, list(await asyncio.gather(*clients))

    result, sent = asyncio.run(main())
    return result, sum(sent), failures


def test_rotating_the_redis_password_under_load_replaces_replicas_one_at_a_time_without_errors(
        compose_stack: ComposeStack) -> None:
    """Redis is brought up with both passwords before the replicas roll to the new one (before: the migration
    presented the new password to the old Redis and the deploy failed), then with the new one only. The replicas'
    new environment replaces them one at a time behind HAProxy, as any change of their definition does."""
    secrets_dir = compose_stack.config.state_dir / "secrets"
    old = load_secrets(secrets_dir).get("redis")
    rotated, sent, failures = _invoke_under_traffic(compose_stack, "secrets.rotate", "redis")
    assert rotated.returncode == 0, rotated.stdout[-3000:] + rotated.stderr[-2000:]
    assert "replaced one at a time: api-1, api-2" in " ".join(rotated.stderr.split())
    assert load_secrets(secrets_dir).get("redis") != old
    assert not (secrets_dir / "redis.previous").exists()
    assert sent > 0 and failures == []
    compose_stack.wait_healthy("after the rotation")


def _events_of(compose_stack: ComposeStack, flow_run_id: str) -> list[str]:
    with compose_stack.client() as client:
        response = client.post("/events/filter", json={"filter": {"any_resource": {
            "id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50})
    assert response.status_code == 200, response.text
    return [e["event"] for e in response.json()["events"]]


def test_after_a_redis_crash_the_background_services_still_persist_events(compose_stack: ComposeStack) -> None:
    """Redis dies (SIGKILL, as a crash) and Docker restarts it; the services follow it (they would silently stop
    consuming otherwise), and a state change made afterwards reaches the events table."""
    found = containers(compose_stack.docker, compose_stack.config.compose.project)
    redis, services = found["redis"], found["services-1"]
    redis_restarts, services_restarts = redis.attrs["RestartCount"], services.attrs["RestartCount"]
    os.kill(redis.attrs["State"]["Pid"], signal.SIGKILL)

    def restarted() -> bool:
        redis.reload()
        services.reload()
        return (redis.attrs["RestartCount"] > redis_restarts and services.attrs["RestartCount"] > services_restarts
                and redis.status == services.status == "running")

    wait_until(restarted, 120, "Redis and the background services restarted by Docker",
               fix="invoke logs services-1 --target compose")
    compose_stack.wait_healthy("after Redis crashed")
    flow_id = _flow(compose_stack, "after-redis")
    with compose_stack.client() as client:
        run = client.post("/flow_runs/", json={"flow_id": flow_id}).json()["id"]
        assert client.post(f"/flow_runs/{run}/set_state", json={"state": {"type": "RUNNING"}, "force": True}).is_success
    wait_until(lambda: "prefect.flow-run.Running" in _events_of(compose_stack, run), 120,
               "the flow run's event persisted by the background services",
               fix="invoke logs services-1 --target compose")
