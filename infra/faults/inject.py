"""The faults a drill injects, and what every target implements to inject them into its own components.

A crash is SIGKILL (the process is gone, its supervisor brings it back), a freeze is SIGSTOP of the component's
processes for a while, then SIGCONT (a stalled disk, a long GC pause, a paused VM), a restart is the graceful
restart an operator makes (``invoke restart``). A held fault keeps the component down (stopped) for as long as the
drill asks, long enough for its alert rule's ``for:`` window.
"""

from __future__ import annotations

from typing import Literal, Protocol

Fault = Literal["crash", "freeze", "restart"]
FAULTS: tuple[Fault, ...] = ("crash", "freeze", "restart")


class FaultInjector(Protocol):
    """One target's way of hurting its own components. Names are those ``invoke status`` shows."""

    @property
    def stack_name(self) -> str:
        """What the operator types to confirm a drill against this deployment."""

    def components(self) -> list[str]:
        """Every component a drill may hurt, in ``invoke status`` order."""

    def instance(self, component: str) -> str:
        """What identifies the running instance (a pid, a container id): it changes when the component restarts."""

    def crash(self, component: str) -> None: ...
    def freeze(self, component: str) -> None: ...
    def thaw(self, component: str) -> None: ...
    def restart(self, component: str) -> None: ...
    def hold_down(self, component: str) -> None:
        """Stop the component (its supervisor does not bring it back) until ``release``."""
    def release(self, component: str) -> None: ...


def kind_of(component: str) -> str:
    """The kind of a component from its name: ``api-2`` -> ``api``, ``worker-default-1`` -> ``worker``."""
    for prefix in ("api", "services", "worker"):
        if component == prefix or component.startswith(prefix + "-"):
            return prefix
    return component


# The alert that says a component is down, by kind: what a drill holding the component down expects to fire, and
# to resolve once the component is back. Not listed: Prometheus and Alertmanager, which cannot report their own
# death (an outside check must watch them, docs/fault-drills.md); the background services, of which two run and a
# dead one is back within seconds (both stuck: PrefectEventsNotConsumed, after 10 minutes); the local S3 endpoint,
# the backup scheduler and the log pruner, whose absence the backup alerts and the disk alerts report in hours.
ALERT_FOR_KIND: dict[str, str] = {
    "api": "PrefectApiReplicaDown",
    "postgres": "PostgresDown",
    "pgbouncer": "PgBouncerDown",
    "redis": "RedisDown",
    "haproxy": "LoadBalancerDown",
    "worker": "PrefectWorkPoolWithoutWorker",
    "node-exporter": "MonitoringTargetDown",
    "postgres-exporter": "MonitoringTargetDown",
    "redis-exporter": "MonitoringTargetDown",
    "prefect-exporter": "MonitoringTargetDown",
}
