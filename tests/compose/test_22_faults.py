"""The fault drill on the compose stack: a crash (SIGKILL of the container's main process; Docker's restart policy
brings it back) of each data component and of an API replica, under Prefect clients using Prefect's own HTTP client
and retry policy: no client error, nothing lost or stored twice, the stack healthy again."""

from __future__ import annotations

import pytest

from infra.faults.drill import DrillOptions, drill_stack, run_fault
from infra.targets import target_for
from tests.compose.conftest import ComposeStack

pytestmark = pytest.mark.compose

OPTIONS = DrillOptions(clients=6, warmup_operations=20, after_healthy_s=1.0, timing_goals=False)


@pytest.mark.parametrize("component", ["postgres", "pgbouncer", "redis", "api-1"])
def test_a_crash_costs_prefect_clients_nothing(compose_stack: ComposeStack, component: str) -> None:
    result = run_fault(drill_stack(target_for(compose_stack.config)), component, "crash", OPTIONS)
    assert result.operations > OPTIONS.warmup_operations
    assert result.missed == [], (f"crash of {component}: {result.missed}; errors seen: {result.error_samples}; "
                                 f"retried: {result.retried}")
