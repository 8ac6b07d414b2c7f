"""No single API replica is a point of failure: SIGKILL one under load and no client request fails."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import httpx

from infra.console import wait_until
from infra.local.health import api_ready
from tests.conftest import post_like_prefect_client
from tests.integration.conftest import Stack

CLIENTS = 20
REQUESTS_PER_CLIENT = 20
KILL_AFTER = 100  # completed requests before the replica is killed
REPLICA_BACK_TIMEOUT_S = 120


async def _create_runs_while_killing(stack: Stack, flow_id: str, victim_pid: int) -> tuple[list[str], list[str]]:
    done: list[str] = []
    failures: list[str] = []
    retried: list[str] = []  # broken connections retried as Prefect's client does (idempotent)
    killed = asyncio.Event()

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=stack.url, auth=stack.auth, timeout=60) as client:
            for _ in range(REQUESTS_PER_CLIENT):
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
                if len(done) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    os.kill(victim_pid, signal.SIGKILL)

    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    assert killed.is_set(), "the replica was never killed: the test proved nothing"
    return done, failures


def test_sigkill_of_a_replica_under_load_fails_no_request(stack: Stack) -> None:
    victim = "api-2"
    victim_pid = stack.pids()[victim]
    with stack.client() as client:
        flow_id = client.post("/flows/", json={"name": f"failover-{uuid.uuid4().hex[:6]}"}).json()["id"]

    done, failures = asyncio.run(_create_runs_while_killing(stack, flow_id, victim_pid))

    assert failures == []
    assert len(done) == CLIENTS * REQUESTS_PER_CLIENT
    with stack.client() as client:
        count = client.post("/flow_runs/count", json={"flows": {"id": {"any_": [flow_id]}}}).json()
    assert count == CLIENTS * REQUESTS_PER_CLIENT  # nothing lost, nothing stored twice


def test_supervisor_brings_a_killed_replica_back(stack: Stack) -> None:
    victim = "api-1"
    port = stack.config.api_port(1)
    old_pid = stack.pids()[victim]
    os.kill(old_pid, signal.SIGKILL)
    # Bounded, generous on a busy machine: how fast it comes back is a benchmark's question, not a test's.
    wait_until(lambda: api_ready(port), REPLICA_BACK_TIMEOUT_S, f"{victim} after SIGKILL",
               fix=f"invoke logs {victim}")
    assert stack.pids()[victim] != old_pid
