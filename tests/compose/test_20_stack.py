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
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from infra.compose.deploy import containers
from infra.config import StackConfig, load_config
from infra.secrets import load_secrets
from tests.conftest import free_ports

pytestmark = pytest.mark.compose

REPO = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).parent / "invoke")
CLIENTS, REQUESTS_PER_CLIENT, KILL_AFTER = 20, 20, 100
BACK_TIMEOUT_S = 180


@dataclass
class ComposeStack:
    env: dict[str, str]
    config: StackConfig
    docker: docker.DockerClient

    def invoke(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([INVOKE, *args, "--target", "compose"] if args[0] not in ("render",) else [INVOKE, *args],
                              cwd=REPO, env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout, check=False)

    @property
    def auth(self) -> tuple[str, str]:
        user, _, password = load_secrets(self.config.state_dir / "secrets").get("prefect_auth").partition(":")
        return user, password

    @property
    def verify(self) -> str | bool:
        ca = self.config.state_dir / "secrets" / "lb_ca.crt"
        return str(ca) if ca.exists() else True

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.config.api_url, auth=self.auth, timeout=30, verify=self.verify)

    def containers(self) -> dict[str, str]:
        return {name: c.id for name, c in containers(self.docker, self.config.compose.project).items()}

    def wait_healthy(self, why: str) -> None:
        deadline = time.monotonic() + BACK_TIMEOUT_S
        while True:
            result = self.invoke("status", "--json")
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"compose stack not healthy {why} after {BACK_TIMEOUT_S} s:\n{result.stdout[-3000:]}"
                            f"\n{result.stderr[-2000:]}")
            time.sleep(1)


