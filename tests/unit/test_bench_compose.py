"""`invoke bench.api --target compose`: the order of the rounds, the medians, the verdict and the report. No stack
runs."""

from __future__ import annotations

import json

import pytest
from invoke import MockContext
from invoke.exceptions import Exit

from infra.bench.api import LevelResult, Target
from infra.bench.compose import (
    COMPOSE,
    LOCAL,
    CompareSettings,
    ComposeBenchReport,
    RoundCpu,
    TargetSummary,
    abba_order,
    describe_image,
    judge_compose,
    summarise_target,
)
from infra.bench.harness import Verdict
from infra.containers.images import ImageResult
from infra.errors import UserError
from infra.tasks import bench as bench_tasks
from infra.tasks.bench import api


def _round(target: str, rps: float, p50: float | None = 300.0, errors: int = 0) -> LevelResult:
    return LevelResult(target, 20, 15.0, 1000, errors, rps, p50, p50, {"HTTP 502": errors} if errors else {})


def _summary(target: str, median: float | None) -> TargetSummary:
    return TargetSummary(target, () if median is None else (median,), median, None, 0, 0)


@pytest.mark.parametrize(("rounds", "order"), [
    (1, [LOCAL, COMPOSE]),
    (2, [LOCAL, COMPOSE, COMPOSE, LOCAL]),
    (3, [LOCAL, COMPOSE, COMPOSE, LOCAL, LOCAL, COMPOSE]),
])
def test_abba_order(rounds: int, order: list[str]) -> None:
    assert abba_order(rounds) == order


def test_summary_takes_medians_of_its_own_rounds() -> None:
    results = [_round(LOCAL, 50.0, 300.0), _round(COMPOSE, 10.0), _round(LOCAL, 40.0, 340.0, errors=2),
               _round(LOCAL, 70.0, 200.0)]
    local = summarise_target(LOCAL, results)
    assert local.throughputs == (50.0, 40.0, 70.0)
    assert local.median_rps == 50.0
    assert local.median_p50_ms == 300.0
    assert (local.requests, local.errors) == (3000, 2)


def test_summary_of_an_unmeasured_target() -> None:
    summary = summarise_target(COMPOSE, [_round(LOCAL, 50.0)])
    assert (summary.throughputs, summary.median_rps, summary.median_p50_ms) == ((), None, None)


@pytest.mark.parametrize(("local", "compose", "status", "ratio"), [
    (50.0, 50.0, "pass", 1.0),
    (50.0, 45.0, "pass", 0.9),  # the goal's edge is met
    (50.0, 44.9, "fail", 0.898),
    (40.0, 60.0, "pass", 1.5),
])
def test_judge_compose(local: float, compose: float, status: str, ratio: float) -> None:
    verdict = judge_compose(_summary(LOCAL, local), _summary(COMPOSE, compose))
    assert verdict.status == status
    assert verdict.ratio == pytest.approx(ratio)
    assert "0.9x" in verdict.goal


def test_judge_compose_when_local_created_nothing() -> None:
    verdict = judge_compose(_summary(LOCAL, 0.0), _summary(COMPOSE, 30.0))
    assert (verdict.status, verdict.ratio) == ("fail", None)


@pytest.mark.parametrize("missing", [LOCAL, COMPOSE])
def test_judge_compose_not_measured(missing: str) -> None:
    local = _summary(LOCAL, None if missing == LOCAL else 50.0)
    compose = _summary(COMPOSE, None if missing == COMPOSE else 50.0)
    assert judge_compose(local, compose).status == "not measured"


@pytest.mark.parametrize(("result", "text"), [
    (ImageResult("prefect", "prefect-stack/prefect:ab12", "built", 74.94, 10**9),
     "prefect prefect-stack/prefect:ab12: built in 74.9 s"),
    (ImageResult("system", "prefect-stack/system:cd34", "up to date", 0.01, 10**9),
     "system prefect-stack/system:cd34: up to date"),
])
def test_describe_image(result: ImageResult, text: str) -> None:
    assert describe_image(result) == text


def _report() -> ComposeBenchReport:
    targets = {LOCAL: Target(LOCAL, "https://127.0.0.1:1/api", "local"),
               COMPOSE: Target(COMPOSE, "https://127.0.0.1:2/api", "compose")}
    results = [_round(LOCAL, 50.0), _round(COMPOSE, 46.0), _round(COMPOSE, 48.0), _round(LOCAL, 54.0)]
    images = [ImageResult("base", "b:1", "up to date", 0.0, 1), ImageResult("system", "s:1", "up to date", 0.0, 1),
              ImageResult("prefect", "p:1", "built", 75.04, 1)]
    cpu = [RoundCpu(30.0, 17.0, 850), RoundCpu(15.0, 17.0, 780), None, RoundCpu(34.0, 17.0, 900)]
    return ComposeBenchReport(targets, results, images, {"local": 41.23, "compose": 63.31}, cpu=cpu)


