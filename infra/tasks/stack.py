"""Tasks that run the stack: deploy, status, logs, stop, destroy, env."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.table import Table

from infra import console
from infra.alerts import alertmanager_url, firing_alerts, prometheus_url
from infra.config import REPO_ROOT, StackConfig, load_config
from infra.errors import UserError
from infra.layout import StateLayout
from infra.local import operate
from infra.local.deploy import deploy as deploy_local
from infra.local.deploy import restart_component
from infra.local.drill import run_drill
from infra.local.health import ComponentStatus
from infra.local.plan import trusted_ca_file
from infra.render.tracing import exporter_environment
from infra.secrets import load_secrets
from infra.tasks import reports_user_errors

SETTLE_TIMEOUT_S = 30


def _compose() -> ModuleType:
    """The compose target's operations, imported on use (the Docker SDK is not needed by the local target)."""
    from infra.compose import operate as compose_operate

    return compose_operate
TARGET_HELP = "local, compose or kubernetes (default: target in the configuration)."


def _config(target: str | None, kubernetes: bool = False) -> StackConfig:
    """The configuration, with the target chosen on the command line if given. ``kubernetes``: the task has a
    Kubernetes form (deploy, status, logs, restart, destroy); the others name what to use instead."""
    config = load_config(**({"target": target} if target else {}))
    if config.target == "kubernetes" and not kubernetes:
        raise UserError("this task has no kubernetes form: on Kubernetes, kubectl and the operators do it",
                        fix="use kubectl (docs/kubernetes.md, 'Operating it', maps each task), or "
                            "invoke deploy|status|logs|restart|destroy --target kubernetes")
    return config


def _kubernetes() -> ModuleType:
    """The Kubernetes target's operations, imported on use."""
    from infra.kubernetes import operate as kubernetes_operate

    return kubernetes_operate


def _deploy_kubernetes(config: StackConfig) -> None:
    from infra.kubernetes import deploy as kubernetes_deploy
    from infra.kubernetes.render import kubernetes_images, render
    from infra.kubernetes.secrets import secret_objects
    from infra.secrets import ensure_secrets

    secrets = ensure_secrets(config.state_dir / "secrets")
    images = kubernetes_images(config)
    console.note(f"images: {images.prefect}, {images.system} (invoke images.build; pushed to "
                 f"{config.kubernetes.image_registry or 'the nodes (kubernetes.image_registry is null)'})")
    rendering = render(config, images)
    report = kubernetes_deploy.deploy(config, rendering, secret_objects(config, secrets), console.progress())
    for phase, applied in report.applied.items():
        console.note(f"{phase}: {len(applied)} objects applied")
    if report.pruned:
        console.note(f"pruned (no longer rendered): {', '.join(report.pruned)}")
    for kept in report.kept:
        console.note(f"kept, holds data (delete it yourself if you mean it): {kept}")
    statuses = _kubernetes().status(config)
    console.out.print(_status_table(statuses))
    console.step(f"deployed to namespace {config.kubernetes.namespace} on Kubernetes {report.server_version} "
                 f"in {report.elapsed_s:.1f}s")
    from infra.kubernetes.prefect import public_api_url

    console.out.print(
        f"\n  Prefect API   {public_api_url(config)}  (Ingress {config.kubernetes.ingress.host}; "
        f"kubectl -n {config.kubernetes.namespace} port-forward svc/{config.kubernetes.name}-api 4200 otherwise)\n"
        f"  Credentials   basic auth 'admin' and the password in {config.state_dir / 'secrets' / 'prefect_auth'}\n"
        f"  Operate       invoke status|logs COMPONENT|restart COMPONENT --target kubernetes\n"
    )
    if not all(s.healthy for s in statuses):
        raise Exit("error: deployed, but some components are not ready (see the table above)", code=1)


