"""`invoke deploy` on the local target: bring the stack to the configured state, touching only what changed.

Order: preflight (nothing starts if the configuration cannot work) -> secrets -> rendered files -> supervisord
-> PostgreSQL (initdb once; roles, database, pg_trgm) -> PgBouncer, Redis -> migrations and block
registration -> API replicas -> background services -> HAProxy -> work pools and automations through the API ->
workers. Each program's fingerprint (command,
environment, files) is recorded in <state>/deployed.json; a program whose fingerprint is unchanged and that
is running is left alone, so a second deploy with nothing changed restarts nothing. Changed API replicas
are replaced one at a time, each drained in HAProxy first, so clients see no error.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from infra import console, haproxy_runtime
from infra.config import StackConfig
from infra.database.admin import ensure_database, initialise_cluster, run_as_ids
from infra.errors import UserError
from infra.executables import venv_bin
from infra.layout import StateLayout
from infra.local.health import api_ready, component_status
from infra.local.plan import LocalPlan, build_plan, service_user
from infra.local.supervisor import Supervisor
from infra.local.workers import COMPONENT as WORKER
from infra.local.workers import check_worker_python, flow_code_dir, temporary_dir, workers_bin
from infra.redis_passwords import apply_passwords
from infra.render import RenderedFile
from infra.render.haproxy import MAINTENANCE_MAP, server_name
from infra.render.prometheus import RETIRED_FILES
from infra.render.supervisor import Program
from infra.secrets import Secrets, ensure_secrets
from infra.work_pools.automations import desired_automations
from infra.work_pools.provision import ProvisionReport, load_balancer_api, provision
from infra.work_pools.templates import PoolSpec, desired_pools

# Programs that re-read their files on a signal, without dropping connections.
RELOAD_SIGNALS = {"pgbouncer": "HUP", "haproxy": "USR2", "prometheus": "HUP", "alertmanager": "HUP"}
START_TIMEOUT_S = {
    "postgres": 60, "pgbouncer": 20, "redis": 20, "s3": 30, "api": 120, "services": 60, "haproxy": 30,
    "backup-scheduler": 30, "prometheus": 60, "alertmanager": 30, "node-exporter": 30,
    "postgres-exporter": 30, "redis-exporter": 30, "prefect-exporter": 30, WORKER: 60, "log-pruner": 30,
}
DRAIN_TIMEOUT_S = 30


@dataclass
class DeployReport:
    started: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    migrated: bool = False
    provisioned: ProvisionReport | None = None  # work pools and automations (None: workers disabled)
    elapsed_s: float = 0.0

    @property
    def changed_nothing(self) -> bool:
        return not (self.started or self.restarted or self.reloaded or self.removed or self.migrated
                    or self.provisioning_changed)

    @property
    def provisioning_changed(self) -> bool:
        done = self.provisioned
        return done is not None and bool(done.created or done.put_back or done.queues or done.automations)

    @property
    def notes(self) -> list[str]:
        """What provisioning did and left alone, for the operator to read after the deploy."""
        return self.provisioned.lines() if self.provisioned is not None else []


def load_deployed(layout: StateLayout) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(layout.deployed_state.read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_deployed(layout: StateLayout, state: dict[str, Any]) -> None:
    tmp = layout.deployed_state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, layout.deployed_state)


# ---------------------------------------------------------------- preflight


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _claimed_ports(previous: dict[str, Any]) -> set[int]:
    """Ports this deployment holds: those claimed by any deploy since the last success, and (for state written
    before claims existed) those of the last successful deploy."""
    return set(previous.get("claimed_ports", [])) | set(previous.get("ports", {}).values())


def preflight(config: StackConfig, layout: StateLayout, previous: dict[str, Any]) -> None:
    """Everything that would make the deploy fail half-way is checked before anything starts."""
    ours = _claimed_ports(previous) if Supervisor(layout).is_running() else set()
    problems = []
    for field_name, port in config.port_fields().items():
        host = config.load_balancer.bind_address if field_name.startswith("load_balancer") else "127.0.0.1"
        if port not in ours and not _port_free(host, port):
            env = "PREFECT_STACK_" + field_name.split(" ")[0].replace(".", "__").upper()
            problems.append(f"{field_name}: port {port} is already in use on {host}; choose a free port ({env}=...)")
    if problems:
        raise UserError("\n  ".join(["ports taken by another process:", *problems]),
                        fix="free those ports or change them in the configuration")
    if not (config.postgres.bin_dir / "postgres").is_file():
        raise UserError(
            f"PostgreSQL binaries not found in {config.postgres.bin_dir}",
            fix="run scripts/bootstrap.sh, or set postgres.bin_dir to where initdb and postgres live",
        )
    run_as = service_user(config)
    if run_as is not None:
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", run_as],
                check=True,
            )
        _check_reachable_by_others(layout.root, "local.state_dir")
        _check_reachable_by_others(venv_bin(), "the virtual environment")
        interpreter = Path(sys.executable).resolve()
        _check_reachable_by_others(interpreter, "the Python interpreter (create .venv from /usr/bin/python3)")
        if config.workers.enabled:
            _check_reachable_by_others(workers_bin(config) / "prefect", "workers.python")
            code_dir = flow_code_dir(config)
            _check_reachable_by_others(code_dir, "the flow code directory (workers.flow_code_dir)")
            if code_dir.is_dir() and code_dir.stat().st_mode & 0o005 != 0o005 \
                    and code_dir.stat().st_uid != pwd.getpwnam(run_as).pw_uid:
                raise UserError(f"the flow code directory {code_dir} is not readable by the service user {run_as} "
                                f"(mode {code_dir.stat().st_mode & 0o777:04o}); its workers run flows from there",
                                fix=f"chmod o+rx {code_dir}, or chown it to {run_as}")


def _check_reachable_by_others(path: Path, what: str) -> None:
    """As root, processes run as the service user: every directory above must let it through (o+x)."""
    for parent in path.resolve().parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise UserError(
                f"{what} ({path}) is below {parent}, which the service user cannot enter (mode "
                f"{parent.stat().st_mode & 0o777:04o})",
                fix=f"chmod o+x {parent}, or choose a path the service user can reach",
            )


# ---------------------------------------------------------------- files


def _prepare_dirs(layout: StateLayout, run_as: str | None) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    # Traversable, not listable: the service user must reach its directories below; no one else can list them.
    os.chmod(layout.root, 0o711)  # noqa: S103
    for directory in layout.service_owned_dirs():
        directory.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.postgres_data, 0o700)
    os.chmod(layout.run, 0o700)
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        for directory in layout.service_owned_dirs():
            os.chown(directory, entry.pw_uid, entry.pw_gid)


def _prepare_worker_dirs(config: StackConfig, layout: StateLayout, run_as: str | None) -> None:
    """The flow code directory, created for the operator, who puts flow code there: the service user (and so every
    flow) reads it but cannot change it; an existing one is left as it is (preflight checked it). And the workers'
    private temporary directory."""
    if not config.workers.enabled:
        return
    code_dir = flow_code_dir(config)
    if not code_dir.exists():
        code_dir.mkdir(parents=True)
        os.chmod(code_dir, 0o755)  # noqa: S103 - code, not secrets: the service user must read it
    tmp = temporary_dir(layout)
    tmp.mkdir(mode=0o700, exist_ok=True)
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)


def _write_file(rendered: RenderedFile, owner: tuple[int, int] | None) -> bool:
    """Atomic write with the final mode and owner from the start. Returns True when the content changed."""
    path = rendered.path
    if path.exists() and path.read_text() == rendered.content and (path.stat().st_mode & 0o777) == rendered.mode:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)  # etc/grafana/... (etc itself is prepared with its owner)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, rendered.mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(rendered.content)
    os.chmod(tmp, rendered.mode)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    return True


def write_files(plan: LocalPlan) -> list[Path]:
    owner = None
    if plan.run_as is not None:
        entry = pwd.getpwnam(plan.run_as)
        owner = (entry.pw_uid, entry.pw_gid)
    changed = []
    for rendered in plan.files:
        # supervisord.conf stays with the operator (root); components' files go to the service user.
        file_owner = None if rendered.path == plan.layout.supervisor_conf else owner
        if _write_file(rendered, file_owner):
            changed.append(rendered.path)
    for name in RETIRED_FILES:
        (plan.layout.etc / name).unlink(missing_ok=True)
    return changed


# ---------------------------------------------------------------- programs


class _Deployer:
    def __init__(self, plan: LocalPlan, secrets: Secrets, previous: dict[str, Any]) -> None:
        self.plan = plan
        self.secrets = secrets
        self.supervisor = Supervisor(plan.layout)
        self.previous_fingerprints: dict[str, str] = previous.get("fingerprints", {})
        self.previous_settings: dict[str, str] = previous.get("settings_fingerprints", {})
        self.section_changed: set[str] = set()
        self.applied: set[str] = set()  # programs this deploy already started or restarted
        self.report = DeployReport()

    def wait_healthy(self, program: Program) -> None:
        def healthy() -> bool:
            info = self.supervisor.processes().get(program.name)
            return component_status(program, info, self.plan, self.secrets).healthy

        console.wait_until(
            healthy, START_TIMEOUT_S[program.component], program.name,
            fix=f"read its log: invoke logs {program.name}",
        )

    def needs(self, program: Program) -> str:
        """'start', 'restart', 'reload' or '' (nothing to do)."""
        if program.name in self.applied:
            return ""
        info = self.supervisor.processes().get(program.name)
        if info is None or not info.running:
            return "start"
        if self.previous_fingerprints.get(program.name) == program.fingerprint():
            return ""
        if program.name not in self.section_changed and program.component in RELOAD_SIGNALS:
            return "reload"
        if (program.name not in self.section_changed and program.component == "redis"
                and self.previous_settings.get(program.name) == program.settings_fingerprint()):
            return "credentials"  # only its passwords changed (a rotation): handed over without a restart
        return "restart"

    def replace_definition(self, name: str) -> None:
        """A program whose supervisord section changed must be removed and re-added to take the new one."""
        if name in self.section_changed:
            self.supervisor.remove(name)
            self.supervisor.add(name)
            self.section_changed.discard(name)

    def apply(self, program: Program) -> bool:
        """Start, reload or restart one program as needed; True when anything happened."""
        action = self.needs(program)
        if not action:
            if program.name in self.section_changed:
                # Only supervisord's own settings for it changed (its log rotation): they need a restart, which a
                # setting of the logs alone is not worth for a database or a replica.
                console.step(f"{program.name}: the new log rotation applies from its next restart "
                             f"(invoke restart {program.name})")
                self.section_changed.discard(program.name)
            return False
        if action == "credentials":
            if self._hand_over_redis_passwords():
                console.step(f"gave {program.name} its new passwords (ACL SETUSER; connections kept, no restart)")
                self.report.reloaded.append(program.name)
                self.wait_healthy(program)
                self.applied.add(program.name)
                return True
            action = "restart"  # it accepts none of the values we know (a secret file replaced by hand)
        if action == "reload":
            console.step(f"reloading {program.name} (configuration changed, connections kept)")
            self.signal_reload(program)
            self.report.reloaded.append(program.name)
        else:
            console.step(f"{'starting' if action == 'start' else 'restarting'} {program.name}")
            if action == "restart":
                self.supervisor.stop(program.name)
            self.replace_definition(program.name)
            self.supervisor.start(program.name, wait=True)
            (self.report.started if action == "start" else self.report.restarted).append(program.name)
        self.wait_healthy(program)
        self.applied.add(program.name)
        return True

    def signal_reload(self, program: Program) -> None:
        """Send the program its reload signal (HAProxy's re-executes its master with the new binary and
        configuration)."""
        self.supervisor.signal(program.name, RELOAD_SIGNALS[program.component])
        time.sleep(1)  # the reload is asynchronous: let the new configuration take over before probing

    def serving(self) -> bool:
        """Whether clients are being served now: HAProxy and at least one API replica run."""
        processes = self.supervisor.processes()
        running = {name for name, info in processes.items() if info.running}
        return "haproxy" in running and any(p.name in running for p in self.plan.by_component("api"))

    def maintenance(self, why: str) -> contextlib.AbstractContextManager[None]:
        """The planned maintenance window at the load balancer (opened only on a stack that is serving)."""
        layout = self.plan.layout
        return haproxy_runtime.maintenance_window(
            lambda line: haproxy_runtime.command(layout.haproxy_socket, line), layout.etc / MAINTENANCE_MAP, why)

    def wait_routed(self) -> None:
        """Until HAProxy routes to every replica again (after the database came back or the replicas rolled), so
        that the window closes on a load balancer with somewhere to send the clients."""
        socket_path = self.plan.layout.haproxy_socket
        console.wait_until(lambda: haproxy_runtime.all_servers_up(socket_path), START_TIMEOUT_S["api"],
                           "the API replicas behind HAProxy", fix="invoke status; invoke logs api-1")

    def _hand_over_redis_passwords(self) -> bool:
        port = self.plan.config.redis.port

        def connect(password: str) -> redis.Redis:
            return redis.Redis(port=port, password=password, socket_timeout=5)

        return apply_passwords(connect, self.secrets)

    def sync_definitions(self) -> None:
        added, changed, removed = self.supervisor.reload_config()
        self.section_changed = set(changed)
        for name in removed:
            # A removed replica leaves HAProxy's configuration too; its reload comes last and is graceful.
            console.step(f"removing {name} (no longer in the configuration)")
            self.supervisor.remove(name)
            self.report.removed.append(name)
        for name in added:
            self.supervisor.add(name)

    def migrate(self) -> dict[str, str]:
        console.step("migrating the database schema and registering block types (once, before any replica)")
        uid, gid = run_as_ids(self.plan.run_as)
        result = subprocess.run(
            [str(Path(sys.executable)), "-m", "infra.database.migrate"],
            env={**self.plan.migration_env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            capture_output=True, text=True, check=False, cwd="/",
            user=uid, group=gid, extra_groups=[] if uid is not None else None,
        )
        log = self.plan.layout.log_file("migrate")
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            tail = "\n    ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise UserError(f"the database migration failed:\n    {tail}", fix=f"read {log}")
        self.report.migrated = True
        outcome: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
        return outcome

    def apply_api(self, replicas: list[Program]) -> None:
        """New replicas start together (no start-up race: blocks are registered); changed ones roll one by one."""
        fresh = [p for p in replicas if self.needs(p) == "start"]
        for program in fresh:
            console.step(f"starting {program.name} on port {program.port}")
            self.replace_definition(program.name)
            self.supervisor.start(program.name, wait=False)
            self.report.started.append(program.name)
        for program in fresh:
            self.wait_healthy(program)
            self.applied.add(program.name)
        for program in replicas:
            if self.needs(program) == "restart":
                self.rolling_restart(program)

    def rolling_restart(self, program: Program) -> None:
        sock = self.plan.layout.haproxy_socket
        server = server_name(int(program.name.split("-")[1]))
        balanced = sock.exists() and self.supervisor.processes().get("haproxy", None) is not None
        console.step(f"replacing {program.name}: drain, restart, wait ready, re-enable")
        if balanced:
            try:
                haproxy_runtime.set_server_state(sock, server, "drain")
                # Requests finish; websockets (workers' and flow runs' event and log streams) never end by
                # themselves: they are closed once the replica takes no new request, and their clients reconnect.
                console.wait_until(
                    lambda: haproxy_runtime.requests_in_flight(sock, server) == 0,
                    DRAIN_TIMEOUT_S, f"draining {program.name}", fix="requests are still in flight; retry later",
                )
                haproxy_runtime.set_server_state(sock, server, "maint")
                haproxy_runtime.close_connections(sock, server)
            except (OSError, KeyError):
                balanced = False  # HAProxy not (yet) serving this replica: nothing to drain
        self.supervisor.stop(program.name)
        self.replace_definition(program.name)
        self.supervisor.start(program.name, wait=True)
        assert program.port is not None  # noqa: S101 - API programs have ports
        port = program.port
        console.wait_until(lambda: api_ready(port), START_TIMEOUT_S["api"], program.name,
                           fix=f"read its log: invoke logs {program.name}")
        if balanced:
            haproxy_runtime.set_server_state(sock, server, "ready")
            # Let the health check see it up before the next replica goes away.
            console.wait_until(
                lambda: haproxy_runtime.server_stats(sock)[server].get("status", "").startswith("UP"),
                15, f"{program.name} in the load balancer", fix="read invoke logs haproxy",
            )
        self.report.restarted.append(program.name)
        self.applied.add(program.name)


def deploy(config: StackConfig) -> tuple[LocalPlan, DeployReport]:
    started = time.monotonic()
    # A bad template or job variable, or a worker environment that cannot run, is refused before anything changes.
    pools = desired_pools(config)
    check_worker_python(config)
    layout = StateLayout(config.state_dir)
    previous = load_deployed(layout)
    preflight(config, layout, previous)
    run_as = service_user(config)
    _prepare_dirs(layout, run_as)
    _prepare_worker_dirs(config, layout, run_as)
    # Claim the ports before anything starts: if this deploy fails half-way, the next one must recognise the
    # processes it left running as its own, not as strangers holding the ports.
    claimed = sorted(_claimed_ports(previous) | set(config.port_fields().values()))
    _save_deployed(layout, {**previous, "claimed_ports": claimed})
    secrets = ensure_secrets(layout.secrets)
    plan = build_plan(config, secrets)
    changed_files = write_files(plan)
    if changed_files:
        console.step(f"rendered {len(changed_files)} changed file(s) into {layout.etc}")

    deployer = _Deployer(plan, secrets, previous)
    if deployer.supervisor.ensure_running(layout.supervisor_conf):
        console.step(f"started supervisord ({layout.supervisor_conf})")
    deployer.sync_definitions()
    report = deployer.report

    if initialise_cluster(config, layout, secrets, run_as):
        console.step(f"created the PostgreSQL cluster in {layout.postgres_data}")
    import prefect  # the installed version decides whether the schema must move

    versions = previous.get("versions", {})
    schema_may_move = versions.get("prefect") != prefect.__version__ or "alembic_revision" not in versions
    postgres_restarts = deployer.needs(plan.program("postgres")) == "restart"
    why = [what for what, due in (("PostgreSQL restarts", postgres_restarts),
                                  ("the schema migrates", schema_may_move)) if due]
    # Clients being served are told to wait (not failed) while the database goes away or the schema moves under
    # the replicas. A first deploy serves nobody yet.
    window = bool(why) and deployer.serving()
    with deployer.maintenance(" and ".join(why)) if window else contextlib.nullcontext():
        postgres_changed = deployer.apply(plan.program("postgres"))
        ensure_database(config, layout, secrets)
        deployer.apply(plan.program("pgbouncer"))
        redis_restarted = deployer.apply(plan.program("redis")) and "redis" in report.restarted
        for program in plan.by_component("s3"):
            deployer.apply(program)
        if schema_may_move or postgres_changed:
            outcome = deployer.migrate()
            versions = {"prefect": outcome["prefect_version"], "alembic_revision": outcome["alembic_revision"]}
        deployer.apply_api(plan.by_component("api"))
        if window:
            deployer.wait_routed()
    for program in plan.by_component("services"):
        # Prefect's services silently stop consuming after a Redis restart: restart them with it.
        if redis_restarted and deployer.needs(program) == "":
            deployer.supervisor.stop(program.name)
        deployer.apply(program)
    deployer.apply(plan.program("haproxy"))
    if config.workers.enabled:
        report.provisioned = _provision(config, secrets, pools)
    # After their pools exist: a worker never creates its pool (it would get the bare default template).
    for program in plan.by_component(WORKER):
        deployer.apply(program)
    for program in plan.by_component("backup-scheduler"):
        deployer.apply(program)
    deployer.apply(plan.program("log-pruner"))
    for component in ("node-exporter", "postgres-exporter", "redis-exporter", "prefect-exporter", "alertmanager",
                      "prometheus"):
        for program in plan.by_component(component):
            deployer.apply(program)
    if config.backups.physical.enabled:
        from infra.local.pgbackrest import ensure_stanza

        ensure_stanza(config)  # idempotent; WAL archiving succeeds from here on

    _save_deployed(layout, {
        "fingerprints": {p.name: p.fingerprint() for p in plan.programs},
        "settings_fingerprints": {p.name: p.settings_fingerprint() for p in plan.programs},
        "ports": config.port_fields(),
        "claimed_ports": sorted(config.port_fields().values()),
        "versions": versions,
        "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    report.elapsed_s = time.monotonic() - started
    return plan, report


def _provision(config: StackConfig, secrets: Secrets, pools: list[PoolSpec]) -> ProvisionReport:
    console.step("provisioning work pools, queues and automations through the API")
    return provision(load_balancer_api(config, secrets.get("prefect_auth")), pools, desired_automations(config))


def restart_component(config: StackConfig, name: str) -> float:
    """Restart one component; an API replica is drained in HAProxy first. Returns the seconds it took."""
    started = time.monotonic()
    layout = StateLayout(config.state_dir)
    from infra.secrets import load_secrets

    secrets = load_secrets(layout.secrets)
    plan = build_plan(config, secrets)
    program = plan.program(name)
    deployer = _Deployer(plan, secrets, load_deployed(layout))
    if not deployer.supervisor.is_running():
        raise UserError("the stack is not running", fix="start it with invoke deploy")
    # A section deploy changed without restarting the program (its log rotation) takes effect now.
    deployer.section_changed = set(deployer.supervisor.reload_config()[1])
    if program.component == "api":
        deployer.rolling_restart(program)
    elif program.component == "haproxy" and name not in deployer.section_changed:
        # Master-worker mode: USR2 makes the master re-execute itself (binary and configuration) and hand the
        # listening sockets to new workers, while the old ones finish their requests. A stop and start would refuse
        # every connection until supervisord's kill (measured: 32 s).
        console.step(f"restarting {name} in place (its master re-executes; no connection is refused)")
        deployer.signal_reload(program)
        deployer.wait_healthy(program)
    else:
        console.step(f"restarting {name}")
        deployer.supervisor.stop(name)
        deployer.replace_definition(name)
        deployer.supervisor.start(name, wait=True)
        deployer.wait_healthy(program)
        if program.component == "redis":
            # Prefect's services silently stop consuming after a Redis restart: restart them with it.
            for services in plan.by_component("services"):
                console.step(f"restarting {services.name} (it must reconnect to Redis)")
                deployer.supervisor.stop(services.name)
                deployer.supervisor.start(services.name, wait=True)
                deployer.wait_healthy(services)
    return time.monotonic() - started