def test_report_ratio_and_verdict() -> None:
    report = _report()
    assert report.ratio == pytest.approx(47.0 / 52.0)
    assert [v.status for v in report.verdicts] == ["pass"]


def test_report_json_has_every_figure() -> None:
    document = json.loads(json.dumps(_report().as_dict()))
    assert document["clients"] == 20
    assert [r["round"] for r in document["results"]] == [1, 2, 3, 4]
    assert [r["target"] for r in document["results"]] == [LOCAL, COMPOSE, COMPOSE, LOCAL]
    assert document["summaries"][LOCAL]["median_rps"] == 52.0
    assert document["summaries"][COMPOSE]["throughputs_rps"] == [46.0, 48.0]
    assert document["ratio"] == 0.904
    assert document["deploy_s"] == {"local": 41.2, "compose": 63.3}
    assert document["images"][2] == {"role": "prefect", "ref": "p:1", "action": "built", "seconds": 75.0,
                                     "size_bytes": 1}
    assert document["verdicts"][0]["status"] == "pass"
    assert set(document["targets"]) == {LOCAL, COMPOSE}
    assert document["results"][0]["cpu_s"] == 30.0
    assert document["results"][2]["cores"] is None  # that round's CPU time could not be read
    assert document["summaries"][COMPOSE]["median_cpu_ms_per_flow_run"] == pytest.approx(19.231, abs=1e-3)


def test_side_by_side_rows() -> None:
    rows = {what: (local, compose) for what, local, compose in _report().side_by_side()}
    assert rows["median flow runs/s"] == ("52.0", "47.0")
    assert rows["flow runs/s, each round"] == ("50.0, 54.0", "46.0, 48.0")
    assert rows["deploy (compose: cold)"] == ("41.2 s", "63.3 s")


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"rounds": 11}, {"duration_s": 0}, {"replicas": 0}])
def test_settings_reject_out_of_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(UserError):
        CompareSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target": "compose", "concurrency": "1,20"}, "--concurrency applies to --target local"),
    ({"target": "kubernetes"}, "--target kubernetes is not benchmarked"),
])
def test_task_refuses_before_deploying(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(Exit) as raised:
        api(MockContext(), **kwargs)
    assert message in str(raised.value.message)


def test_round_cpu() -> None:
    cpu = RoundCpu(cpu_s=8.5, wall_s=17.0, created=500)
    assert cpu.cores == 0.5
    assert cpu.cpu_ms_per_flow_run == 17.0
    assert RoundCpu(1.0, 17.0, 0).cpu_ms_per_flow_run is None


def test_summary_takes_medians_of_cpu_and_skips_unread_rounds() -> None:
    results = [_round(LOCAL, 50.0), _round(COMPOSE, 10.0), _round(LOCAL, 40.0), _round(LOCAL, 70.0)]
    cpu = [RoundCpu(34.0, 17.0, 1000), RoundCpu(5.0, 17.0, 200), None, RoundCpu(17.0, 17.0, 1000)]
    local = summarise_target(LOCAL, results, cpu)
    assert local.median_cores == 1.5  # of 2.0 and 1.0; the unread round does not count
    assert local.median_cpu_ms_per_flow_run == 25.5  # of 34 and 17
    assert summarise_target(COMPOSE, results, cpu).median_cpu_ms_per_flow_run == 25.0
    assert summarise_target(LOCAL, results).median_cores is None  # no CPU time given


def test_unknown_target_lists_the_choices() -> None:
    with pytest.raises(Exit) as raised:
        api(MockContext(), target="kubernetes")
    assert "use --target local or --target compose" in str(raised.value.message)


@pytest.mark.parametrize("target", sorted(bench_tasks.API_BENCHMARKS))
def test_task_runs_the_chosen_target(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    chosen: list[bench_tasks.ApiOptions] = []

    def run(options: bench_tasks.ApiOptions) -> list[Verdict]:
        chosen.append(options)
        return []

    monkeypatch.setitem(bench_tasks.API_BENCHMARKS, target, run)
    api(MockContext(), target=target, duration=3, replicas=4, rounds=5)
    assert chosen == [bench_tasks.ApiOptions(json=False, duration_s=3.0, replicas=4, concurrency="", rounds=5)]
