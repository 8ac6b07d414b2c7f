"""bench.observability's verdicts and settings (the measurement itself runs against a real stack: invoke it)."""

from __future__ import annotations

import pytest

from infra.bench.api import LevelResult
from infra.bench.observability import ObservabilityReport, ObservabilitySettings, judge, layer_config
from infra.bench.otlp_sink import OtlpSink
from infra.config import StackConfig
from infra.errors import UserError


def _level(rps: float) -> LevelResult:
    return LevelResult(target="t", concurrency=20, duration_s=20, requests=int(rps * 20), errors=0,
                       throughput_rps=rps, p50_ms=10.0, p99_ms=50.0)


def _report(off: list[float], on: list[float], scrapes: list[float]) -> ObservabilityReport:
    report = ObservabilityReport(ObservabilitySettings())
    report.off, report.on, report.scrape_s = [_level(x) for x in off], [_level(x) for x in on], scrapes
    return report


def test_both_goals_met() -> None:
    verdicts = judge(_report([50, 52], [49, 50], [0.2, 0.4]))
    assert [v.status for v in verdicts] == ["pass", "pass"]


def test_throughput_below_the_goal_is_a_miss() -> None:
    verdict = judge(_report([50, 50], [40, 40], [0.2]))[0]
    assert verdict.status == "fail" and verdict.ratio == pytest.approx(0.8)


def test_the_slowest_scrape_decides() -> None:
    verdict = judge(_report([50], [50], [0.1, 1.5, 0.2]))[1]
    assert verdict.status == "fail" and "1.500" in verdict.measured


def test_report_is_json_ready() -> None:
    document = _report([50], [49], [0.3, 0.5]).as_dict()
    assert document["throughput_ratio"] == 0.98 and document["scrape_max_s"] == 0.5


@pytest.mark.parametrize("kwargs", [{"flow_runs": 0}, {"deployments": 10, "work_pools": 20}, {"rounds": 0}])
def test_nonsense_settings_are_refused_with_the_fix(kwargs: dict[str, int]) -> None:
    with pytest.raises(UserError) as caught:
        ObservabilitySettings(**kwargs)
    assert caught.value.fix


def test_the_layer_on_traces_every_request_whatever_the_production_sampling() -> None:
    with OtlpSink() as sink:
        on = layer_config(StackConfig(), True, sink)
    assert (on.tracing.enabled, on.tracing.sample_ratio) == (True, 1.0)
