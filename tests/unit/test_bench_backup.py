"""The backup benchmark's pure parts: verdicts, settings, the temporary stack's configuration and the data
generator's checks (pgBackRest's file is the renderer's: tests/unit/test_render.py). No server runs."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from infra.bench import backup as bench
from infra.bench.backup import (
    LOGICAL_BACKUP,
    NAIVE_TOTAL,
    PGBACKREST_BACKUP,
    PGBACKREST_RESTORE,
    PHYSICAL_RESTORE,
    BackupBenchSettings,
    judge,
)
from infra.bench.data import LOG_TEMPLATES, RUN_WINDOW, WRITTEN, iso_duration, missing_required_columns
from infra.bench.harness import StackPorts
from infra.config import load_config
from infra.errors import UserError

# Ratios: logical/naive 0.4, logical/pgBackRest 1.0, physical/bare 1.2.
MET = {LOGICAL_BACKUP: 10.0, NAIVE_TOTAL: 25.0, PGBACKREST_BACKUP: 10.0, PHYSICAL_RESTORE: 12.0,
       PGBACKREST_RESTORE: 10.0}


def test_judge_all_targets_met() -> None:
    verdicts = judge(MET, physical_method=True)
    assert [v.status for v in verdicts] == ["pass", "pass", "pass"]
    assert [v.ratio for v in verdicts] == pytest.approx([0.4, 1.0, 1.2])


@pytest.mark.parametrize(
    ("key", "seconds", "missed"),
    [
        (NAIVE_TOTAL, 19.0, 0),  # 10 / 19 > 0.5
        (PGBACKREST_BACKUP, 9.0, 1),  # 10 / 9 > 1.1
        (PHYSICAL_RESTORE, 13.5, 2),  # 13.5 / 10 > 1.3
    ],
)
def test_judge_reports_a_miss(key: str, seconds: float, missed: int) -> None:
    verdicts = judge({**MET, key: seconds}, physical_method=True)
    assert [i for i, v in enumerate(verdicts) if v.status == "fail"] == [missed]


def test_judge_limits_are_inclusive() -> None:
    verdicts = judge({**MET, NAIVE_TOTAL: 20.0, PGBACKREST_BACKUP: 10.0 / 1.1, PHYSICAL_RESTORE: 13.0},
                     physical_method=True)
    assert [v.status for v in verdicts] == ["pass", "pass", "pass"]


@pytest.mark.parametrize(("physical", "would"), [(12.0, "would meet"), (20.0, "would miss")])
def test_physical_target_not_applicable_without_the_method(physical: float, would: str) -> None:
    verdict = judge({**MET, PHYSICAL_RESTORE: physical})[2]
    assert verdict.status == "not applicable"
    assert would in verdict.measured
    assert "--method physical" in verdict.measured
    assert verdict.ratio == pytest.approx(physical / 10.0)


@pytest.mark.parametrize("absent", [LOGICAL_BACKUP, NAIVE_TOTAL, PGBACKREST_BACKUP, PHYSICAL_RESTORE])
def test_judge_marks_what_was_not_measured(absent: str) -> None:
    seconds = {k: v for k, v in MET.items() if k != absent}
    statuses = [v.status for v in judge(seconds)]
    assert "not measured" in statuses
    assert "fail" not in statuses


def test_judge_zero_baseline_is_not_a_ratio() -> None:
    assert judge({**MET, NAIVE_TOTAL: 0.0})[0].status == "not measured"


@pytest.mark.parametrize("kwargs", [{"size_gb": 0.0}, {"size_gb": 1000.0}, {"jobs": 0}, {"jobs": 64}])
def test_settings_reject_out_of_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(UserError):
        BackupBenchSettings(**kwargs)  # type: ignore[arg-type]


def test_disk_needed_grows_with_size() -> None:
    assert BackupBenchSettings(size_gb=2.0).disk_needed() > BackupBenchSettings(size_gb=1.0).disk_needed()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("P7D", timedelta(days=7)), ("PT12H", timedelta(hours=12)), ("P1DT2H", timedelta(days=1, hours=2))],
)
def test_iso_duration(text: str, expected: timedelta) -> None:
    assert iso_duration(text) == expected


@pytest.mark.parametrize("text", ["P", "7D", "P1W", "PT30M", ""])
def test_iso_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        iso_duration(text)


PORTS = StackPorts(load_balancer=21001, stats=21002, postgres=21003, pgbouncer=21004, redis=21005, s3=21006,
                   api_base=21010, monitoring=(21020, 21021, 21022, 21023, 21024, 21025, 21026))


@pytest.fixture
def fixed_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "allocate_stack_ports", lambda replicas, taken: PORTS)


@pytest.mark.usefixtures("fixed_ports")
def test_bench_config_keeps_the_generated_month_of_events(tmp_path: Path) -> None:
    config = bench.bench_config(tmp_path / "stack", BackupBenchSettings(), set())
    assert iso_duration(config.services.events_retention) > RUN_WINDOW
    assert config.postgres.port == PORTS.postgres
    assert config.state_dir == (tmp_path / "stack").resolve()


@pytest.mark.usefixtures("fixed_ports")
def test_bench_config_has_no_scheduled_backup(tmp_path: Path) -> None:
    assert not bench.bench_config(tmp_path / "stack", BackupBenchSettings(), set()).backups.schedule_enabled


@pytest.mark.usefixtures("fixed_ports")
def test_bench_config_keeps_a_longer_retention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_STACK_SERVICES__EVENTS_RETENTION", "P90D")
    config = bench.bench_config(tmp_path / "stack", BackupBenchSettings(), set())
    assert config.services.events_retention == "P90D"


@pytest.mark.usefixtures("fixed_ports")
@pytest.mark.parametrize(("jobs", "expected"), [(None, load_config().backups.jobs), (3, 3)])
def test_bench_config_jobs(tmp_path: Path, jobs: int | None, expected: int) -> None:
    config = bench.bench_config(tmp_path / "stack", BackupBenchSettings(jobs=jobs), set())
    assert config.backups.jobs == expected


def test_missing_required_columns() -> None:
    required = {"log": {"name", "message", "level"}, "events": {"occurred"}}
    assert missing_required_columns(required, {"log": {"name": "x", "level": "y"}, "events": ("occurred",)}) == {
        "log": ["message"]
    }


def test_generator_writes_the_required_columns_it_knows() -> None:
    # NOT NULL without a server default in Prefect 3's schema (the live schema is checked again at run time).
    required = {"log": {"name", "level", "message", "timestamp"}, "events": {"occurred", "event", "resource_id",
                "resource", "payload", "received", "recorded"}, "flow_run": {"flow_id", "name"},
                "task_run": {"task_key", "dynamic_key", "name"}, "event_resources": {"occurred", "resource_id",
                "resource_role", "resource", "event_id"}, "flow_run_state": {"flow_run_id", "type", "name"},
                "task_run_state": {"task_run_id", "type", "name"}}
    assert missing_required_columns(required, WRITTEN) == {}


def _render(template: str) -> str:
    """PostgreSQL's format('%2$s', ...) with arguments of typical length."""
    sample = ["refresh-ml-features", "transform_orders-0b9e6bb4", "48213", "217", "2025-01-31",
              "9e107d9d372bb6826bd81d3542a419d6", "12.43", "eu-west-1"]
    return re.sub(r"%(\d)\$s", lambda m: sample[int(m.group(1)) - 1], template)


def test_log_lines_average_about_200_bytes() -> None:
    lengths = [len(_render(template).encode()) for template, _ in LOG_TEMPLATES]
    assert 150 <= sum(lengths) / len(lengths) <= 260


@pytest.mark.parametrize("template", sorted({t for t, _ in LOG_TEMPLATES}))
def test_log_templates_use_only_positional_arguments(template: str) -> None:
    assert "%" not in re.sub(r"%[1-8]\$s", "", template)
