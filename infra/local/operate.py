"""Day-2 operations on the local target: status, logs, stop, destroy, client environment."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psycopg

from infra.api_client import load_balancer_environment
from infra.config import StackConfig
from infra.database.admin import admin_connect
from infra.errors import UserError
from infra.layout import StateLayout
from infra.local.health import stack_status
from infra.local.plan import LocalPlan, build_plan
from infra.local.supervisor import Supervisor
from infra.local.workers import temporary_dir
from infra.logs.read import newest_collector_file
from infra.secrets import load_secrets
from infra.status import ComponentStatus


def deployed_plan(config: StackConfig) -> tuple[LocalPlan, StateLayout]:
    layout = StateLayout(config.state_dir)
    secrets = load_secrets(layout.secrets)
    return build_plan(config, secrets), layout


def status(config: StackConfig) -> list[ComponentStatus]:
    plan, layout = deployed_plan(config)
    return stack_status(plan, load_secrets(layout.secrets))


def settle(config: StackConfig, timeout_s: float, interval_s: float = 0.5) -> list[ComponentStatus]:
    """Poll until every component is healthy (HAProxy routing to every replica included), for at most
    ``timeout_s``; returns the last statuses either way, so the caller decides what unhealthy means to it.

    Components settle for a moment after a restart or reload: supervisord restarting a killed replica, HAProxy
    needing two passing checks before it routes to it again, pools reconnecting.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = status(config)
        if all(s.healthy for s in statuses) or time.monotonic() >= deadline:
            return statuses
        time.sleep(interval_s)


def unhealthy_summary(statuses: list[ComponentStatus]) -> str:
    """``api-2 (not running (invoke logs api-2)); haproxy (not routed to: api-2 DOWN)``, or '' when all are healthy."""
    return "; ".join(f"{s.name} ({s.detail or s.state})" for s in statuses if not s.healthy)


def log_path(config: StackConfig, component: str) -> Path:
    plan, layout = deployed_plan(config)
    names = [p.name for p in plan.programs] + ["supervisord", "migrate"]
    if component not in names:
        raise UserError(f"no component named {component!r}", fix=f"choose one of: {', '.join(names)}")
    path = current_log_file(layout, component)
    if not path.exists():
        raise UserError(
            f"{component} has written no log yet ({path})", fix="deploy first, or check its state: invoke status"
        )
    return path


def current_log_file(layout: StateLayout, component: str) -> Path:
    """Where a component writes now: its supervisord file, or for PostgreSQL with jsonlog the collector's newest
    file (the supervisord file then holds only what came before the collector started)."""
    if component == "postgres" and (newest := newest_collector_file(layout.postgres_logs)) is not None:
        return newest
    return layout.log_file(component)


def log_files(config: StackConfig, component: str | None) -> dict[str, Path]:
    """The current log file of one component, or of every component that has written one (supervisord names
    each program's file after it), by component name."""
    if component:
        return {component: log_path(config, component)}
    layout = StateLayout(config.state_dir)
    found = {path.name.removesuffix(".log"): current_log_file(layout, path.name.removesuffix(".log"))
             for path in sorted(layout.logs.glob("*.log"))}
    if not found:
        raise UserError(f"no component has written a log yet in {layout.logs}", fix="deploy first: invoke deploy")
    return found


def stop(config: StackConfig) -> bool:
    """Stop every process and supervisord. Data and secrets stay. Returns False if nothing ran."""
    supervisor = Supervisor(StateLayout(config.state_dir))
    if not supervisor.is_running():
        return False
    supervisor.shutdown()
    return True


def _stop_wal_archiving(config: StackConfig, layout: StateLayout) -> None:
    """The cluster is about to be deleted: its WAL need not reach the repository. Without this, PostgreSQL's
    shutdown waits for an archiver that may be retrying (seen after a point-in-time restore) until supervisord's
    stop timeout runs out."""
    try:
        with admin_connect(config, layout) as conn:
            conn.execute("ALTER SYSTEM SET archive_command = '/bin/true'")
            conn.execute("SELECT pg_reload_conf()")
    except psycopg.Error:
        pass  # not running, or not reachable: there is no shutdown to speed up


_OWN_PROGRAMS = {"pgbackrest", "postgres"}


def _flow_run_of(entry: Path, tmpdir: bytes) -> bool:
    """Whether the process is a flow run started by this deployment's workers: Prefect starts each in its own
    session, out of reach of supervisord's stop of the worker's group; it carries the workers' private TMPDIR."""
    environ = (entry / "environ").read_bytes().split(b"\0")
    return tmpdir in environ and any(item.startswith(b"PREFECT__FLOW_RUN_ID=") for item in environ)


def _kill_leftovers(root: Path) -> list[int]:
    """Kill the stack's own programs that still run from this state directory once supervisord is gone (seen:
    pgBackRest archive-push commands outliving their postmaster; flow runs in their own sessions). Nothing of a
    destroyed deployment may keep running; an operator's own process reading a file there (a tail, an editor) is
    left alone."""
    killed = []
    marker = (str(root) + "/").encode()
    tmpdir = f"TMPDIR={temporary_dir(StateLayout(root))}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            argv = cmdline.split(b"\0")
            program = os.path.basename(argv[0]).decode(errors="replace")
            # PostgreSQL runs archive_command through sh -c: "sh -c pgbackrest ... archive-push ...".
            ours = program in _OWN_PROGRAMS or (program in ("sh", "bash") and b"pgbackrest" in cmdline)
            if (marker in cmdline and ours) or _flow_run_of(entry, tmpdir):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return killed


def destroy(config: StackConfig) -> Path:
    layout = StateLayout(config.state_dir)
    if layout.root.exists() and not (layout.root / "deployed.json").exists() and not layout.secrets.exists():
        raise UserError(
            f"{layout.root} does not look like a prefect-stack state directory; refusing to delete it",
            fix="check local.state_dir in the configuration",
        )
    _stop_wal_archiving(config, layout)
    stop(config)
    _kill_leftovers(layout.root)
    if layout.root.exists():
        shutil.rmtree(layout.root)
    return layout.root


def client_environment(config: StackConfig) -> dict[str, str]:
    """Shell exports for Prefect clients of this host's stack (through the load balancer)."""
    return load_balancer_environment(config)


def is_root() -> bool:
    return os.geteuid() == 0
