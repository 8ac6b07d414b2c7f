"""bench.faults' parts that need no stack: the two sides' settings and the verdicts."""

from __future__ import annotations

from pathlib import Path

from infra.bench.faults import DEFAULTS, CrashRound, FaultsBenchReport, FaultsBenchSettings, judge, settings_of
from infra.config import load_config
from infra.layout import StateLayout
from infra.render import Addresses
from infra.render.pgbouncer import pgbouncer_ini
from infra.render.prefect import api_environment
from infra.secrets import ensure_secrets


def test_the_defaults_side_is_pgbouncers_and_prefects_own_values_the_stack_side_the_configuration(
        tmp_path: Path) -> None:
    config = load_config(local={"state_dir": str(tmp_path / "state")})
    assert settings_of(config, "stack") is config
    defaults = settings_of(config, "defaults")
    layout = StateLayout(config.state_dir)
    ini = pgbouncer_ini(defaults, layout, Addresses()).content
    assert "server_login_retry = 15\n" in ini and "query_wait_timeout = 120\n" in ini
    env = api_environment(defaults, ensure_secrets(layout.secrets), layout, Addresses())
    assert env["PREFECT_SERVER_DATABASE_TIMEOUT"] == str(DEFAULTS["db_timeout_s"])
    assert "server_login_retry = 1\n" in pgbouncer_ini(config, layout, Addresses()).content


def _report(stack: list[float | None], errors: int = 0) -> FaultsBenchReport:
    report = FaultsBenchReport(FaultsBenchSettings(), {})
    report.rounds = [CrashRound("defaults", [16.0, 15.5], [1, 0], [20, 18], 0),
                     CrashRound("stack", stack, [errors, 0], [19, 19], 0)]
    return report


def test_the_goal_is_every_crash_healthy_within_five_seconds_with_no_client_error() -> None:
    healthy, errors, lost = judge(_report([4.3, 4.6]))
    assert (healthy.status, errors.status, lost.status) == ("pass", "pass", "pass")
    assert healthy.measured == "median 4.45 s, worst 4.6 s (defaults: median 15.75 s)"
    assert judge(_report([4.3, 5.4]))[0].status == "fail"
    assert judge(_report([4.3, None]))[0].status == "fail"
    assert judge(_report([4.3, 4.4], errors=2))[1].status == "fail"
