"""The fault drill on the local stack: a crash (SIGKILL) and a freeze (SIGSTOP, then SIGCONT) of one component of
every kind (an API replica's crash among them, which the earlier failover test covered), each under Prefect clients
creating flow runs and taking them through their states with Prefect's own HTTP client and retry policy. No client
error, no acknowledged write lost, nothing applied twice, and the stack healthy again. How fast it is healthy again
is the drill's figure (docs/fault-drills.md), not asserted here.

Kept short for the suite: 6 clients, a 3 s freeze; `invoke fault-drill` runs 20 clients and 20 s freezes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.faults.drill import DrillOptions, drill_stack, run_fault
from infra.faults.drill import Stack as DrillStack
from infra.faults.inject import Fault, kind_of
from infra.targets import target_for
from tests.integration.conftest import Stack

OPTIONS = DrillOptions(clients=6, warmup_operations=20, freeze_s=3.0, after_healthy_s=0.5, timing_goals=False)
# One component of every kind the local stack runs (replicas of a kind are alike).
KINDS = ("postgres", "pgbouncer", "redis", "api", "services", "haproxy", "worker", "s3", "backup-scheduler",
         "prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter", "prefect-exporter",
         "log-pruner")


@pytest.fixture(scope="module")
def drill(stack: Stack) -> Iterator[DrillStack]:
    yield drill_stack(target_for(stack.current_config()))


def _one_of(drill: DrillStack, kind: str) -> str:
    components = [name for name in drill.injector.components() if kind_of(name) == kind]
    assert components, f"the stack runs no {kind}: {drill.injector.components()}"
    return components[-1]


def test_every_kind_of_component_is_drilled(drill: DrillStack) -> None:
    assert {kind_of(name) for name in drill.injector.components()} == set(KINDS)


@pytest.mark.parametrize("fault", ["crash", "freeze"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_fault_costs_prefect_clients_nothing(drill: DrillStack, kind: str, fault: Fault) -> None:
    result = run_fault(drill, _one_of(drill, kind), fault, OPTIONS)
    assert result.operations > OPTIONS.warmup_operations
    assert result.missed == [], (f"{fault} of {result.component}: {result.missed}; errors seen: "
                                 f"{result.error_samples}; retried: {result.retried}")


def test_a_replica_held_down_past_its_alert_window_fires_the_alert_which_resolves_once_back(
        drill: DrillStack) -> None:
    # The suite's monitoring runs at test speed: PrefectApiReplicaDown fires after 2 s out of the load balancer.
    options = DrillOptions(clients=4, warmup_operations=10, hold_s=10.0, after_healthy_s=1.0, timing_goals=False)
    result = run_fault(drill, _one_of(drill, "api"), "crash", options)
    assert result.expected_alert == "PrefectApiReplicaDown"
    assert result.missed == [], f"{result.missed}; alerts seen: {result.alerts}; errors: {result.error_samples}"
    fired = next(alert for alert in result.alerts if alert.name == "PrefectApiReplicaDown")
    assert fired.resolved_at_s is not None and fired.resolved_at_s > fired.fired_at_s