@pytest.fixture(scope="module")
def stack(docker_engine: str, compose_images: object,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    lb, stats, prometheus, alertmanager = free_ports(4)
    state = tmp_path_factory.mktemp("compose") / "state"
    env = {
        "PREFECT_STACK_TARGET": "compose",
        "PREFECT_STACK_LOCAL__STATE_DIR": str(state),
        "PREFECT_STACK_COMPOSE__PROJECT": f"pstest-{os.getpid()}",
        "PREFECT_STACK_COMPOSE__DOCKER_HOST": docker_engine,
        "PREFECT_STACK_COMPOSE__BASE": "debootstrap",
        # Their upstream images cannot be pulled here; their files are validated offline (unit tests).
        "PREFECT_STACK_COMPOSE__GRAFANA": "false",
        "PREFECT_STACK_COMPOSE__JAEGER": "false",
        "PREFECT_STACK_LOAD_BALANCER__PORT": str(lb),
        "PREFECT_STACK_LOAD_BALANCER__STATS_PORT": str(stats),
        "PREFECT_STACK_MONITORING__PROMETHEUS_PORT": str(prometheus),
        "PREFECT_STACK_MONITORING__ALERTMANAGER_PORT": str(alertmanager),
        "PREFECT_STACK_MONITORING__SCRAPE_INTERVAL_S": "2",
        "PREFECT_STACK_API__REPLICAS": "2",
    }
    inherited = {k: v for k, v in os.environ.items() if k.startswith("PREFECT_STACK_")}
    saved = dict(os.environ)
    for key in inherited:
        del os.environ[key]
    os.environ.update(env)
    config = load_config()
    client = docker.DockerClient(base_url=docker_engine)
    stack = ComposeStack(env, config, client)
    try:
        result = stack.invoke("deploy")
        assert result.returncode == 0, f"deploy failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        yield stack
    finally:
        stack.invoke("destroy", "--yes")
        os.environ.clear()
        os.environ.update(saved)
        client.close()


def test_every_service_is_healthy(stack: ComposeStack) -> None:
    result = stack.invoke("status", "--json")
    report = json.loads(result.stdout)
    unhealthy = [c["name"] for c in report["components"] if not c["healthy"]]
    assert unhealthy == [] and result.returncode == 0
    names = {c["name"] for c in report["components"]}
    assert {"postgres", "pgbouncer", "redis", "s3", "migrate", "api-1", "api-2", "services-1", "haproxy",
            "prometheus", "alertmanager"} <= names


def test_no_secret_in_any_container_environment(stack: ComposeStack) -> None:
    secrets = load_secrets(stack.config.state_dir / "secrets")
    values = [secrets.get(name).partition(":")[2] or secrets.get(name)
              for name in ("postgres_superuser", "postgres_prefect", "redis", "prefect_auth", "haproxy_stats",
                           "postgres_monitor", "redis_monitor", "s3_local")]
    for name, container in containers(stack.docker, stack.config.compose.project).items():
        listing = json.dumps(container.attrs["Config"].get("Env") or []) + json.dumps(container.attrs["Config"]["Cmd"])
        assert not [v for v in values if v in listing], f"a secret is in {name}'s environment or command"


def test_flows_and_flow_runs_through_the_load_balancer(stack: ComposeStack) -> None:
    with stack.client() as client:
        flow = client.post("/flows/", json={"name": f"compose-{uuid.uuid4().hex[:8]}"})
        assert flow.status_code in (200, 201), flow.text
        run = client.post("/flow_runs/", json={"flow_id": flow.json()["id"]})
        assert run.status_code in (200, 201), run.text
        assert client.get(f"/flow_runs/{run.json()['id']}").json()["flow_id"] == flow.json()["id"]


def test_a_real_flow_runs_against_the_compose_stack(stack: ComposeStack, tmp_path: Path) -> None:
    exports = stack.invoke("env")
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
    with stack.client() as client:
        runs = client.post("/flow_runs/filter", json={"flows": {"name": {"any_": [name]}}}).json()
    assert [r["state_type"] for r in runs] == ["COMPLETED"]


def test_a_second_deploy_with_nothing_changed_recreates_nothing(stack: ComposeStack) -> None:
    before = stack.containers()
    result = stack.invoke("deploy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "nothing changed" in result.stderr
    assert stack.containers() == before


async def _create_runs(stack: ComposeStack, flow_id: str, kill: object) -> tuple[list[str], list[str]]:
    done: list[str] = []
    failures: list[str] = []
    killed = asyncio.Event()

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=stack.config.api_url, auth=stack.auth, timeout=60,
                                     verify=stack.verify) as client:
            for _ in range(REQUESTS_PER_CLIENT):
                body = {"flow_id": flow_id, "idempotency_key": str(uuid.uuid4())}
                try:
                    response = await client.post("/flow_runs/", json=body)
                    if response.status_code in (200, 201):
                        done.append(body["idempotency_key"])
                    else:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                if len(done) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    kill()  # type: ignore[operator]

    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    assert killed.is_set(), "the replica was never killed: the test proved nothing"
    return done, failures


def _count(stack: ComposeStack, flow_id: str) -> int:
    with stack.client() as client:
        return int(client.post("/flow_runs/count", json={"flows": {"id": {"any_": [flow_id]}}}).json())


def _flow(stack: ComposeStack, prefix: str) -> str:
    with stack.client() as client:
        return str(client.post("/flows/", json={"name": f"{prefix}-{uuid.uuid4().hex[:6]}"}).json()["id"])


def test_crash_of_an_api_container_under_load_fails_no_request(stack: ComposeStack) -> None:
    """SIGKILL of the replica's process (a crash, as the kernel's OOM killer does it): the restart policy brings
    the container back by itself."""
    victim = containers(stack.docker, stack.config.compose.project)["api-1"]
    restarts = victim.attrs["RestartCount"]
    flow_id = _flow(stack, "compose-crash")
    done, failures = asyncio.run(_create_runs(stack, flow_id, lambda: os.kill(victim.attrs["State"]["Pid"],
                                                                             signal.SIGKILL)))
    assert failures == []
    assert len(done) == CLIENTS * REQUESTS_PER_CLIENT
    assert _count(stack, flow_id) == CLIENTS * REQUESTS_PER_CLIENT  # every run stored once
    stack.wait_healthy("after the replica crashed")
    victim.reload()
    assert victim.attrs["RestartCount"] == restarts + 1  # the same container, restarted by Docker


def test_docker_kill_of_an_api_container_under_load_fails_no_request(stack: ComposeStack) -> None:
    """`docker kill` is a manual stop to Docker (no restart policy applies): no client notices, status names the
    stopped replica, and a deploy brings it back."""
    victim = containers(stack.docker, stack.config.compose.project)["api-2"]
    flow_id = _flow(stack, "compose-kill")
    done, failures = asyncio.run(_create_runs(stack, flow_id, victim.kill))
    assert failures == []
    assert _count(stack, flow_id) == len(done) == CLIENTS * REQUESTS_PER_CLIENT
    status = json.loads(stack.invoke("status", "--json").stdout)
    assert {c["name"]: c["healthy"] for c in status["components"]}["api-2"] is False
    result = stack.invoke("deploy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    stack.wait_healthy("after the redeploy")


def test_a_configuration_change_replaces_replicas_one_at_a_time_without_errors(stack: ComposeStack) -> None:
    stack.env["PREFECT_STACK_API__LOG_LEVEL"] = "INFO"
    os.environ["PREFECT_STACK_API__LOG_LEVEL"] = "INFO"
    try:
        flow_id = _flow(stack, "compose-roll")
        failures: list[str] = []
        stop = False

        async def traffic() -> int:
            sent = 0
            async with httpx.AsyncClient(base_url=stack.config.api_url, auth=stack.auth, timeout=60,
                                         verify=stack.verify) as client:
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
            deployed = await asyncio.to_thread(stack.invoke, "deploy")
            stop = True
            return deployed, list(await asyncio.gather(*clients))

        deployed, sent = asyncio.run(main())
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-2000:]
        assert "replaced one at a time: api-1, api-2" in " ".join(deployed.stderr.split())
        assert sum(sent) > 0 and failures == []
    finally:
        del stack.env["PREFECT_STACK_API__LOG_LEVEL"]
        os.environ.pop("PREFECT_STACK_API__LOG_LEVEL", None)
        stack.invoke("deploy")
        stack.wait_healthy("after the configuration was restored")


def test_destroy_leaves_nothing_of_the_project(stack: ComposeStack) -> None:
    project = stack.config.compose.project
    result = stack.invoke("destroy", "--yes")
    assert result.returncode == 0, result.stderr
    labelled = {"label": f"com.docker.compose.project={project}"}
    assert stack.docker.containers.list(all=True, filters=labelled) == []
    assert stack.docker.volumes.list(filters=labelled) == []
    assert stack.docker.networks.list(filters=labelled) == []
    assert not stack.config.state_dir.exists()
