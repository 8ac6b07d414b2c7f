"""The fault drill's parts that need no stack: the plan, the goals, the alert timeline, the process tree, the
report, the task's refusals, and the connection-error translation against a real (closed) port."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy.exc
from invoke.context import Context
from invoke.exceptions import Exit
from rich.console import Console

from infra.config import StackConfig
from infra.database import connect_errors
from infra.errors import UserError
from infra.faults import drill
from infra.faults.drill import AlertWatcher, DrillOptions, FaultResult, missed_goals, plan
from infra.faults.inject import ALERT_FOR_KIND, kind_of
from infra.faults.report import missed_lines, results_table
from infra.local.faults import descendants
from infra.tasks import faults as fault_tasks


def _result(**changes: object) -> FaultResult:
    fields: dict[str, object] = {
        "component": "api-1", "fault": "crash", "operations": 300, "client_errors": 0, "error_samples": [],
        "retried": {}, "runs_lost": 0, "runs_doubled": 0, "states_lost": 0, "states_doubled": 0,
        "healthy_after_s": 3.0, "fault_s": 0.0}
    fields.update(changes)
    return FaultResult(**fields)  # type: ignore[arg-type]


def test_the_plan_runs_every_fault_of_every_component_in_order_unless_chosen() -> None:
    assert plan(["postgres", "api-1"], [], []) == [
        ("postgres", "crash"), ("postgres", "freeze"), ("postgres", "restart"),
        ("api-1", "crash"), ("api-1", "freeze"), ("api-1", "restart")]
    assert plan(["postgres", "api-1"], ["api-1"], ["restart", "crash"]) == [("api-1", "crash"), ("api-1", "restart")]


@pytest.mark.parametrize(("components", "faults", "said"), [
    (["pgbouner"], [], "no component named pgbouner"),
    ([], ["sigkill"], "no fault named sigkill"),
])
def test_the_plan_refuses_names_that_do_not_exist_naming_the_choices(components: list[str], faults: list[str],
                                                                      said: str) -> None:
    with pytest.raises(UserError) as raised:
        plan(["postgres", "pgbouncer"], components, faults)
    assert said in str(raised.value)
    assert "choose from" in str(raised.value)


def test_a_fault_without_errors_losses_or_doubles_meets_every_goal() -> None:
    assert missed_goals(_result(), DrillOptions()) == []


def test_every_client_error_and_every_lost_or_doubled_write_is_a_missed_goal() -> None:
    missed = missed_goals(_result(client_errors=2, runs_lost=1, runs_doubled=3, states_lost=4, states_doubled=5),
                          DrillOptions())
    assert missed == ["2 client errors", "1 acknowledged runs lost", "3 runs stored twice",
                      "4 acknowledged states lost", "5 states applied twice"]


def test_postgres_must_be_whole_again_within_five_seconds_of_a_crash() -> None:
    slow = _result(component="postgres", healthy_after_s=6.2)
    assert missed_goals(slow, DrillOptions()) == ["healthy after 6.2 s (goal: 5 s)"]
    assert missed_goals(_result(component="postgres", healthy_after_s=4.4), DrillOptions()) == []
    # Held down on purpose, or frozen: the 5 s goal is the crash's own.
    assert missed_goals(slow, DrillOptions(hold_s=90)) == []
    assert missed_goals(_result(component="postgres", fault="freeze", healthy_after_s=6.2), DrillOptions()) == []


def test_a_stack_that_never_settles_misses_its_goal() -> None:
    assert missed_goals(_result(healthy_after_s=None), DrillOptions(healthy_timeout_s=180)) == [
        "not healthy within 180 s"]


def test_a_graceful_restart_that_pages_misses_its_goal_a_warning_does_not() -> None:
    paged = _result(fault="restart", alerts=[drill.AlertSeen("PostgresDown", "page", 61.0, 70.0),
                                             drill.AlertSeen("PrefectApiReplicaDown", "warning", 3.0, 9.0)])
    assert missed_goals(paged, DrillOptions()) == ["a graceful restart paged: PostgresDown"]
    already = _result(fault="restart", alerts=[drill.AlertSeen("PostgresDown", "page", 0.0, None, before_fault=True)])
    assert missed_goals(already, DrillOptions()) == []  # firing before the restart: not the restart's page


def test_a_held_fault_must_fire_its_alert_and_resolve_it() -> None:
    options = DrillOptions(hold_s=90)
    assert missed_goals(_result(expected_alert="PrefectApiReplicaDown"), options) == [
        "PrefectApiReplicaDown did not fire while held down 90 s"]
    still = _result(expected_alert="PrefectApiReplicaDown",
                    alerts=[drill.AlertSeen("PrefectApiReplicaDown", "warning", 12.0)])
    assert missed_goals(still, options) == ["PrefectApiReplicaDown did not resolve once back"]
    done = _result(expected_alert="PrefectApiReplicaDown",
                   alerts=[drill.AlertSeen("PrefectApiReplicaDown", "warning", 12.0, 95.0)])
    assert missed_goals(done, options) == []


@dataclass(frozen=True)
class _Alert:
    name: str
    severity: str


def test_the_alert_watcher_records_when_each_alert_fired_and_resolved_and_survives_an_unreadable_poll() -> None:
    answers: list[object] = [[_Alert("PostgresDown", "page")], ConnectionError("alertmanager frozen"),
                             [_Alert("PostgresDown", "page"), _Alert("RedisDown", "page")], [], [_Alert("RedisDown",
                                                                                                        "page")]]

    def read() -> list[_Alert]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    watcher = AlertWatcher(read, started=0.0)
    for _ in range(5):
        watcher.poll()
    assert watcher.unreadable == 1
    postgres = watcher.seen["PostgresDown"]
    assert postgres.resolved_at_s is not None and postgres.resolved_at_s >= postgres.fired_at_s
    # RedisDown fired, resolved, then fired again: the record is the newest firing, still active.
    assert watcher.active("RedisDown") and not watcher.active("PostgresDown")
    # The first poll is taken before the fault: what it sees was already firing.
    assert postgres.before_fault and not watcher.seen["RedisDown"].before_fault


def test_every_component_kind_that_can_be_down_has_an_alert_that_says_so() -> None:
    assert kind_of("api-2") == "api" and kind_of("worker-default-1") == "worker" and kind_of("postgres") == "postgres"
    for kind in ("api", "postgres", "pgbouncer", "redis", "haproxy", "worker"):
        assert kind in ALERT_FOR_KIND


def test_a_freeze_stops_the_whole_process_tree_found_through_proc(tmp_path: Path) -> None:
    def process(pid: int, parent: int, name: str = "postgres: writer") -> None:
        (tmp_path / str(pid)).mkdir()
        # The command name holds a space and a parenthesis, as PostgreSQL's backends' do.
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) S {parent} {pid} 0 0\n")

    process(10, 1, "postgres")
    process(11, 10)
    process(12, 10, "postgres: prefect (x) idle")
    process(13, 12)
    process(20, 1, "redis-server")
    (tmp_path / "self").mkdir()
    assert descendants(10, proc=tmp_path) == [10, 11, 12, 13]
    assert descendants(20, proc=tmp_path) == [20]


def test_the_report_shows_each_fault_and_what_it_missed() -> None:
    failed = _result(component="postgres", client_errors=4, missed=["4 client errors"],
                     error_samples=["HTTP 500 on POST /flow_runs: Internal Server Error"],
                     alerts=[drill.AlertSeen("PostgresDown", "page", 61.0, None)])
    console = Console(width=250, record=True)
    console.print(results_table([_result(), failed]))
    text = console.export_text()
    assert "api-1" in text and "met" in text and "MISSED" in text
    assert "PostgresDown +61s (still firing)" in text
    assert missed_lines([_result(), failed]) == [
        "crash of postgres: 4 client errors", "    a client saw: HTTP 500 on POST /flow_runs: Internal Server Error"]


def test_the_task_refuses_to_run_until_the_operator_names_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    class Injector:
        stack_name = "/var/lib/prefect-stack"

        def components(self) -> list[str]:
            raise AssertionError("nothing may be planned, let alone hurt, before the confirmation")

    class Target:
        config = StackConfig()

    monkeypatch.setattr(fault_tasks, "_target", lambda *_: Target())
    monkeypatch.setattr(fault_tasks, "drill_stack", lambda *_a, **_k: drill.Stack(
        Injector(), list, None, "http://127.0.0.1:1/api", ("admin", "x"), True))  # type: ignore[arg-type]
    for wrong in ("", "prefect-stack"):
        with pytest.raises(Exit) as refused:
            fault_tasks.fault_drill(Context(), confirm=wrong)
        assert refused.value.code == 1
        assert "invoke fault-drill --confirm /var/lib/prefect-stack" in str(refused.value.message)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_connection_that_cannot_be_opened_is_a_dbapi_error_prefect_answers_503_for() -> None:
    from prefect.server.api.server import is_client_retryable_exception
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def connect() -> BaseException:
        engine = create_async_engine(f"postgresql+asyncpg://prefect:x@127.0.0.1:{_closed_port()}/prefect")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except BaseException as exc:
            return exc
        finally:
            await engine.dispose()
        raise AssertionError("a closed port accepted a connection")

    untranslated = asyncio.run(connect())
    assert isinstance(untranslated, OSError)  # what SQLAlchemy's asyncpg dialect lets through: a 500
    assert not is_client_retryable_exception(untranslated)  # type: ignore[arg-type]
    connect_errors.install()
    connect_errors.install()  # idempotent: one listener
    try:
        translated = asyncio.run(connect())
    finally:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "do_connect", connect_errors._connect)
    assert isinstance(translated, sqlalchemy.exc.OperationalError)
    assert "could not open a connection to the database: ConnectionRefusedError" in str(translated)
    assert is_client_retryable_exception(translated)
