"""``invoke bench.faults``: how long a PostgreSQL crash costs, and what Prefect clients see, with the stack's pooler
and database timeouts against PgBouncer's and Prefect's own defaults for them.

One temporary local stack (2 API replicas). Each round deploys one side's settings, then crashes PostgreSQL
(SIGKILL of the postmaster; supervisord restarts it) ``crashes`` times under the fault drill's load (20 Prefect
clients with Prefect's own HTTP client and retry policy), measuring from each crash until every component is
healthy and routed to again, and counting the clients' errors. Rounds alternate defaults, stack, stack, defaults.

- defaults: PgBouncer's ``server_login_retry`` 15 s and ``query_wait_timeout`` 120 s, Prefect's database timeout
  10 s (``PREFECT_SERVER_DATABASE_TIMEOUT``);
- stack: the configuration's ``pgbouncer.server_login_retry_s``, ``pgbouncer.query_wait_timeout_s`` and
  ``api.db_timeout_s`` (1 s, 10 s and 30 s by default).

The replicas' translation of connection errors (infra/database/connect_errors.py) is code, on in both.

Goal (issue 18): PostgreSQL healthy again within 5 s of a crash, with no client error.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from infra import console
from infra.bench.harness import Verdict, allocate_stack_ports, cleaned_up, stack_config, temporary_workdir
from infra.config import StackConfig
from infra.errors import UserError
from infra.faults.drill import DrillOptions, drill_stack, run_fault
from infra.local.deploy import deploy
from infra.local.operate import destroy, settle, unhealthy_summary
from infra.targets import target_for

HEALTHY_GOAL_S = 5.0
SETTLE_TIMEOUT_S = 180
# PgBouncer's and Prefect's own values of the settings the stack changes.
DEFAULTS = {"server_login_retry_s": 15, "query_wait_timeout_s": 120, "db_timeout_s": 10}


@dataclass(frozen=True)
class FaultsBenchSettings:
    crashes: int = 3
    rounds: int = 2
    clients: int = 20


@dataclass
class CrashRound:
    settings: str  # "defaults" or "stack"
    healthy_after_s: list[float | None]
    client_errors: list[int]
    retried: list[int]
    lost_or_doubled: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FaultsBenchReport:
    settings: FaultsBenchSettings
    stack_values: dict[str, int]
    rounds: list[CrashRound] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def of(self, name: str) -> list[CrashRound]:
        return [r for r in self.rounds if r.settings == name]

    def healthy(self, name: str) -> list[float | None]:
        return [value for r in self.of(name) for value in r.healthy_after_s]

    def as_dict(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "stack_values": self.stack_values,
                "rounds": [r.as_dict() for r in self.rounds], "verdicts": [v.as_dict() for v in self.verdicts]}


def settings_of(config: StackConfig, name: str) -> StackConfig:
    """``config`` as configured ("stack"), or with PgBouncer's and Prefect's defaults ("defaults"). The defaults
    break the stack's own rule (query_wait_timeout below the database timeout): a copy is not validated again."""
    if name == "stack":
        return config
    pgbouncer = config.pgbouncer.model_copy(update={"server_login_retry_s": DEFAULTS["server_login_retry_s"],
                                                    "query_wait_timeout_s": DEFAULTS["query_wait_timeout_s"]})
    api = config.api.model_copy(update={"db_timeout_s": DEFAULTS["db_timeout_s"]})
    return config.model_copy(update={"pgbouncer": pgbouncer, "api": api})


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def judge(report: FaultsBenchReport) -> list[Verdict]:
    stack, defaults = report.healthy("stack"), report.healthy("defaults")
    errors = sum(sum(r.client_errors) for r in report.of("stack"))
    lost = sum(r.lost_or_doubled for r in report.rounds)
    if not stack or any(v is None for v in stack):
        healthy = Verdict(f"PostgreSQL crash: healthy within {HEALTHY_GOAL_S:g} s", "fail",
                          "a crash never got healthy" if stack else "not measured")
    else:
        worst = max(v for v in stack if v is not None)
        ratio = (median(stack) or 0) / (median(defaults) or 1) if defaults and median(defaults) else None
        healthy = Verdict(f"PostgreSQL crash: healthy within {HEALTHY_GOAL_S:g} s",
                          "pass" if worst <= HEALTHY_GOAL_S else "fail",
                          f"median {median(stack)} s, worst {worst} s (defaults: median {median(defaults)} s)", ratio)
    return [healthy,
            Verdict("0 client errors with the stack's settings", "pass" if errors == 0 else "fail", str(errors)),
            Verdict("0 runs or states lost or stored twice", "pass" if lost == 0 else "fail", str(lost))]


def run_faults_benchmark(settings: FaultsBenchSettings, configured: StackConfig) -> FaultsBenchReport:
    """Measure on a temporary stack with the pooler and timeout settings of ``configured``."""
    report = FaultsBenchReport(settings, {"server_login_retry_s": configured.pgbouncer.server_login_retry_s,
                                          "query_wait_timeout_s": configured.pgbouncer.query_wait_timeout_s,
                                          "db_timeout_s": configured.api.db_timeout_s})
    with temporary_workdir("prefect-stack-bench-faults-") as workdir:
        base = stack_config(workdir / "stack", allocate_stack_ports(2, set()), replicas=2)
        base = base.model_copy(update={
            "pgbouncer": base.pgbouncer.model_copy(update={
                "server_login_retry_s": configured.pgbouncer.server_login_retry_s,
                "query_wait_timeout_s": configured.pgbouncer.query_wait_timeout_s}),
            "api": base.api.model_copy(update={"db_timeout_s": configured.api.db_timeout_s}),
            "backups": base.backups.model_copy(update={"schedule_enabled": False})})
        options = DrillOptions(clients=settings.clients, timing_goals=False)
        with cleaned_up("destroy the benchmark stack", lambda: destroy(base)), \
                console.progress().steps("bench.faults", 2 * settings.rounds) as steps:
            for round_ in range(1, settings.rounds + 1):
                for name in ("defaults", "stack") if round_ % 2 else ("stack", "defaults"):
                    config = settings_of(base, name)
                    _deploy_settled(config)
                    result = CrashRound(name, [], [], [], 0)
                    for _ in range(settings.crashes):
                        crash = run_fault(drill_stack(target_for(config)), "postgres", "crash", options)
                        result.healthy_after_s.append(crash.healthy_after_s)
                        result.client_errors.append(crash.client_errors)
                        result.retried.append(sum(crash.retried.values()))
                        result.lost_or_doubled += (crash.runs_lost + crash.runs_doubled + crash.states_lost
                                                   + crash.states_doubled)
                    report.rounds.append(result)
                    steps.step(f"round {round_}, {name}: healthy after {result.healthy_after_s} s, client errors "
                               f"{result.client_errors}")
    report.verdicts = judge(report)
    return report


def _deploy_settled(config: StackConfig) -> None:
    deploy(config)
    problems = unhealthy_summary(settle(config, SETTLE_TIMEOUT_S))
    if problems:
        raise UserError(f"the benchmark stack is not healthy: {problems}", fix="read the components' logs")