def _status_table(statuses: list[ComponentStatus]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("component", "state", "healthy", "pid", "port", "version", "detail"):
        table.add_column(column)
    for s in statuses:
        mark = "[green]yes[/green]" if s.healthy else "[red]NO[/red]"
        table.add_row(s.name, s.state, mark, str(s.pid or "-"), str(s.port or "-"), s.version or "-", s.detail)
    return table


def _deploy_compose(config: StackConfig) -> None:
    from infra.compose import deploy as compose_deploy
    _, report = compose_deploy.deploy(config, console.progress())
    statuses = _compose().settle(config, SETTLE_TIMEOUT_S)
    console.out.print(_status_table(statuses))
    if report.changed_nothing:
        console.step(f"nothing changed; no container recreated ({report.elapsed_s:.1f}s)")
    else:
        for label, names in (("created", report.created), ("recreated", report.recreated),
                             ("replaced one at a time", report.rolled), ("removed", report.removed)):
            if names:
                console.note(f"{label}: {', '.join(names)}")
        console.step(f"deployed in {report.elapsed_s:.1f}s")
    directory = compose_deploy.project_dir(config)
    console.out.print(
        f"\n  Prefect API   {config.api_url}  (UI: {config.api_url.removesuffix('/api')})\n"
        f"  Credentials   eval \"$(invoke env --target compose)\"   (secrets in {config.state_dir / 'secrets'}, 0600)\n"
        f"  Project       {config.compose.project} (compose file {directory / 'compose.yaml'})\n"
        f"  Operate       invoke status|logs SERVICE|restart SERVICE|stop --target compose\n"
    )
    if not all(s.healthy for s in statuses):
        raise Exit("error: deployed, but some services are unhealthy (see the table above)", code=1)


@task(help={"target": TARGET_HELP})
@reports_user_errors
def deploy(c: Context, target: str | None = None) -> None:
    """Bring up or update the stack; restarts (recreates) only what the configuration change affects."""
    config = _config(target, kubernetes=True)
    console.step(f"deploying prefect-stack (target {config.target}, state in {config.state_dir})")
    if config.target == "compose":
        _deploy_compose(config)
        return
    if config.target == "kubernetes":
        _deploy_kubernetes(config)
        return
    plan, report = deploy_local(config)
    # The verdict is the stack's state once settled, within a bound.
    statuses = operate.settle(config, SETTLE_TIMEOUT_S)
    console.out.print(_status_table(statuses))
    if report.changed_nothing:
        console.step(f"nothing changed; nothing restarted ({report.elapsed_s:.1f}s)")
    else:
        for label, names in (("started", report.started), ("restarted", report.restarted),
                             ("reloaded", report.reloaded), ("removed", report.removed)):
            if names:
                console.note(f"{label}: {', '.join(names)}")
        console.step(f"deployed in {report.elapsed_s:.1f}s")
    lb = config.load_balancer
    layout = plan.layout
    ca_file = trusted_ca_file(config)
    trust = f"  TLS           clients trust {ca_file} (exported by invoke env)\n" if ca_file else ""
    stats_scheme = "https" if config.stats_tls_enabled else "http"
    console.out.print(
        f"\n  Prefect API   {config.api_url}  (UI: {config.api_url.removesuffix('/api')})\n{trust}"
        f"  Credentials   eval \"$(invoke env)\"   (basic auth; secrets in {layout.secrets}, mode 0600)\n"
        f"  HAProxy stats {stats_scheme}://{lb.bind_address}:{lb.stats_port}/stats  (user admin, password in "
        f"{layout.secrets / 'haproxy_stats'}); Prometheus: /metrics\n"
        f"  State         {layout.root}  (data {layout.data}, logs {layout.logs})\n"
        f"  Operate       invoke status | invoke logs COMPONENT | invoke stop\n"
    )
    if not all(s.healthy for s in statuses):
        raise Exit("error: deployed, but some components are unhealthy (see the table above)", code=1)


@task(help={"json": "Print machine-readable JSON instead of a table.", "target": TARGET_HELP})
@reports_user_errors
def status(c: Context, json_: bool = False, target: str | None = None) -> None:
    """Show every component: running, healthy, pid, port, version. Exits 0 only when all are healthy."""
    config = _config(target, kubernetes=True)
    statuses = {"compose": _compose().status, "kubernetes": _kubernetes().status}.get(
        config.target, operate.status)(config)
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
        "component": "postgres, pgbouncer, redis, api-N, services-N, haproxy, supervisord or migrate.",
        "lines": "How many of the last lines to show (default 100).",
        "follow": "Keep printing new lines until interrupted.",
        "target": TARGET_HELP,
    },
)
@reports_user_errors
def logs(c: Context, component: str, lines: int = 100, follow: bool = False, target: str | None = None) -> None:
    """Show the log of one component."""
    config = _config(target, kubernetes=True)
    if config.target == "compose":
        raise Exit(code=_compose().logs(config, component, lines, follow))
    if config.target == "kubernetes":
        raise Exit(code=_kubernetes().logs(config, component, follow, lines))
    path = operate.log_path(config, component)
    raise Exit(code=operate.follow_log(path, lines, follow))


