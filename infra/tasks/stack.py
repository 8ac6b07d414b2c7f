"""Tasks that run the stack: deploy, status, logs, stop, destroy, env. Each asks the configuration's target."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.table import Table

from infra import console
from infra.backup.drill import run_drill
from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.layout import StateLayout
from infra.logs.read import make_query
from infra.render.tracing import exporter_environment
from infra.secrets import load_secrets
from infra.status import ComponentStatus
from infra.targets import REGISTRY, Target, target_for
from infra.tasks import reports_user_errors

# "local, compose or kubernetes": every name the registry knows.
TARGET_NAMES = f"{', '.join(list(REGISTRY)[:-1])} or {list(REGISTRY)[-1]}"
ALL_COMPONENTS = "all"
TARGET_HELP = f"{TARGET_NAMES} (default: target in the configuration)."


def _config(target: str | None) -> StackConfig:
    """The configuration, with the target chosen on the command line if given."""
    if target and target not in REGISTRY:
        raise UserError(f"unknown target {target!r} (--target)", fix=f"use --target {TARGET_NAMES}")
    return load_config(**({"target": target} if target else {}))


def _target(target: str | None, task_name: str) -> Target:
    """The configuration's target (or the one on the command line), refusing a task it has no form of."""
    chosen = target_for(_config(target))
    chosen.check_supported(task_name)
    return chosen


