"""bench.workers' arithmetic: percentiles, the verdicts, and the two settings it alternates."""

from __future__ import annotations

from infra.bench.workers import (
    RoundResult,
    WorkersBenchReport,
    WorkersBenchSettings,
    judge,
    percentile,
    worker_settings_of,
)
from infra.config import StackConfig


def _round(name: str, pickups: list[float], lost: int = 0, twice: int = 0) -> RoundResult:
    return RoundResult(name, pickups, [p + 2 for p in pickups], len(pickups), lost, twice, 60.0)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile([3.0], 99)) == (50.0, 99.0, 3.0)
    assert percentile([], 50) is None


def test_the_goal_compares_pooled_medians_and_counts_every_lost_or_twice_run() -> None:
    report = WorkersBenchReport(WorkersBenchSettings())
    report.rounds = [_round("defaults", [4.0, 5.0, 6.0]), _round("stack", [1.0, 2.0, 3.0], lost=1),
                     _round("stack", [1.0, 2.0, 3.0]), _round("defaults", [4.0, 5.0, 6.0], twice=2)]
    pickup, lost, twice = judge(report)
    assert (pickup.status, pickup.measured) == ("pass", "2.00 s vs 5.00 s (0.40x)")
    assert (lost.status, lost.measured, twice.status, twice.measured) == ("fail", "1", "fail", "2")


def test_a_stack_slower_than_half_the_defaults_misses_the_goal() -> None:
    report = WorkersBenchReport(WorkersBenchSettings())
    report.rounds = [_round("defaults", [4.0]), _round("stack", [3.0])]
    assert judge(report)[0].status == "fail"


def test_the_defaults_round_runs_prefects_polling_and_the_stack_round_the_configured_one() -> None:
    configured = StackConfig(workers={"query_interval_s": 2, "prefetch_s": 5})  # type: ignore[arg-type]
    defaults = worker_settings_of(configured, "defaults").workers
    assert (defaults.query_interval_s, defaults.prefetch_s) == (None, None)
    assert worker_settings_of(configured, "stack") is configured
