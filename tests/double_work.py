"""Checks that several background-services processes do no double work, as a user of the API would see it: each
scheduled run created once, each event persisted once. Shared by the local and compose suites (their stacks run two
services processes, as Kubernetes does by default)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

# Prefect's recent-deployments scheduler looks every 5 s, its main loop every 60 s; events are flushed every 5 s.
APPEAR_TIMEOUT_S = 120.0
# After the first runs appear: long enough for every services process's scheduler to have had its turn.
SETTLE_S = 20.0


def _poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s; last seen: {value!r}"
        time.sleep(1)


def _runs_of(client: httpx.Client, deployment_id: str) -> list[dict[str, Any]]:
    response = client.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}},
                                                      "limit": 200})
    response.raise_for_status()
    return list(response.json())


def duplicated_scheduled_runs(client: httpx.Client) -> list[str]:
    """A new hourly deployment; once its first runs exist and every scheduler had its turn, the start times that
    have more than one run (none expected)."""
    flow_id = client.post("/flows/", json={"name": f"scheduled-{uuid.uuid4().hex[:8]}"}).json()["id"]
    created = client.post("/deployments/", json={
        "name": "hourly", "flow_id": flow_id, "paused": False,
        "schedules": [{"schedule": {"interval": 3600}, "active": True}]})
    assert created.status_code in (200, 201), created.text
    deployment_id = created.json()["id"]
    _poll(lambda: _runs_of(client, deployment_id), lambda runs: len(runs) >= 3, APPEAR_TIMEOUT_S,
          "the scheduler created the deployment's first runs")
    # Not a wait for a condition: the check is that nothing more appears while the schedulers race for the slots.
    time.sleep(SETTLE_S)
    slots = Counter(run["expected_start_time"] for run in _runs_of(client, deployment_id))
    return sorted(slot for slot, count in slots.items() if count > 1)


def duplicated_events(client: httpx.Client) -> dict[str, int]:
    """A flow run (created Pending) taken through Running and Completed; once its state events are persisted, the
    events persisted more than once (none expected)."""
    flow_id = client.post("/flows/", json={"name": f"events-{uuid.uuid4().hex[:8]}"}).json()["id"]
    run_id = client.post("/flow_runs/", json={"flow_id": flow_id}).json()["id"]
    for state in ("RUNNING", "COMPLETED"):
        answer = client.post(f"/flow_runs/{run_id}/set_state", json={"state": {"type": state}})
        assert answer.json()["status"] == "ACCEPT", answer.text

    def events() -> list[str]:
        response = client.post("/events/filter", json={
            "filter": {"resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50})
        response.raise_for_status()
        return [event["event"] for event in response.json()["events"]]

    wanted = {"prefect.flow-run.Running", "prefect.flow-run.Completed"}
    _poll(events, lambda seen: wanted <= set(seen), APPEAR_TIMEOUT_S, "the run's state events were persisted")
    return {name: count for name, count in Counter(events()).items() if count > 1}
