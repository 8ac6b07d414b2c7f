"""A real cluster, when one is given: the Kubernetes target deployed through the real CLI into a namespace of its
own, and a load generator that runs while something is done to the stack.

Skipped unless PREFECT_STACK_TEST_KUBECONFIG names a kubeconfig (no API server can run on the machines this
project is developed on). With it, these are required too, and their absence fails the session with its name:

- PREFECT_STACK_TEST_REGISTRY: the registry the cluster pulls from; the session builds and pushes the images there;
- PREFECT_STACK_TEST_INGRESS_URL: the ingress controller's address (https://IP or a name); requests carry the
  stack's host name as ``Host``, so no DNS entry is needed;
- PREFECT_STACK_TEST_S3_ENDPOINT, PREFECT_STACK_TEST_S3_BUCKET and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: the
  bucket the backup CronJob writes to (a prefix of the session's own);
- optionally PREFECT_STACK_TEST_PHYSICAL_BACKUPS=1 when the cluster has the Barman Cloud plugin: WAL archiving on,
  and the point-in-time recovery test runs.
The cluster needs CloudNativePG, cert-manager and an ingress controller in namespace ingress-nginx.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from infra.config import REPO_ROOT
from infra.secrets import load_secrets
from tests.conftest import post_like_prefect_client

KUBECONFIG_ENV = "PREFECT_STACK_TEST_KUBECONFIG"
REQUIRED = ("PREFECT_STACK_TEST_REGISTRY", "PREFECT_STACK_TEST_INGRESS_URL", "PREFECT_STACK_TEST_S3_ENDPOINT",
            "PREFECT_STACK_TEST_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
DEPLOY_TIMEOUT_S = 1800


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(KUBECONFIG_ENV):
        return
    skip = pytest.mark.skip(reason=f"needs a real Kubernetes cluster: set {KUBECONFIG_ENV} "
                                   "(docs/testing.md, 'On a real cluster')")
    for item in items:
        if "kubernetes_cluster" in item.keywords:
            item.add_marker(skip)


@dataclass
class ClusterStack:
    """The deployed stack: how to run the CLI and kubectl against it, and how to reach its API."""

    name: str
    namespace: str
    env: dict[str, str]
    state: Path
    ingress_url: str
    host: str

    def invoke(self, *args: str, timeout: float = DEPLOY_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO_ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def kubectl(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        result = subprocess.run(["kubectl", f"--namespace={self.namespace}", *args], env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    @property
    def auth(self) -> tuple[str, str]:
        user, _, password = load_secrets(self.state / "secrets").get("prefect_auth").partition(":")
        return user, password

    def client(self) -> httpx.Client:
        # The ingress controller's certificate is the test cluster's, not one a client could verify by name here.
        return httpx.Client(base_url=f"{self.ingress_url}/api", headers={"Host": self.host}, auth=self.auth,
                            verify=False, timeout=60)  # noqa: S501 - see above

    def wait_until(self, what: str, condition: Callable[[], bool], timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
            time.sleep(2)


@pytest.fixture(scope="session")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        pytest.fail(f"{KUBECONFIG_ENV} is set but {', '.join(missing)} is not: the cluster tests need them "
                    "(tests/kubernetes/conftest.py says what each is)", pytrace=False)
    tmp = tmp_path_factory.mktemp("cluster")
    name, namespace = "pstest", f"pstest-{os.getpid()}"
    host = f"{namespace}.prefect-stack.test"
    config = {
        "target": "kubernetes",
        "local": {"state_dir": str(tmp / "state")},
        "monitoring": {"enabled": False},  # kube-prometheus-stack is optional: not assumed
        "backups": {"s3": {"endpoint_url": os.environ["PREFECT_STACK_TEST_S3_ENDPOINT"],
                           "bucket": os.environ["PREFECT_STACK_TEST_S3_BUCKET"], "prefix": namespace},
                    # WAL archiving and base backups need the Barman Cloud plugin in the cluster.
                    "physical": {"enabled": os.environ.get("PREFECT_STACK_TEST_PHYSICAL_BACKUPS") == "1"}},
        "kubernetes": {"namespace": namespace, "name": name,
                       "image_registry": os.environ["PREFECT_STACK_TEST_REGISTRY"],
                       "ingress": {"host": host, "cluster_issuer": None, "tls_secret": f"{name}-tls"},
                       "wait_timeout_s": 900},
    }
    config_file = tmp / "stack.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PREFECT_STACK_CONFIG": str(config_file), "KUBECONFIG": os.environ[KUBECONFIG_ENV]}
    stack = ClusterStack(name, namespace, env, tmp / "state", os.environ["PREFECT_STACK_TEST_INGRESS_URL"].rstrip("/"),
                         host)
    try:
        for step in (("images.build",), ("images.push",), ("deploy", "--target", "kubernetes")):
            result = stack.invoke(*step)
            assert result.returncode == 0, f"invoke {' '.join(step)} failed:\n{result.stdout}\n{result.stderr}"
        yield stack
    finally:
        stack.invoke("destroy", "--yes", "--volumes", "--target", "kubernetes", timeout=900)
        stack.kubectl("delete", "namespace", namespace, "--wait=true", timeout=900, check=False)


@dataclass
class LoadResult:
    created: list[str] = field(default_factory=list)  # flow run ids
    failures: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)


def load_during(stack: ClusterStack, action: Callable[[], None], clients: int = 10,
                settle_s: float = 10.0) -> LoadResult:
    """``clients`` closed-loop clients create flow runs (with idempotency keys, retried as Prefect's client does)
    from before ``action`` starts until ``settle_s`` after it returned; ``action`` runs in a thread."""
    result = LoadResult()
    with stack.client() as client:
        flow_id = client.post("/flows/", json={"name": f"load-{uuid.uuid4().hex[:6]}"}).json()["id"]
    done = threading.Event()
    errors: list[BaseException] = []

    def run_action() -> None:
        try:
            action()
        except BaseException as exc:  # any failure of the action is re-raised in the test below
            errors.append(exc)
        finally:
            done.set()

    async def one_client(stop_at: list[float]) -> None:
        async with httpx.AsyncClient(base_url=f"{stack.ingress_url}/api", headers={"Host": stack.host},
                                     auth=stack.auth, verify=False, timeout=60) as client:  # noqa: S501
            while not stop_at or time.monotonic() < stop_at[0]:
                body = {"flow_id": flow_id, "idempotency_key": str(uuid.uuid4())}
                try:
                    response = await post_like_prefect_client(client, "/flow_runs/", body, result.retried)
                    if response.status_code in (200, 201):
                        result.created.append(response.json()["id"])
                    else:
                        result.failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    result.failures.append(f"{type(exc).__name__}: {exc}")

    async def main() -> None:
        stop_at: list[float] = []
        tasks = [asyncio.create_task(one_client(stop_at)) for _ in range(clients)]
        await asyncio.sleep(5)  # load established before the action: not a wait for a condition
        thread = threading.Thread(target=run_action, daemon=True)
        thread.start()
        while not done.is_set():
            await asyncio.sleep(0.5)
        stop_at.append(time.monotonic() + settle_s)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    if errors:
        raise errors[0]
    assert result.created, "no flow run was created: the load proved nothing"
    return result