def _status_table(statuses: list[ComponentStatus]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("component", "state", "healthy", "pid", "port", "version", "detail"):
        table.add_column(column)
    for s in statuses:
        mark = "[green]yes[/green]" if s.healthy else "[red]NO[/red]"
        table.add_row(s.name, s.state, mark, str(s.pid or "-"), str(s.port or "-"), s.version or "-", s.detail)
    return table


def shell_exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


@task(help={"target": TARGET_HELP})
@reports_user_errors
def deploy(c: Context, target: str | None = None) -> None:
    """Bring up or update the stack; restarts (recreates) only what the configuration change affects."""
    chosen = _target(target, "deploy")
    config = chosen.config
    console.step(f"deploying prefect-stack (target {config.target}, state in {config.state_dir})")
    for note in chosen.before_deploy():
        console.note(note)
    outcome = chosen.deploy(console.progress())
    if outcome.notes_before_table:
        for note in outcome.notes:
            console.note(note)
    console.out.print(_status_table(outcome.statuses))
    if not outcome.notes_before_table:
        for note in outcome.notes:
            console.note(note)
    console.step(outcome.summary)
    console.out.print(outcome.guide)
    if not outcome.healthy:
        raise Exit(f"error: {outcome.unhealthy}", code=1)


@task(help={"json": "Print machine-readable JSON instead of a table.", "target": TARGET_HELP})
@reports_user_errors
def status(c: Context, json_: bool = False, target: str | None = None) -> None:
    """Show every component: running, healthy, pid, port, version. Exits 0 only when all are healthy."""
    statuses = _target(target, "status").status()
    healthy = all(s.healthy for s in statuses)
    if json_:
        print(json.dumps({"healthy": healthy, "components": [s.as_dict() for s in statuses]}, indent=2))
    else:
        console.out.print(_status_table(statuses))
        console.out.print("[green]all healthy[/green]" if healthy else "[red]UNHEALTHY[/red]")
    if not healthy:
        raise Exit(code=1)


@task(
    positional=["component"],
    help={
        "component": "postgres, pgbouncer, redis, api-N, services-N, haproxy, worker-POOL-N, supervisord, migrate, "
                     "or all: every component, merged in time order.",
        "lines": "How many of the last records to show when no --since, --until or --grep chooses (default 100).",
        "since": "Only records from then on: a duration before now (5m, 2h, 1d) or an RFC 3339 time.",
        "until": "Only records up to then: a duration before now (5m, 2h, 1d) or an RFC 3339 time.",
        "grep": "Only records holding this literal text (case-sensitive), e.g. a flow run id or request id.",
        "level": "Only records at this level or above: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        "follow": "Keep printing new records until interrupted (Ctrl-C).",
        "json": "One JSON object per line (time, level, component, message and the ids) instead of text.",
        "target": TARGET_HELP,
    },
)
@reports_user_errors
def logs(c: Context, component: str, lines: int = 100, since: str = "", until: str = "", grep: str = "",
         level: str = "", follow: bool = False, json_: bool = False, target: str | None = None) -> None:
    """Show the stack's logs: one component's, or every component's merged in time order, filtered."""
    # invoke has no optional positional argument: "all" stands for every component.
    query = make_query(None if component == ALL_COMPONENTS else component, lines, since or None, until or None,
                       grep or None, level or None, follow, json_)
    raise Exit(code=_target(target, "logs").logs(query))


@task(positional=["component"], help={"component": "postgres, pgbouncer, redis, api-N, services-N, haproxy or "
                                                   "worker-POOL-N.", "target": TARGET_HELP})
@reports_user_errors
def restart(c: Context, component: str, target: str | None = None) -> None:
    """Restart one component and wait until it is healthy (an API replica is drained first: no client errors)."""
    elapsed = _target(target, "restart").restart(component)
    console.step(f"{component} restarted and healthy in {elapsed:.1f}s")


@task(help={"target": TARGET_HELP})
@reports_user_errors
def stop(c: Context, target: str | None = None) -> None:
    """Stop every process of the stack (data and secrets are kept; invoke deploy starts it again)."""
    if _target(target, "stop").stop():
        console.step("stopped every component and supervisord")
    else:
        console.step("nothing was running")


@task(help={"yes": "Confirm: delete all data, secrets and logs of this deployment.", "target": TARGET_HELP,
            "volumes": "kubernetes: also delete the database Cluster and every volume (default: kept)."})
@reports_user_errors
def destroy(c: Context, yes: bool = False, target: str | None = None, volumes: bool = False) -> None:
    """Stop the stack and delete its state directory: database, secrets, logs. Refuses without --yes."""
    chosen = _target(target, "destroy")
    if not yes:
        raise chosen.destroy_refusal(volumes)
    destroyed = chosen.destroy(volumes)
    console.step(destroyed.summary)
    for note in destroyed.notes:
        console.note(note)


@task(help={
    "backups": "Print what boto3 or the aws CLI needs to reach the backup bucket instead.",
    "monitoring": "Print the Prometheus and Alertmanager URLs instead (PROMETHEUS_URL, ALERTMANAGER_URL).",
    "tracing": "Print the OTEL_* settings a worker or flow process needs to send its spans where the server's go.",
    "target": TARGET_HELP,
})
@reports_user_errors
def env(c: Context, backups: bool = False, monitoring: bool = False, tracing: bool = False,
        target: str | None = None) -> None:
    """Print shell exports for Prefect clients (URL, credentials, the CA to trust): eval "$(invoke env)"."""
    chosen = _target(target, "env")
    config = chosen.config
    # Asked first: a target whose monitoring is not the stack's refuses, naming where it is.
    monitoring_variables = chosen.monitoring_environment() if monitoring else {}
    if tracing:
        variables = exporter_environment(config, "prefect-flows")
        if not variables:
            raise UserError("tracing is off (tracing.enabled: false)",
                            fix="set tracing.enabled: true and tracing.otlp_endpoint, then run invoke deploy")
        print(shell_exports(variables))
        print("# then run the worker or flow under the SDK: opentelemetry-instrument prefect worker start ...")
        return
    if monitoring:
        if not config.monitoring.enabled:
            raise UserError("monitoring is off (monitoring.enabled: false)",
                            fix="set monitoring.enabled: true and run invoke deploy")
        variables = monitoring_variables
    elif backups:
        variables = chosen.backup_environment()
    else:
        variables = chosen.client_environment()
    print(shell_exports(variables))


@task(help={"target": "compose or kubernetes.",
            "out": "Directory to write into (default: the repository's compose/ or k8s/ folder, with placeholder "
                   "image references; with --out, kubernetes manifests name the images deploy would use)."})
@reports_user_errors
def render(c: Context, target: str = "compose", out: str | None = None) -> None:
    """Write a target's files for the configuration, without deploying and without any secret in them."""
    chosen = _target(target, "render")
    for line in chosen.render(Path(out) if out else None):
        console.step(line)


@task(help={"json": "Print JSON: a list of {name, severity, since, summary, description, runbook, labels}.",
            "target": TARGET_HELP})
@reports_user_errors
def alerts(c: Context, json_: bool = False, target: str | None = None) -> None:
    """List the alerts firing now (from Alertmanager), most severe first, with the runbook for each."""
    firing = _target(target, "alerts").firing_alerts()
    if json_:
        print(json.dumps([a.as_dict() for a in firing], indent=2))
        return
    if not firing:
        console.out.print("[green]no alert is firing[/green]")
        return
    now = datetime.now(UTC)
    colours = {"page": "bold red", "critical": "red", "warning": "yellow"}
    for alert in firing:
        target = alert.labels.get("server") or alert.labels.get("component") or alert.labels.get("mountpoint") or ""
        colour = colours.get(alert.severity, "white")
        console.out.print(f"[{colour}]{alert.severity.upper():8}[/{colour}] [bold]{alert.name}[/bold] {target}  "
                          f"(firing for {alert.age_s(now):.0f}s)")
        console.out.print(f"    {alert.summary}", markup=False)
        console.out.print(f"    what to do: {alert.description}", markup=False)
        console.out.print(f"    runbook: {alert.runbook}", markup=False)
    console.out.print(f"{len(firing)} alert(s) firing")


@task(help={
    "yes": "Confirm: the drill destroys the live database and restores it from the backup it takes.",
    "json": "Print the report as JSON.",
    "target": TARGET_HELP,
})
@reports_user_errors
def drill(c: Context, yes: bool = False, json_: bool = False, target: str | None = None) -> None:
    """Disaster drill: write data, back up, verify, destroy the database, restore, prove nothing was lost."""
    chosen = _target(target, "drill")
    config = chosen.config
    if not yes:
        raise Exit("error: the drill destroys the live Prefect database (and restores it from a fresh, verified "
                   "backup; writes made during the drill are lost)\n  fix: run invoke drill --yes", code=1)
    secrets = load_secrets(StateLayout(config.state_dir).secrets)
    console.step("disaster drill on the running stack")
    report = run_drill(config, secrets, console.progress(), chosen.drill_target(secrets))
    if json_:
        print(json.dumps(report.as_dict()))
    else:
        console.out.print(
            f"  backup {report.backup_id} (verified: {report.verified})\n"
            f"  flow runs written {report.flow_runs_written}, recovered {report.flow_runs_recovered}; "
            f"logs written {report.logs_written}, recovered {report.logs_recovered}\n"
            f"  row counts match the manifest: {report.row_counts_match}\n"
            f"  recovery time (database destroyed -> API healthy): {report.recovery_time_s:.1f}s\n"
            f"  data-loss window (backup snapshot -> disaster): {report.data_loss_window_s:.1f}s"
        )
    if not (report.identical and report.row_counts_match):
        raise Exit("error: the drill FAILED: data written before the backup did not all come back", code=1)
    console.step("drill passed: everything written before the backup is back")
