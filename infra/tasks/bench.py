"""Benchmarks: `invoke bench.api`, `invoke bench.backup`, `invoke bench.observability`, `invoke bench.workers`
(each deploys what it measures on free ports and removes it afterwards), `invoke bench.render` (rendering
alone, nothing deployed) and `invoke bench.logs` (searching generated log files, nothing deployed)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from infra.bench.backup import DEFAULT_SIZE_GB, BackupBenchReport, BackupBenchSettings, run_backup_benchmark
from infra.bench.compose import (
    DEFAULT_ROUNDS,
    MIN_COMPOSE_RATIO,
    CompareSettings,
    ComposeBenchReport,
    describe_image,
    run_compose_benchmark,
)
from infra.bench.harness import Verdict
from infra.bench.observability import CHOICES as OBSERVABILITY_LAYERS
from infra.bench.observability import DEFAULT_LAYERS as DEFAULT_OBSERVABILITY_LAYERS
from infra.bench.observability import OFF as OBSERVABILITY_OFF
from infra.bench.observability import (
    ObservabilityReport,
    ObservabilitySettings,
    parse_layers,
    relative_range,
    run_observability_benchmark,
)
from infra.errors import UserError
from infra.tasks import reports_user_errors

STATUS_MARKS = {
    "pass": "[green]PASS[/green]",
    "fail": "[red]MISSED[/red]",
    "not measured": "[yellow]NOT MEASURED[/yellow]",
    "not applicable": "[yellow]NOT APPLICABLE[/yellow]",
    "inconclusive": "[yellow]INCONCLUSIVE[/yellow]",
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
    _print_goals(report.verdicts)


def _print_goals(verdicts: Sequence[Verdict]) -> None:
    console.out.print("\nGoals:")
    for v in verdicts:
        console.out.print(f"  {STATUS_MARKS[v.status]}  {v.goal}: {v.measured}")


def _summary(verdicts: Sequence[Verdict]) -> str:
    missed = [v for v in verdicts if v.status == "fail"]
    judged = [v for v in verdicts if v.status in ("pass", "fail")]
    unsure = [v for v in verdicts if v.status == "inconclusive"]
    # Neither met nor missed: the rounds' spread hides the effect, so the goal is named to be measured again.
    tail = f"; [yellow]{len(unsure)} inconclusive[/yellow]: {'; '.join(v.goal for v in unsure)}" if unsure else ""
    if not missed:
        return f"[green]{len(judged)} of {len(judged)} measured goal(s) met[/green]{tail}"
    names = "; ".join(v.goal for v in missed)
    return f"[red]{len(missed)} of {len(judged)} measured goal(s) MISSED[/red]: {names}{tail}"


def _print_compose_report(report: ComposeBenchReport) -> None:
    table = Table(box=None, pad_edge=False)
    for column in ("", "local", "compose"):
        table.add_column(column, justify="left" if not column else "right")
    for row in report.side_by_side():
        table.add_row(*row)
    console.out.print(table)
    ratio = "-" if report.ratio is None else f"{report.ratio:.2f}x"
    console.out.print(f"\nat {report.clients} clients; compose / local (medians): {ratio} "
                      f"(goal >= {MIN_COMPOSE_RATIO:g}x)")
    console.out.print("\nImages (ensure_images, before the deploy):")
    for image in report.images:
        console.out.print(f"  {describe_image(image)}")
    failed = [r for r in report.results if r.errors]
    if failed:
        console.out.print("\nErrors:")
    for r in failed:
        console.out.print(f"  {report.targets[r.target].label}: {describe_errors(r)}")
    _print_goals(report.verdicts)


@dataclass(frozen=True)
class ApiOptions:
    """`invoke bench.api`'s options, as each --target's benchmark reads them."""

    json: bool
    duration_s: float
    replicas: int
    concurrency: str  # comma-separated; empty: the target's default
    rounds: int


def _api_local(options: ApiOptions) -> Sequence[Verdict]:
    """Load balancer vs one replica vs SQLite, at each --concurrency."""
    settings = BenchSettings(concurrency=parse_concurrency(options.concurrency or "1,20,50"),
                             duration_s=options.duration_s, replicas=options.replicas)
    report = run_benchmark(settings)
    if options.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_human(report)
    return report.verdicts


def _api_compose(options: ApiOptions) -> Sequence[Verdict]:
    """A temporary compose project next to a temporary local stack, at 20 clients."""
    if options.concurrency:
        raise UserError("--concurrency applies to --target local",
                        fix="drop it: the compose comparison measures at 20 clients, the issue's level")
    compared = run_compose_benchmark(
        CompareSettings(duration_s=options.duration_s, replicas=options.replicas, rounds=options.rounds)
    )
    if options.json:
        print(json.dumps(compared.as_dict(), indent=2))
    else:
        _print_compose_report(compared)
    return compared.verdicts


# --target's choices: each runs its benchmark, prints its report and returns its verdicts.
API_BENCHMARKS: dict[str, Callable[[ApiOptions], Sequence[Verdict]]] = {
    "local": _api_local,
    "compose": _api_compose,
}


@task(
    help={
        "json": "Print one JSON document (targets, results, verdicts; with --target compose also images, deploy "
        "times and the ratio) on stdout instead of a table.",
        "duration": f"Measured seconds per target and concurrency level, after a {WARMUP_S:g} s warm-up "
        f"(default {DEFAULT_DURATION_S:g}).",
        "replicas": f"API replicas behind the load balancer in the temporary stack(s) (default {DEFAULT_REPLICAS}).",
        "concurrency": "Comma-separated numbers of concurrent clients to measure (default 1,20,50; local only: "
        "--target compose measures at 20).",
        "target": "local (default): load balancer vs one replica vs SQLite. compose: a temporary compose project "
        f"next to a temporary local stack, both at 20 clients, goal compose >= {MIN_COMPOSE_RATIO:g}x local; "
        "also reports the image build and the compose cold deploy time. Uses compose.docker_host and "
        "compose.base from the configuration.",
        "rounds": f"With --target compose: rounds, each measuring both targets, in ABBA order (default "
        f"{DEFAULT_ROUNDS}).",
    }
)
@reports_user_errors
def api(
    c: Context,
    json_: bool = False,
    duration: float = DEFAULT_DURATION_S,
    replicas: int = DEFAULT_REPLICAS,
    concurrency: str = "",
    target: str = "local",
    rounds: int = DEFAULT_ROUNDS,
) -> None:
    """Flow-run creations/s and latency: load balancer vs one replica vs SQLite; --target compose: compose vs local."""
    run = API_BENCHMARKS.get(target)
    if run is None:
        choices = " or ".join(f"--target {name}" for name in API_BENCHMARKS)
        raise UserError(f"--target {target} is not benchmarked", fix=f"use {choices}")
    verdicts = run(ApiOptions(json_, float(duration), int(replicas), concurrency, int(rounds)))
    # A benchmark reports; a missed goal is a finding, not a failed command (exit 0 either way).
    console.err.print(_summary(verdicts))


def _print_backup_report(report: BackupBenchReport) -> None:
    data = report.data
    rows = data.rows
    console.out.print(
        f"Database: {data.database_bytes / 1024**2:.0f} MB ({rows.get('flow_run', 0)} flow runs, "
        f"{rows.get('task_run', 0)} task runs, {rows.get('log', 0)} log lines, {rows.get('events', 0)} events), "
        f"generated in {data.seconds:.0f}s; {report.cpus} CPU(s), {report.jobs} job(s)\n"
    )
    table = Table(box=None, pad_edge=False)
    for column in ("step", "seconds", "size", "how"):
        table.add_column(column, justify="right" if column in ("seconds", "size") else "left")
    for m in report.measurements:
        size = "-" if m.size is None else f"{m.size / 1024**2:.0f} MB"
        table.add_row(m.label, f"{m.seconds:.1f}", size, m.detail)
    console.out.print(table)
    _print_goals(report.verdicts)


@task(
    help={
        "json": "Print one JSON document (database, measurements, verdicts) on stdout instead of a table.",
        "size_gb": f"Size of the generated Prefect database in GB (default {DEFAULT_SIZE_GB:g}).",
        "jobs": "Parallel jobs of pg_dump/pg_restore and pgBackRest's process-max (default 0: backups.jobs).",
    }
)
@reports_user_errors
def backup(c: Context, json_: bool = False, size_gb: float = DEFAULT_SIZE_GB, jobs: int = 0) -> None:
    """Time invoke backup vs pg_dump + upload vs pgBackRest, and their restores, on a generated database."""
    settings = BackupBenchSettings(size_gb=float(size_gb), jobs=int(jobs) or None)
    report = run_backup_benchmark(settings)
    if json_:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_backup_report(report)
    # A benchmark reports; a missed target is a finding, not a failed command (exit 0 either way).
    console.err.print(_summary(report.verdicts))


def _print_observability_report(report: ObservabilityReport) -> None:
    settings = report.settings
    table = Table(box=None, pad_edge=False)
    for column in ("layer", "flow runs/s (each round)", "vs off", "spread", ""):
        table.add_column(column, justify="left" if column in ("layer", "") else "right")
    off = [r.throughput_rps for r in report.rounds.get(OBSERVABILITY_OFF, [])]
    off_spread = relative_range(off)
    table.add_row(OBSERVABILITY_OFF, ", ".join(f"{x:.1f}" for x in off), "1.000x",
                  "-" if off_spread is None else f"{off_spread:.1%}", "baseline")
    for cost in report.costs:
        spread = "-" if cost.spread is None else f"{cost.spread:.1%}"
        noise = "one round: no spread" if cost.spread is None else "within the spread" if cost.within_spread else ""
        table.add_row(cost.layer, ", ".join(f"{x:.1f}" for x in cost.on_rps), f"{cost.ratio:.3f}x", spread, noise)
    console.out.print(f"flow runs/s at {settings.clients} clients, each layer against off (tracing-sampled: "
                      f"sample_ratio {report.sample_ratio:g}); order: {', '.join(report.order) or '-'}")
    console.out.print(table)
    errors = [(name, r) for name, results in report.rounds.items() for r in results if r.errors]
    for name, r in errors:
        console.out.print(f"  [red]{name}: {r.errors} errors[/red] ({describe_errors(r)})")
    for name, why in report.skipped.items():
        console.out.print(f"  {name}: not measured, {why}")
    if report.scrape_s:
        document = report.as_dict()
        console.out.print(f"\nexporter scrape on {settings.flow_runs} flow runs: median "
                          f"{document['scrape_median_s']} s, slowest {document['scrape_max_s']} s (history "
                          f"generated in {report.generated_s:.0f} s)")
    _print_goals(report.verdicts)


@task(
    help={
        "json": "Print one JSON document (every round, each layer's cost and spread, scrape times, verdicts) on "
        "stdout instead of a table.",
        "layers": f"Comma-separated layers to measure against off, or all: {', '.join(OBSERVABILITY_LAYERS)} "
        f"(default {','.join(DEFAULT_OBSERVABILITY_LAYERS)}).",
        "rounds": "Rounds, each measuring off and every layer, every other round in reverse order (default 2; "
        "even rounds cancel a linear drift, two or more give the spread between like rounds).",
        "duration": "Measured seconds per configuration and round (default 20).",
        "warmup": "Warm-up seconds before each measurement (default 5).",
        "scrape": "Generate a history and time the Prefect exporter's scrapes (default on; --no-scrape skips it: "
        "it takes minutes).",
        "flow_runs": "Flow runs in the generated history the exporter is scraped against (default 1000000).",
        "deployments": "Deployments the generated runs belong to (default 300).",
        "work_pools": "Work pools, each with a queue and two workers (default 50).",
        "scrapes": "Exporter scrapes timed (default 10).",
    }
)
@reports_user_errors
def observability(
    c: Context, json_: bool = False, layers: str = ",".join(DEFAULT_OBSERVABILITY_LAYERS), rounds: int = 2,
    duration: float = 20.0, warmup: float = 5.0, scrape: bool = True, flow_runs: int = 1_000_000,
    deployments: int = 300, work_pools: int = 50, scrapes: int = 10,
) -> None:
    """What each part of monitoring, tracing and JSON logging costs in flow runs/s at 20 clients against the stack
    without them; the exporter's scrape time on a million flow runs."""
    settings = ObservabilitySettings(
        layers=parse_layers(layers), rounds=int(rounds), duration_s=float(duration), warmup_s=float(warmup),
        scrape=bool(scrape), flow_runs=int(flow_runs), deployments=int(deployments), work_pools=int(work_pools),
        scrapes=int(scrapes),
    )
    report = run_observability_benchmark(settings)
    if json_:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_observability_report(report)
    # A benchmark reports; a missed target is a finding, not a failed command (exit 0 either way).
    console.err.print(_summary(report.verdicts))


