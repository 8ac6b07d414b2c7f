"""``invoke bench.logs`` on a few MiB: generated files laid out like a state directory, the planted id found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.bench import logs as bench_logs
from infra.bench.logs import LogsBenchSettings, generate, run_logs_benchmark
from infra.logs.read import LogQuery, read_local

RUN_ID = "5d0c9a57-6f7b-4a2e-8a41-2f4e1c0b9e11"


@pytest.fixture
def generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Path], int, Path]:
    monkeypatch.setattr(bench_logs, "ROTATE_BYTES", 256 << 10)
    files, planted = generate(tmp_path, 2 << 20, RUN_ID)
    return files, planted, tmp_path


def test_big_components_are_rotated(generated: tuple[dict[str, Path], int, Path]) -> None:
    assert (generated[2] / "api-1.log.1").exists()


def test_every_planted_record_is_found_once(generated: tuple[dict[str, Path], int, Path]) -> None:
    files, planted, _ = generated
    out: list[str] = []
    read_local(files, LogQuery(grep=RUN_ID, json=True), out.append)
    assert len(out) == planted


def test_the_found_records_are_in_time_order(generated: tuple[dict[str, Path], int, Path]) -> None:
    out: list[str] = []
    read_local(generated[0], LogQuery(grep=RUN_ID, json=True), out.append)
    times = [json.loads(line)["time"] for line in out]
    assert times == sorted(times)


def test_the_benchmark_judges_a_small_run() -> None:
    report = run_logs_benchmark(LogsBenchSettings(size_mib=2, runs=1), progress=lambda _: None)
    assert [v.status for v in report.verdicts] == ["pass", "pass"]
