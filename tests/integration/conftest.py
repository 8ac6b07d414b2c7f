"""The real stack, deployed once per test session on free ports in a temporary state directory.

Three API replicas on a fresh database: the deploy itself proves that several replicas can start at the
same moment without the block-registration race.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infra.api_client import load_balancer_verify
from infra.config import StackConfig, load_config
from infra.layout import StateLayout
from infra.local.deploy import DeployReport, deploy
from infra.local.operate import destroy, settle, unhealthy_summary
from infra.secrets import load_secrets
from tests.conftest import free_ports

REPO = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).parent / "invoke")
REPLICAS = 3
SERVICES_REPLICAS = 2
# How long a test may take to leave the stack healthy again: supervisord restarting a killed replica and HAProxy
# routing to it again take seconds; the bound is generous for a machine whose cores are busy with other work.
HEALTHY_TIMEOUT_S = 180

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    env: dict[str, str]  # PREFECT_STACK_* variables that select this stack
    config: StackConfig
    layout: StateLayout
    first_deploy: DeployReport

    @property
    def auth(self) -> tuple[str, str]:
        user, _, password = load_secrets(self.layout.secrets).get("prefect_auth").partition(":")
        return user, password

    @property
    def url(self) -> str:
        return self.config.api_url

    def client(self, **kwargs: object) -> httpx.Client:
        """Through the load balancer, trusting its certificate when TLS is on."""
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=30, verify=load_balancer_verify(self.config),
                            **kwargs)  # type: ignore[arg-type]

    def invoke(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the real CLI against this stack, as an operator would."""
        return subprocess.run(
            [INVOKE, *args], cwd=REPO, env={**os.environ, **self.env}, capture_output=True, text=True,
            check=check, timeout=600,
        )

    def status(self) -> dict[str, object]:
        result = self.invoke("status", "--json")
        data: dict[str, object] = json.loads(result.stdout)
        return data

    def pids(self) -> dict[str, int]:
        return {c["name"]: c["pid"] for c in self.status()["components"]}  # type: ignore[index, union-attr]

    def current_config(self) -> StackConfig:
        """The configuration as the tests have changed it so far (``env`` is edited by some of them)."""
        with _environment(self.env):
            return load_config()

    def wait_healthy(self, why: str, timeout_s: float = HEALTHY_TIMEOUT_S) -> None:
        """Poll (bounded) until every component is healthy and routed to; fail naming those that are not."""
        statuses = settle(self.current_config(), timeout_s)
        problems = unhealthy_summary(statuses)
        assert not problems, f"stack not healthy {why} after {timeout_s:.0f}s: {problems}"


@contextmanager
def _environment(overrides: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Monitoring at test speed: scrapes and rule evaluations every second, a replica alerts after 2 s out of the load
# balancer, and Alertmanager notifies at once. Every other rule keeps its production timing.
MONITORING_AT_TEST_SPEED = {
    "PREFECT_STACK_MONITORING__SCRAPE_INTERVAL_S": "1",
    "PREFECT_STACK_MONITORING__EVALUATION_INTERVAL_S": "1",
    "PREFECT_STACK_MONITORING__REPLICA_DOWN_FOR": "2s",
    "PREFECT_STACK_MONITORING__GROUP_WAIT_S": "0",
}


# Workers at test speed: flow-run heartbeats at Prefect's 30 s minimum and 2 missed mark a run Crashed (60 s, not
# the production 3 minutes); workers poll every 2 s, so a run is picked up within seconds.
WORKERS_AT_TEST_SPEED = {
    "PREFECT_STACK_WORKERS__FLOW_HEARTBEAT_S": "30",
    "PREFECT_STACK_WORKERS__MISSED_HEARTBEATS": "2",
    "PREFECT_STACK_WORKERS__QUERY_INTERVAL_S": "2",
}


def stack_env(state_dir: Path, replicas: int) -> dict[str, str]:
    (lb, stats, pg, pgb, redis, s3, prom, am, node, pg_exp, redis_exp, prefect_exp, api_metrics, worker_health,
     *api) = free_ports(14 + replicas, consecutive=replicas)
    return {
        **MONITORING_AT_TEST_SPEED,
        **WORKERS_AT_TEST_SPEED,
        "PREFECT_STACK_WORKERS__HEALTH_BASE_PORT": str(worker_health),
        "PREFECT_STACK_MONITORING__PROMETHEUS_PORT": str(prom),
        "PREFECT_STACK_MONITORING__ALERTMANAGER_PORT": str(am),
        "PREFECT_STACK_MONITORING__NODE_EXPORTER_PORT": str(node),
        "PREFECT_STACK_MONITORING__POSTGRES_EXPORTER_PORT": str(pg_exp),
        "PREFECT_STACK_MONITORING__REDIS_EXPORTER_PORT": str(redis_exp),
        "PREFECT_STACK_MONITORING__PREFECT_EXPORTER_PORT": str(prefect_exp),
        "PREFECT_STACK_MONITORING__API_METRICS_PORT": str(api_metrics),
        "PREFECT_STACK_LOCAL__STATE_DIR": str(state_dir),
        "PREFECT_STACK_LOAD_BALANCER__PORT": str(lb),
        "PREFECT_STACK_LOAD_BALANCER__STATS_PORT": str(stats),
        "PREFECT_STACK_POSTGRES__PORT": str(pg),
        "PREFECT_STACK_PGBOUNCER__PORT": str(pgb),
        "PREFECT_STACK_REDIS__PORT": str(redis),
        "PREFECT_STACK_BACKUPS__S3__LOCAL_PORT": str(s3),
        "PREFECT_STACK_API__BASE_PORT": str(api[0]),
        "PREFECT_STACK_API__REPLICAS": str(replicas),
    }


@contextmanager
def temporary_state_root(prefix: str = "prefect-stack-test-") -> Iterator[Path]:
    """A directory for a test stack's state, removed afterwards. Directly under /tmp (not pytest's 0700 tmp tree):
    the service user must be able to reach it."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)  # noqa: S103 - holds no secret itself; the state dir below is locked down
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def deployed_stack(env: dict[str, str]) -> Iterator[Stack]:
    """Deploy the stack ``env`` selects, yield it once healthy, and destroy it (also when the deploy fails).

    Hermetic: every other PREFECT_STACK_* setting (an operator's own, or another test stack's) is out of the
    environment meanwhile, and back afterwards.
    """
    inherited = {k: v for k, v in os.environ.items() if k.startswith("PREFECT_STACK_")}
    for key in inherited:
        del os.environ[key]
    try:
        with _environment(env):
            config = load_config()
            try:
                _, report = deploy(config)
                stack = Stack(env, config, StateLayout(config.state_dir), report)
                stack.wait_healthy("after the first deploy")
                yield stack
            finally:
                destroy(config)
    finally:
        os.environ.update(inherited)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with temporary_state_root() as root:
        # Two background-services processes, as Kubernetes runs by default: every test then also shows that two do
        # no double work (tests/integration/test_12_services.py checks it directly).
        env = {**stack_env(root / "state", REPLICAS), "PREFECT_STACK_SERVICES__REPLICAS": str(SERVICES_REPLICAS)}
        with deployed_stack(env) as deployed:
            yield deployed


@pytest.fixture(autouse=True)
def healthy_stack(stack: Stack) -> Iterator[Stack]:
    """Every integration test starts on a healthy stack and leaves it healthy.

    Tests kill, stop, restart and reconfigure components; what they disturb must be back (bounded wait) before the
    next test compares pids or sends traffic. A test that leaves a component broken fails here, naming it.
    """
    yield stack
    stack.wait_healthy("after this test")
