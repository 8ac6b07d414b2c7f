"""The fault drill: for each component and fault, hurt the component while Prefect clients work through the load
balancer, then count what they saw and what the stack kept, and how long until everything is healthy again.

One fault at a time, each on a healthy stack (the drill waits, bounded, and stops if the stack does not settle:
two faults at once prove nothing about either). Every figure is measured; the goals are checked against them.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from infra.errors import UserError
from infra.faults.inject import ALERT_FOR_KIND, FAULTS, Fault, FaultInjector, kind_of
from infra.faults.load import PrefectClientLoad
from infra.status import ComponentStatus
from infra.targets import Target

# Goals (issue 18): no client error, nothing lost or doubled for any fault; PostgreSQL whole again within 5 s of a
# crash; a graceful restart pages nobody.
POSTGRES_CRASH_HEALTHY_S = 5.0
PAGE = "page"


@dataclass(frozen=True)
class DrillOptions:
    clients: int = 20
    warmup_operations: int = 60  # acknowledged requests before the fault: the load is flowing
    freeze_s: float = 20.0
    hold_s: float = 0.0  # > 0: keep the component down this long (past its alert's for:), then bring it back
    after_healthy_s: float = 3.0  # load kept running once healthy: requests made after the fault are counted too
    healthy_timeout_s: float = 180.0
    alert_timeout_s: float = 180.0  # after the release: the held fault's alert resolves within this
    idempotency_keys: bool = True  # False: create runs without a key, as Prefect's create_flow_run does by default
    timing_goals: bool = True  # False: the time-to-healthy goal is reported, not judged (the test suite's choice)


@dataclass
class AlertSeen:
    name: str
    severity: str
    fired_at_s: float  # seconds after the fault, when the drill first saw it active in Alertmanager
    resolved_at_s: float | None = None
    before_fault: bool = False  # already active when the fault began: not the fault's doing


@dataclass
class FaultResult:
    component: str
    fault: Fault
    operations: int
    client_errors: int
    error_samples: list[str]
    retried: dict[str, int]
    runs_lost: int
    runs_doubled: int
    states_lost: int
    states_doubled: int
    healthy_after_s: float | None  # seconds from the fault's end (the kill, the thaw, the release) to healthy
    fault_s: float  # how long the fault itself lasted (a freeze, a hold, a restart)
    alerts: list[AlertSeen] = field(default_factory=list)
    expected_alert: str | None = None
    missed: list[str] = field(default_factory=list)  # the goals this fault missed, in words

    @property
    def passed(self) -> bool:
        return not self.missed

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


class AlertWatcher:
    """Polls the stack's active alerts every second in a thread, remembering when each appeared and went."""

    def __init__(self, read: Callable[[], list[Any]] | None, started: float) -> None:
        self.read = read
        self.started = started
        self.seen: dict[str, AlertSeen] = {}
        self.unreadable = 0  # polls that could not read Alertmanager (it may be the component hurt)
        self.polls = 0  # polls that read it; the first one is taken before the fault
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fault-drill-alerts", daemon=True)

    def __enter__(self) -> AlertWatcher:
        if self.read is not None:
            self.poll()  # what was firing already, before the fault
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self.read is not None:
            self._thread.join(10)

    def poll(self) -> None:
        if self.read is None:
            return
        try:
            active = self.read()
        except Exception:
            self.unreadable += 1
            return
        now = time.monotonic() - self.started
        first = self.polls == 0
        self.polls += 1
        names = set()
        for alert in active:
            names.add(alert.name)
            record = self.seen.get(alert.name)
            if record is None or record.resolved_at_s is not None:
                self.seen[alert.name] = AlertSeen(alert.name, alert.severity, round(now, 1), before_fault=first)
        for name, record in self.seen.items():
            if name not in names and record.resolved_at_s is None:
                record.resolved_at_s = round(now, 1)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.poll()

    def active(self, name: str) -> bool:
        record = self.seen.get(name)
        return record is not None and record.resolved_at_s is None


@dataclass
class Stack:
    """What the drill needs of a deployment, whatever its target."""

    injector: FaultInjector
    status: Callable[[], list[ComponentStatus]]
    alerts: Callable[[], list[Any]] | None  # None: monitoring is off, no alert is checked
    api_url: str
    auth: tuple[str, str]
    verify: Any


