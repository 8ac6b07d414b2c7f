"""Shared test helpers: free ports and the environment that points the stack at a private state directory."""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx

# Never used by tests, so a deployment running on the defaults is never disturbed.
DEFAULT_PORTS = {4200, 8404, 15432, 16432, 16379, 19000, 14200, 14201, 14202, 19090, 19093, 19100, 19121, 19187, 19200}


def free_ports(count: int, consecutive: int = 1) -> list[int]:
    """Distinct free loopback ports; the last ``consecutive`` of them are a contiguous run (API replicas)."""
    ports: list[int] = []
    while len(ports) < count - consecutive:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in ports and port not in DEFAULT_PORTS:
            ports.append(port)
    for base in range(21000, 30000, 7):
        run = list(range(base, base + consecutive))
        if any(p in ports for p in run):
            continue
        ok = True
        for p in run:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return ports + run
    raise RuntimeError("no free run of ports")


# What Prefect's own client retries (prefect/client/base.py): a connection that broke after the request went out,
# e.g. a replica killed between its response headers and body, which the load balancer can no longer retry. With an
# idempotency key the retry returns the run the first attempt created, never a second one.
PREFECT_CLIENT_RETRIES = (httpx.RemoteProtocolError, httpx.ReadError)


async def post_like_prefect_client(client: httpx.AsyncClient, path: str, body: dict[str, object],
                                   retried: list[str], attempts: int = 3) -> httpx.Response:
    """POST as Prefect's client does: the same request again on a broken connection (recorded in ``retried``)."""
    for attempt in range(1, attempts + 1):
        try:
            return await client.post(path, json=body)
        except PREFECT_CLIENT_RETRIES as exc:
            retried.append(f"{type(exc).__name__}: {exc}")
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def create_monitored_workload(client: httpx.Client) -> None:
    """What every dashboard panel shows data for: a deployment in a work pool with a worker, late, running and
    failed flow runs, a run of the pool claimed as a worker claims it, a running task run, and the traffic of
    creating them through the load balancer."""
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    assert client.post("/work_pools/", json={"name": pool, "type": "process"}).status_code == 201
    flow_id = client.post("/flows/", json={"name": "monitored"}).json()["id"]
    deployment = client.post("/deployments/", json={"name": "hourly", "flow_id": flow_id,
                                                      "work_pool_name": pool}).json()["id"]
    missed = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    for _ in range(2):
        scheduled = {"type": "SCHEDULED", "state_details": {"scheduled_time": missed}}
        assert client.post(f"/deployments/{deployment}/create_flow_run", json={"state": scheduled}).is_success
    due = {"type": "SCHEDULED", "state_details": {"scheduled_time": datetime.now(UTC).isoformat()}}
    claimed = client.post(f"/deployments/{deployment}/create_flow_run", json={"state": due}).json()["id"]
    for state in ("PENDING", "FAILED"):  # a worker's claim (a pickup delay), then an outcome in the pool
        response = client.post(f"/flow_runs/{claimed}/set_state", json={"state": {"type": state}})
        assert response.json()["status"] == "ACCEPT", response.text
    running = client.post("/flow_runs/", json={"flow_id": flow_id, "state": {"type": "RUNNING"}}).json()["id"]
    assert client.post("/flow_runs/", json={"flow_id": flow_id, "state": {"type": "FAILED"}}).is_success
    task = {"flow_run_id": running, "task_key": "extract", "dynamic_key": "0", "state": {"type": "RUNNING"}}
    assert client.post("/task_runs/", json=task).is_success
    assert client.post(f"/work_pools/{pool}/workers/heartbeat", json={"name": "worker-1"}).is_success


async def create_runs_while_killing(
    base_url: str, auth: tuple[str, str], verify: ssl.SSLContext | bool, flow_id: str, kill: Callable[[], object],
    clients: int = 20, per_client: int = 20, kill_after: int = 100,
) -> tuple[list[str], list[str]]:
    """``clients`` closed-loop clients create flow runs with idempotency keys; ``kill`` runs once ``kill_after`` of
    them were created. Returns (the keys of the runs created, the failures clients saw)."""
    done: list[str] = []
    failures: list[str] = []
    retried: list[str] = []  # broken connections retried as Prefect's client does (idempotent)
    killed = asyncio.Event()

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=base_url, auth=auth, timeout=60, verify=verify) as client:
            for _ in range(per_client):
                # The idempotency key makes a retried POST return the run it already created, never a second one.
                body = {"flow_id": flow_id, "idempotency_key": str(uuid.uuid4())}
                try:
                    response = await post_like_prefect_client(client, "/flow_runs/", body, retried)
                    if response.status_code in (200, 201):
                        done.append(body["idempotency_key"])
                    else:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                if len(done) >= kill_after and not killed.is_set():
                    killed.set()
                    kill()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    assert killed.is_set(), "the replica was never killed: the test proved nothing"
    return done, failures