@task(positional=["component"], help={"component": "postgres, pgbouncer, redis, api-N, services-N or haproxy.",
                                      "target": TARGET_HELP})
@reports_user_errors
def restart(c: Context, component: str, target: str | None = None) -> None:
    """Restart one component and wait until it is healthy (an API replica is drained first: no client errors)."""
    config = _config(target, kubernetes=True)
    restart_one = {"compose": _compose().restart, "kubernetes": _kubernetes().restart}.get(
        config.target, restart_component)
    elapsed = restart_one(config, component)
    console.step(f"{component} restarted and healthy in {elapsed:.1f}s")


@task(help={"target": TARGET_HELP})
@reports_user_errors
def stop(c: Context, target: str | None = None) -> None:
    """Stop every process of the stack (data and secrets are kept; invoke deploy starts it again)."""
    config = _config(target)
    if (_compose().stop(config) if config.target == "compose" else operate.stop(config)):
        console.step("stopped every component and supervisord")
    else:
        console.step("nothing was running")


@task(help={"yes": "Confirm: delete all data, secrets and logs of this deployment.", "target": TARGET_HELP,
            "volumes": "kubernetes: also delete the database Cluster and every volume (default: kept)."})
@reports_user_errors
def destroy(c: Context, yes: bool = False, target: str | None = None, volumes: bool = False) -> None:
    """Stop the stack and delete its state directory: database, secrets, logs. Refuses without --yes."""
    config = _config(target, kubernetes=True)
    if not yes and config.target == "kubernetes":
        keep = "the database Cluster and every volume" if volumes else "every object but the database and volumes"
        raise Exit(f"error: this deletes {keep} of stack {config.kubernetes.name} in namespace "
                   f"{config.kubernetes.namespace}\n  fix: take a backup first, then run: invoke destroy --yes "
                   f"--target kubernetes{' --volumes' if volumes else ''}", code=1)
    if not yes:
        raise Exit(
            f"error: this deletes every flow run, log and secret in {config.state_dir}\n"
            "  fix: take a backup first, then run: invoke destroy --yes",
            code=1,
        )
    if config.target == "kubernetes":
        destroyed = _kubernetes().destroy(config, delete_volumes=volumes)
        console.step(f"destroyed {len(destroyed.removed)} objects in namespace {config.kubernetes.namespace}")
        for kept in destroyed.kept:
            console.note(f"kept (holds data; invoke destroy --yes --volumes deletes it): {kept}")
        return
    if config.target == "compose":
        gone = _compose().destroy(config)
        console.step(f"destroyed compose project {config.compose.project}: {len(gone)} objects removed")
        for item in gone:
            console.note(item)
        return
    removed = operate.destroy(config)
    console.step(f"destroyed: {removed} removed")


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
    config = _config(target, kubernetes=True)
    if config.target == "kubernetes" and monitoring:
        raise UserError("on Kubernetes, Prometheus and Alertmanager are kube-prometheus-stack's, not the stack's",
                        fix=f"kubectl -n {config.kubernetes.prometheus_namespace} port-forward "
                            "svc/kube-prometheus-stack-prometheus 9090")
    if tracing:
        variables = exporter_environment(config, "prefect-flows")
        if not variables:
            raise UserError("tracing is off (tracing.enabled: false)",
                            fix="set tracing.enabled: true and tracing.otlp_endpoint, then run invoke deploy")
        print(operate.shell_exports(variables))
        print("# then run the worker or flow under the SDK: opentelemetry-instrument prefect worker start ...")
        return
    if monitoring:
        if not config.monitoring.enabled:
            raise UserError("monitoring is off (monitoring.enabled: false)",
                            fix="set monitoring.enabled: true and run invoke deploy")
        variables = {"PROMETHEUS_URL": prometheus_url(config), "ALERTMANAGER_URL": alertmanager_url(config)}
    elif backups:
        variables = operate.backup_environment(config)
    else:
        variables = operate.client_environment(config)
    print(operate.shell_exports(variables))


