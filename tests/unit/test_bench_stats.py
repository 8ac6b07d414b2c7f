"""The benchmark's arithmetic: percentiles, what a measured window counts, and the verdicts. No server runs."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from infra.bench.api import (
    LOAD_BALANCER,
    ONE_REPLICA,
    SQLITE,
    BenchSettings,
    LevelResult,
    RequestSample,
    check_loopback,
    judge,
    measure_level,
    parse_concurrency,
    percentile,
    summarise,
)
from infra.errors import UserError


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0], 99, 5.0),
        ([3.0, 1.0, 2.0], 50, 2.0),  # unsorted input
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),  # nearest rank: ceil(0.5 * 4) = 2nd
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([float(i) for i in range(1, 101)], 100, 100.0),
        ([float(i) for i in range(1, 1001)], 99, 990.0),
    ],
)
def test_percentile(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


@pytest.mark.parametrize(("values", "pct"), [([], 50), ([1.0], 0), ([1.0], 101)])
def test_percentile_rejects(values: list[float], pct: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, pct)


def test_summarise_counts_only_the_window() -> None:
    samples = [
        RequestSample(0.5, 0.010),  # warm-up: not counted
        RequestSample(1.9, 0.500, "ReadTimeout"),  # warm-up: not counted
        RequestSample(2.0, 0.010),
        RequestSample(2.5, 0.020),
        RequestSample(3.0, 0.030),
        RequestSample(3.5, 0.040, "HTTP 503"),
        RequestSample(3.9, 0.060, "HTTP 503"),
        RequestSample(4.0, 0.001),  # window ended: not counted
    ]
    result = summarise(LOAD_BALANCER, 20, samples, warmup_s=2.0, duration_s=2.0)
    assert result.requests == 5
    assert result.errors == 2
    assert result.throughput_rps == 1.5  # 3 successful creations in 2 s
    assert result.p50_ms == pytest.approx(20.0)
    assert result.p99_ms == pytest.approx(30.0)
    assert result.error_kinds == {"HTTP 503": 2}


def test_summarise_without_success_has_no_latency() -> None:
    result = summarise(SQLITE, 50, [RequestSample(2.5, 0.1, "ConnectError")], warmup_s=2.0, duration_s=1.0)
    assert (result.requests, result.errors, result.throughput_rps) == (1, 1, 0.0)
    assert result.p50_ms is None and result.p99_ms is None


def _result(target: str, clients: int, rps: float = 50.0, p50: float | None = 10.0, errors: int = 0) -> LevelResult:
    return LevelResult(target, clients, 15.0, 1000, errors, rps, p50, p50, {"HTTP 502": errors} if errors else {})


def test_judge_all_goals_met() -> None:
    results = [
        _result(LOAD_BALANCER, 1, p50=12.0), _result(SQLITE, 1, p50=10.0),
        _result(LOAD_BALANCER, 20, rps=60.0), _result(ONE_REPLICA, 20, rps=40.0),
        _result(LOAD_BALANCER, 50),
    ]
    verdicts = judge(results)
    assert [v.status for v in verdicts] == ["pass", "pass", "pass"]
    assert verdicts[1].ratio == pytest.approx(1.5)
    assert verdicts[2].ratio == pytest.approx(1.2)


def test_judge_reports_misses() -> None:
    results = [
        _result(LOAD_BALANCER, 1, p50=16.0), _result(SQLITE, 1, p50=10.0),
        _result(LOAD_BALANCER, 20, rps=39.0), _result(ONE_REPLICA, 20, rps=40.0),
        _result(LOAD_BALANCER, 50, errors=1),
    ]
    assert [v.status for v in judge(results)] == ["fail", "fail", "fail"]


def test_judge_marks_unmeasured_levels() -> None:
    results = [_result(LOAD_BALANCER, 1), _result(SQLITE, 1)]
    assert [v.status for v in judge(results)] == ["not measured", "not measured", "pass"]


def test_judge_fails_latency_without_success() -> None:
    results = [_result(LOAD_BALANCER, 1, p50=None, errors=5), _result(SQLITE, 1)]
    assert judge(results)[2].status == "fail"


@pytest.mark.parametrize(("text", "levels"), [("1,20,50", (1, 20, 50)), (" 5 , 5,1 ", (5, 1)), ("7", (7,))])
def test_parse_concurrency(text: str, levels: tuple[int, ...]) -> None:
    assert parse_concurrency(text) == levels


@pytest.mark.parametrize("text", ["", ",", "1,x", "2.5"])
def test_parse_concurrency_rejects(text: str) -> None:
    with pytest.raises(UserError):
        parse_concurrency(text)


@pytest.mark.parametrize("kwargs", [{"concurrency": (0,)}, {"concurrency": ()}, {"duration_s": 0}, {"replicas": 0}])
def test_settings_reject_out_of_range(kwargs: dict[str, object]) -> None:
    with pytest.raises(UserError):
        BenchSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["http://10.0.0.1:4200/api", "http://example.com/api"])
def test_only_loopback_targets(url: str) -> None:
    with pytest.raises(UserError):
        check_loopback(url)


def test_load_generator_records_errors_and_keys() -> None:
    """Against an in-memory transport: every 3rd creation fails; every request carries its own idempotency key."""
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/flows/":
            return httpx.Response(201, json={"id": "f-1"})
        body = httpx.Response(200, content=request.content).json()
        assert body["flow_id"] == "f-1"
        keys.append(body["idempotency_key"])
        return httpx.Response(503 if len(keys) % 3 == 0 else 201, json={})

    transport = httpx.MockTransport(handler)
    run = measure_level("http://127.0.0.1:1/api", 3, duration_s=0.2, warmup_s=0.05, transport=transport)
    samples = asyncio.run(run)
    assert len(samples) == len(keys) > 0
    assert len(set(keys)) == len(keys)
    assert sum(not s.ok for s in samples) == len(keys) // 3
    assert {s.error for s in samples if not s.ok} <= {"HTTP 503"}
