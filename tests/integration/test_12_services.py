"""Two background-services processes (the shared stack runs two, as Kubernetes does by default) do no double work:
each scheduled run is created once, each event persisted once."""

from __future__ import annotations

from tests.double_work import duplicated_events, duplicated_scheduled_runs
from tests.integration.conftest import SERVICES_REPLICAS, Stack


def test_two_services_processes_run(stack: Stack) -> None:
    healthy = {c["name"] for c in stack.status()["components"] if c["healthy"]}  # type: ignore[union-attr, index]
    assert {f"services-{i}" for i in range(1, SERVICES_REPLICAS + 1)} <= healthy


def test_each_scheduled_run_is_created_once(stack: Stack) -> None:
    with stack.client() as client:
        assert duplicated_scheduled_runs(client) == []


def test_each_event_is_persisted_once(stack: Stack) -> None:
    with stack.client() as client:
        assert duplicated_events(client) == {}