def _wait(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> float | None:
    """Seconds until ``check`` held, or None after ``timeout_s``."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # noqa: S110 - a probe that fails only means "not yet"
            pass
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(interval_s)


def _healthy(stack: Stack) -> bool:
    return all(status.healthy for status in stack.status())


def _inject(stack: Stack, component: str, fault: Fault, options: DrillOptions) -> None:
    """The fault itself, ending when the component is allowed back (the crash's own restart is its supervisor's).
    A frozen or held component is let go also when the drill is interrupted."""
    injector = stack.injector
    if fault == "restart":
        injector.restart(component)
    elif fault == "freeze":
        injector.freeze(component)
        try:
            time.sleep(options.freeze_s)  # the fault's length, chosen by the operator: not a wait for a condition
        finally:
            injector.thaw(component)
    else:
        injector.crash(component)
        if options.hold_s > 0:
            injector.hold_down(component)
            try:
                time.sleep(options.hold_s)  # held down on purpose, as long as the operator asked
            finally:
                injector.release(component)


def run_fault(stack: Stack, component: str, fault: Fault, options: DrillOptions) -> FaultResult:
    """One fault under load, measured."""
    if _wait(lambda: _healthy(stack), options.healthy_timeout_s) is None:
        raise UserError(f"the stack is not healthy before the {fault} of {component}; the drill stops here",
                        fix="bring it back (invoke status, invoke logs COMPONENT), then run the drill again")
    injector = stack.injector
    before = injector.instance(component)
    load = PrefectClientLoad(stack.api_url, stack.auth, stack.verify, options.clients, options.idempotency_keys)
    load.start()
    if _wait(lambda: load.record.operations >= options.warmup_operations, 120) is None:
        load.stop()
        raise UserError(f"the drill's clients made only {load.record.operations} requests in 120 s before the fault",
                        fix="check the API (invoke status) before drilling")
    expected = ALERT_FOR_KIND.get(kind_of(component)) if options.hold_s > 0 and fault == "crash" else None
    started = time.monotonic()
    with AlertWatcher(stack.alerts, started) as watcher:
        try:
            _inject(stack, component, fault, options)
        except BaseException:
            load.stop()
            raise
        fault_ended = time.monotonic()

        def back() -> bool:
            # A crash is over once another instance runs (a restart returned once it was back, and HAProxy's
            # restart keeps its master's pid); everything must then be healthy.
            replaced = fault != "crash" or injector.instance(component) not in ("", before)
            return replaced and _healthy(stack)

        healthy_after = _wait(back, options.healthy_timeout_s)
        if healthy_after is not None:
            time.sleep(options.after_healthy_s)  # the load keeps going on the healthy stack for this long, on purpose
        record = load.stop()
        if expected is not None and healthy_after is not None:
            _wait(lambda: not watcher.active(expected), options.alert_timeout_s, interval_s=1.0)
        watcher.poll()
    with httpx.Client(base_url=stack.api_url, auth=stack.auth, verify=stack.verify, timeout=30,
                      trust_env=False) as client:
        verification = load.verify(client)
    result = FaultResult(
        component=component, fault=fault, operations=record.operations, client_errors=len(record.errors),
        error_samples=sorted(set(record.errors))[:5], retried=dict(record.attempts_retried),
        runs_lost=verification.runs_lost, runs_doubled=verification.runs_doubled,
        states_lost=verification.states_lost, states_doubled=verification.states_doubled,
        healthy_after_s=None if healthy_after is None else round(healthy_after, 1),
        fault_s=round(fault_ended - started, 1), alerts=list(watcher.seen.values()), expected_alert=expected)
    result.missed = missed_goals(result, options)
    return result


def missed_goals(result: FaultResult, options: DrillOptions) -> list[str]:
    """The goals a fault's figures miss, each in words an operator can act on."""
    missed = []
    if result.client_errors:
        missed.append(f"{result.client_errors} client errors")
    for count, what in ((result.runs_lost, "acknowledged runs lost"), (result.runs_doubled, "runs stored twice"),
                        (result.states_lost, "acknowledged states lost"),
                        (result.states_doubled, "states applied twice")):
        if count:
            missed.append(f"{count} {what}")
    if result.healthy_after_s is None:
        missed.append(f"not healthy within {options.healthy_timeout_s:.0f} s")
    elif (options.timing_goals and result.fault == "crash" and kind_of(result.component) == "postgres"
          and options.hold_s == 0 and result.healthy_after_s > POSTGRES_CRASH_HEALTHY_S):
        missed.append(f"healthy after {result.healthy_after_s} s (goal: {POSTGRES_CRASH_HEALTHY_S:.0f} s)")
    if result.fault == "restart":
        pages = sorted({alert.name for alert in result.alerts if alert.severity == PAGE and not alert.before_fault})
        if pages:
            missed.append(f"a graceful restart paged: {', '.join(pages)}")
    if result.expected_alert is not None:
        seen = next((alert for alert in result.alerts if alert.name == result.expected_alert), None)
        if seen is None:
            missed.append(f"{result.expected_alert} did not fire while held down {options.hold_s:.0f} s")
        elif seen.resolved_at_s is None:
            missed.append(f"{result.expected_alert} did not resolve once back")
    return missed


def plan(components: list[str], chosen_components: list[str], chosen_faults: list[str]) -> list[tuple[str, Fault]]:
    """Which (component, fault) pairs to run, in order; refuses names that do not exist."""
    unknown = [name for name in chosen_components if name not in components]
    if unknown:
        raise UserError(f"no component named {', '.join(unknown)}", fix=f"choose from: {', '.join(components)}")
    bad = [name for name in chosen_faults if name not in FAULTS]
    if bad:
        raise UserError(f"no fault named {', '.join(bad)}", fix=f"choose from: {', '.join(FAULTS)}")
    faults: list[Fault] = [f for f in FAULTS if f in chosen_faults] if chosen_faults else list(FAULTS)
    return [(component, fault) for component in (chosen_components or components) for fault in faults]


def drill_stack(target: Target) -> Stack:
    """The drill's view of a deployed target: its injector, status, alerts and the API as its clients reach it."""
    env = target.client_environment()
    user, _, password = env.get("PREFECT_API_AUTH_STRING", "").partition(":")
    ca_file = env.get("PREFECT_API_SSL_CERT_FILE")
    verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
    alerts = target.firing_alerts if target.config.monitoring.enabled else None
    return Stack(target.fault_injector(), target.status, alerts, env["PREFECT_API_URL"], (user, password), verify)
