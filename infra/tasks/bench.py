"""Benchmarks: `invoke bench.api`. Each deploys what it measures on free ports and removes it afterwards."""

from __future__ import annotations

import json

from invoke.context import Context
from invoke.tasks import task
from rich.table import Table

from infra import console
from infra.bench.api import (
    DEFAULT_DURATION_S,
    DEFAULT_REPLICAS,
    WARMUP_S,
    BenchmarkReport,
    BenchSettings,
    describe_errors,
    parse_concurrency,
    run_benchmark,
)
from infra.tasks import reports_user_errors

STATUS_MARKS = {
    "pass": "[green]PASS[/green]",
    "fail": "[red]MISSED[/red]",
    "not measured": "[yellow]NOT MEASURED[/yellow]",
}


def _results_table(report: BenchmarkReport) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("target", "clients", "requests", "errors", "flow runs/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "target" else "right")
    order = {key: i for i, key in enumerate(report.targets)}
    for r in sorted(report.results, key=lambda r: (r.concurrency, order.get(r.target, 99))):
        label = report.targets[r.target].label if r.target in report.targets else r.target
        errors = f"[red]{r.errors}[/red]" if r.errors else "0"
        p50 = "-" if r.p50_ms is None else f"{r.p50_ms:.1f}"
        p99 = "-" if r.p99_ms is None else f"{r.p99_ms:.1f}"
        table.add_row(label, str(r.concurrency), str(r.requests), errors, f"{r.throughput_rps:.1f}", p50, p99)
    return table


def _print_human(report: BenchmarkReport) -> None:
    console.out.print(_results_table(report))
    failed = [r for r in report.results if r.errors]
    if failed:
        console.out.print("\nErrors:")
    for r in failed:
        label = report.targets[r.target].label if r.target in report.targets else r.target
        console.out.print(f"  {label} at {r.concurrency} client(s): {describe_errors(r)}")
    console.out.print("\nGoals:")
    for v in report.verdicts:
        console.out.print(f"  {STATUS_MARKS[v.status]}  {v.goal}: {v.measured}")


def _summary(report: BenchmarkReport) -> str:
    missed = report.missed
    judged = [v for v in report.verdicts if v.status != "not measured"]
    if not missed:
        return f"[green]{len(judged)} of {len(judged)} measured goal(s) met[/green]"
    names = "; ".join(v.goal for v in missed)
    return f"[red]{len(missed)} of {len(judged)} measured goal(s) MISSED[/red]: {names}"


@task(
    help={
        "json": "Print one JSON document (targets, results, verdicts) on stdout instead of a table.",
        "duration": f"Measured seconds per target and concurrency level, after a {WARMUP_S:g} s warm-up "
        f"(default {DEFAULT_DURATION_S:g}).",
        "replicas": f"API replicas behind the load balancer in the temporary stack (default {DEFAULT_REPLICAS}).",
        "concurrency": "Comma-separated numbers of concurrent clients to measure (default 1,20,50).",
    }
)
@reports_user_errors
def api(
    c: Context,
    json_: bool = False,
    duration: float = DEFAULT_DURATION_S,
    replicas: int = DEFAULT_REPLICAS,
    concurrency: str = "1,20,50",
) -> None:
    """Flow-run creations/s and p50/p99 latency: load balancer vs one replica vs `prefect server start` (SQLite)."""
    settings = BenchSettings(
        concurrency=parse_concurrency(concurrency), duration_s=float(duration), replicas=int(replicas)
    )
    report = run_benchmark(settings)
    if json_:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_human(report)
    # A benchmark reports; a missed goal is a finding, not a failed command (exit 0 either way).
    console.err.print(_summary(report))