@task(help={"target": "compose or kubernetes.",
            "out": "Directory to write into (default: the repository's compose/ or k8s/ folder, with placeholder "
                   "image references; with --out, kubernetes manifests name the images deploy would use)."})
@reports_user_errors
def render(c: Context, target: str = "compose", out: str | None = None) -> None:
    """Write a target's files for the configuration, without deploying and without any secret in them."""
    if target == "kubernetes":
        from infra.kubernetes.render import kubernetes_images, reference_rendering, write_tree
        from infra.kubernetes.render import render as render_manifests

        config = load_config(target=target)
        rendering = render_manifests(config, kubernetes_images(config)) if out else reference_rendering(config)
        directory = Path(out) if out else REPO_ROOT / "k8s"
        written = write_tree(rendering, directory)
        console.step(f"rendered {len(rendering.manifests)} objects ({len(written)} files) into {directory}; "
                     f"build them with: kubectl kustomize {directory / 'overlays' / 'example'}")
        console.step("no Secret is rendered; the manifests reference these, made at deploy (by invoke deploy, "
                     "CloudNativePG or cert-manager): " + ", ".join(sorted(rendering.external_secrets)))
        return
    if target != "compose":
        raise UserError(f"cannot render target {target!r}", fix="use --target compose or --target kubernetes")
    from infra.compose.project import reference_rendering as compose_reference
    from infra.compose.project import write_reference

    config = load_config(target=target)
    directory = Path(out) if out else REPO_ROOT / "compose"
    written = write_reference(compose_reference(config), directory)
    console.step(f"rendered {len(written)} files into {directory} (secrets are generated at deploy, not here)")


@task(help={"json": "Print JSON: a list of {name, severity, since, summary, description, runbook, labels}.",
            "target": TARGET_HELP})
@reports_user_errors
def alerts(c: Context, json_: bool = False, target: str | None = None) -> None:
    """List the alerts firing now (from Alertmanager), most severe first, with the runbook for each."""
    config = _config(target)
    firing = firing_alerts(config)
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
    config = _config(target)
    if not yes:
        raise Exit("error: the drill destroys the live Prefect database (and restores it from a fresh, verified "
                   "backup; writes made during the drill are lost)\n  fix: run invoke drill --yes", code=1)
    secrets = load_secrets(StateLayout(config.state_dir).secrets)
    console.step("disaster drill on the running stack")
    drill_target = None
    if config.target == "compose":
        from infra.compose.backups import ComposeDrillTarget

        drill_target = ComposeDrillTarget(config)
    report = run_drill(config, secrets, console.progress(), drill_target)
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