@task(help={"json": "Print the timings as JSON.", "runs": "Warm renders per target (default 20)."})
@reports_user_errors
def render(c: Context, json_: bool = False, runs: int = 20) -> None:
    """Time rendering the Kubernetes target's default configuration (goal: well under 1 s), with compose's as the
    baseline in the same run."""
    from infra.bench.render import GOAL_S, measure

    timings = [measure("kubernetes", warm_runs=runs), measure("compose", warm_runs=runs)]
    if json_:
        print(json.dumps([{"target": t.target, "cold_s": t.cold_s, "warm_s": t.warm_s} for t in timings], indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("target", "cold median", "cold slowest", "warm median", "warm slowest"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for t in timings:
        table.add_row(t.target, f"{t.cold_median_s:.3f} s", f"{max(t.cold_s):.3f} s", f"{t.warm_median_s:.3f} s",
                      f"{max(t.warm_s):.3f} s")
    console.out.print(table)
    kubernetes = timings[0]
    verdict = "PASS" if max(kubernetes.cold_s) < GOAL_S else "MISSED"
    console.step(f"kubernetes render, cold (a fresh process): median {kubernetes.cold_median_s:.3f} s, slowest "
                 f"{max(kubernetes.cold_s):.3f} s; goal well under {GOAL_S:.0f} s: {verdict}")


@task(
    help={
        "json": "Print one JSON document (every round's figures and the verdicts) on stdout instead of a table.",
        "runs": "Flow runs per round (default 100).",
        "rounds": "Rounds, each measuring Prefect's default worker settings and the stack's, alternated (default 2).",
        "pace": "Seconds between two run creations (default 2.5: below what 2 workers complete on 2 cores).",
    }
)
@reports_user_errors
def workers(c: Context, json_: bool = False, runs: int = 100, rounds: int = 2, pace: float = 2.5) -> None:
    """Worker pickup and start delay of short flow runs with 2 process workers: the stack's settings vs Prefect's."""
    from infra.bench.workers import WorkersBenchSettings, percentile, run_workers_benchmark, spread
    from infra.config import load_config

    settings = WorkersBenchSettings(runs=int(runs), rounds=int(rounds), pace_s=float(pace))
    report = run_workers_benchmark(settings, load_config())
    if json_:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        table = Table(box=None, pad_edge=False)
        columns = ("settings", "completed", "lost", "run twice", "pickup p50", "pickup p99", "start p50",
                   "start p99", "runs/min")
        for column in columns:
            table.add_column(column, justify="left" if column == "settings" else "right")
        for r in report.rounds:
            row = r.as_dict()
            table.add_row(r.settings, str(r.completed), str(r.lost), str(r.run_twice),
                          *(f"{row[key]} s" for key in ("pickup_p50_s", "pickup_p99_s", "start_p50_s",
                                                        "start_p99_s")), f"{r.per_minute:.1f}")
        console.out.print(table)
        for name in ("defaults", "stack"):
            rounds_of = report.of(name)
            console.out.print(
                f"{name}: pickup p50 {percentile(report.pooled(name, 'pickup_s'), 50)} s over all rounds "
                f"(spread between rounds {spread([percentile(r.pickup_s, 50) for r in rounds_of])} s); start p50 "
                f"{percentile(report.pooled(name, 'start_s'), 50)} s "
                f"(spread {spread([percentile(r.start_s, 50) for r in rounds_of])} s)")
        console.out.print(f"stack settings: {report.stack_settings} (null: Prefect's default)")
        _print_goals(report.verdicts)
    # A benchmark reports; a missed goal is a finding, not a failed command (exit 0 either way).
    console.err.print(_summary(report.verdicts))


@task(
    help={
        "json": "Print one JSON document (every run's time, what was found, the verdicts) on stdout instead of text.",
        "size": "MiB of log lines generated across the components (default 1024).",
        "runs": "Timed searches; the median is judged (default 3).",
    }
)
@reports_user_errors
def logs(c: Context, json_: bool = False, size: int = 1024, runs: int = 3) -> None:
    """invoke logs --grep over a gigabyte of generated log lines across the components (goal: under 5 s)."""
    from infra.bench.logs import LogsBenchSettings, run_logs_benchmark

    settings = LogsBenchSettings(size_mib=int(size), runs=int(runs))
    report = run_logs_benchmark(settings, progress=console.note if not json_ else lambda _: None)
    if json_:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_goals(report.verdicts)
    # A benchmark reports; a missed goal is a finding, not a failed command (exit 0 either way).
    console.err.print(_summary(report.verdicts))


@task(
    help={
        "json": "Print one JSON document (every crash's figures and the verdicts) on stdout instead of a table.",
        "crashes": "PostgreSQL crashes per round (default 3).",
        "rounds": "Rounds, each measuring PgBouncer's and Prefect's defaults and the stack's settings, alternated "
                  "(default 2).",
    }
)
@reports_user_errors
def faults(c: Context, json_: bool = False, crashes: int = 3, rounds: int = 2) -> None:
    """PostgreSQL crash under 20 Prefect clients: time until healthy and client errors, the stack's pooler and
    database timeouts vs PgBouncer's and Prefect's defaults (goal: healthy within 5 s, no client error)."""
    from infra.bench.faults import FaultsBenchSettings, median, run_faults_benchmark
    from infra.bench.workers import spread
    from infra.config import load_config

    report = run_faults_benchmark(FaultsBenchSettings(crashes=int(crashes), rounds=int(rounds)), load_config())
    if json_:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        table = Table(box=None, pad_edge=False)
        for column in ("settings", "healthy after each crash", "client errors", "retried", "lost or doubled"):
            table.add_column(column)
        for r in report.rounds:
            table.add_row(r.settings, ", ".join("never" if v is None else f"{v} s" for v in r.healthy_after_s),
                          ", ".join(map(str, r.client_errors)), ", ".join(map(str, r.retried)),
                          str(r.lost_or_doubled))
        console.out.print(table)
        for name in ("defaults", "stack"):
            console.out.print(f"{name}: healthy after a crash, median {median(report.healthy(name))} s (spread of "
                              f"the rounds' medians {spread([median(r.healthy_after_s) for r in report.of(name)])} s)")
        console.out.print(f"stack settings: {report.stack_values}")
        _print_goals(report.verdicts)
    # A benchmark reports; a missed goal is a finding, not a failed command (exit 0 either way).
    console.err.print(_summary(report.verdicts))
