"""A Docker engine and the compose target's images, once per test session.

Which engine (the rule): DOCKER_HOST when it is set, else the default socket (/var/run/docker.sock). If that engine
answers, the tests use it (its images are reused: an unchanged image is not rebuilt). If it does not answer - no
engine on this machine, or DOCKER_HOST set to something unreachable on purpose, e.g.
``DOCKER_HOST=unix:///nonexistent.sock`` - the session starts a private dockerd under a temporary directory (needs
root; installs Debian's docker.io if dockerd is missing) and stops it at the end, so CI needs no engine set up.
A private engine starts empty: the session then builds every image from scratch (a few minutes).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from infra.api_client import load_balancer_verify
from infra.compose.deploy import containers
from infra.config import ENV_PREFIX, StackConfig, load_config
from infra.containers.engine import DEFAULT_DOCKER_HOST, PrivateDockerEngine, ping
from infra.containers.images import ImageRefs, ImageResult, ensure_images
from infra.errors import UserError
from infra.progress import PlainProgress
from infra.secrets import load_secrets
from tests.conftest import free_ports
from tests.integration.conftest import MONITORING_AT_TEST_SPEED


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """The DOCKER_HOST the compose tests use (see the module's docstring for the rule)."""
    wanted = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    if ping(wanted) is not None:
        yield wanted
        return
    # Short path: a unix socket path is limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="prefect-stack-dockerd-", dir="/tmp"))
    try:
        with PrivateDockerEngine(directory) as url:
            yield url
    except UserError as exc:
        pytest.fail(f"no Docker engine at {wanted}, and a private one could not start: {exc}", pytrace=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_client(docker_engine: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_engine, timeout=900)
    yield client
    client.close()


@pytest.fixture(scope="session")
def compose_config(docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """The compose target on that engine, Debian base by debootstrap (no registry here), state in a tmp dir."""
    state = tmp_path_factory.mktemp("compose-state")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIX):
                patch.delenv(name)
        yield StackConfig(target="compose", local={"state_dir": state},
                          compose={"base": "debootstrap", "docker_host": docker_engine})


@pytest.fixture(scope="session")
def compose_build(compose_config: StackConfig, docker_client: docker.DockerClient) -> list[ImageResult]:
    """What the session's first ensure_images did (built, imported or found up to date), with durations."""
    results = ensure_images(compose_config, docker_client, PlainProgress(print))
    for result in results:
        print(result.describe())
    return results


@pytest.fixture(scope="session")
def compose_images(compose_build: list[ImageResult]) -> ImageRefs:
    """The image references, every image present on the engine."""
    refs = {result.role: result.ref for result in compose_build}
    return ImageRefs(base=refs["base"], system=refs["system"], prefect=refs["prefect"])


REPO = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).parent / "invoke")
BACK_TIMEOUT_S = 180


@dataclass
class ComposeStack:
    env: dict[str, str]
    config: StackConfig
    docker: docker.DockerClient

    def invoke(self, *args: str, timeout: float = 900,
               changed: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real CLI against this stack, as an operator would (only this stack's PREFECT_STACK_* set, with
        ``changed`` settings over them: a model an operator edited)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        return subprocess.run([INVOKE, *args, "--target", "compose"], cwd=REPO,
                              env={**inherited, **self.env, **(changed or {})},
                              capture_output=True, text=True, timeout=timeout, check=False)

    @property
    def auth(self) -> tuple[str, str]:
        user, _, password = load_secrets(self.config.state_dir / "secrets").get("prefect_auth").partition(":")
        return user, password

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """Trust the deployment's CA (written by deploy where `invoke env` points clients)."""
        return load_balancer_verify(self.config)

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


@pytest.fixture(scope="session")
def compose_stack(docker_engine: str, compose_images: ImageRefs,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """One compose deployment for the session (tests/compose/test_99_destroy.py destroys it last, and checks)."""
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
        "PREFECT_STACK_COMPOSE__LOKI": "false",
        "PREFECT_STACK_LOAD_BALANCER__PORT": str(lb),
        "PREFECT_STACK_LOAD_BALANCER__STATS_PORT": str(stats),
        "PREFECT_STACK_MONITORING__PROMETHEUS_PORT": str(prometheus),
        "PREFECT_STACK_MONITORING__ALERTMANAGER_PORT": str(alertmanager),
        **MONITORING_AT_TEST_SPEED,
        "PREFECT_STACK_API__REPLICAS": "2",
        # Two background-services processes, as Kubernetes runs by default (no double work: test_20_stack.py).
        "PREFECT_STACK_SERVICES__REPLICAS": "2",
        # Workers at test speed (test_40_workers.py): a dead run is noticed after 2 x 30 s (Prefect's minimum
        # heartbeat), and a due run is picked up within 2 s.
        "PREFECT_STACK_WORKERS__FLOW_HEARTBEAT_S": "30",
        "PREFECT_STACK_WORKERS__MISSED_HEARTBEATS": "2",
        "PREFECT_STACK_WORKERS__QUERY_INTERVAL_S": "2",
    }
    # Hermetic: the operator's own PREFECT_STACK_* settings must not reach the test stack, and the session's
    # environment stays untouched (the local target's tests run after these).
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIX):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        config = load_config()
    client = docker.DockerClient(base_url=docker_engine)
    stack = ComposeStack(env, config, client)
    try:
        result = stack.invoke("deploy")
        assert result.returncode == 0, f"deploy failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        yield stack
    finally:
        stack.invoke("destroy", "--yes")
        client.close()


