"""No single API replica is a point of failure: SIGKILL one under load and no client request fails."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

from infra.api_client import load_balancer_verify
from infra.console import wait_until
from infra.local.health import api_ready
from tests.conftest import create_runs_while_killing
from tests.integration.conftest import Stack

CLIENTS = 20
REQUESTS_PER_CLIENT = 20
KILL_AFTER = 100  # completed requests before the replica is killed
REPLICA_BACK_TIMEOUT_S = 120


def test_sigkill_of_a_replica_under_load_fails_no_request(stack: Stack) -> None:
    victim = "api-2"
    victim_pid = stack.pids()[victim]
    with stack.client() as client:
        flow_id = client.post("/flows/", json={"name": f"failover-{uuid.uuid4().hex[:6]}"}).json()["id"]

    done, failures = asyncio.run(create_runs_while_killing(
        stack.url, stack.auth, load_balancer_verify(stack.config), flow_id, lambda: os.kill(victim_pid, signal.SIGKILL),
        CLIENTS, REQUESTS_PER_CLIENT, KILL_AFTER))

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
