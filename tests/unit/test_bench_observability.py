"""bench.observability's layers, round order, verdicts and report, and its sequence of deploys and scrapes with the
stack mocked (the measurement itself runs against a real stack: invoke it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.bench import observability
from infra.bench.api import LevelResult
from infra.bench.observability import (
    CHOICES,
    LAYERS,
    OFF,
    LayerCost,
    ObservabilityReport,
    ObservabilitySettings,
    judge,
    layer_config,
    parse_layers,
    renders_alike,
    round_order,
)
from infra.config import StackConfig
from infra.errors import UserError

SINK = "http://127.0.0.1:4318"


def _level(rps: float, target: str = "t") -> LevelResult:
    return LevelResult(target=target, concurrency=20, duration_s=20, requests=int(rps * 20), errors=0,
                       throughput_rps=rps, p50_ms=10.0, p99_ms=50.0)


def _report(rounds: dict[str, list[float]], scrapes: list[float] | None = None) -> ObservabilityReport:
    report = ObservabilityReport(ObservabilitySettings())
    report.rounds = {name: [_level(x) for x in values] for name, values in rounds.items()}
    report.scrape_s = [0.2] if scrapes is None else scrapes
    return report


def _verdict(report: ObservabilityReport, goal_starts: str) -> Any:
    return next(v for v in judge(report) if v.goal.startswith(goal_starts))


# ---------------------------------------------------------------- layers


def _differences(a: StackConfig, b: StackConfig) -> dict[str, tuple[Any, Any]]:
    """Every field (dotted path) whose value differs between two configurations."""
    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            return {k: v for key, value in data.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): data}

    left, right = flat(a.model_dump()), flat(b.model_dump())
    return {key: (left.get(key), right.get(key)) for key in left.keys() | right.keys()
            if left.get(key) != right.get(key)}


def test_off_is_the_bare_stack_with_plain_text_logs() -> None:
    base = StackConfig()
    off = layer_config(base, OFF, SINK)
    assert (off.monitoring.enabled, off.tracing.enabled, off.tracing.otlp_endpoint) == (False, False, None)
    assert (off.logs.format, off.logs.export_otlp) == ("text", False)


@pytest.mark.parametrize(("layer", "expected"), [
    ("monitoring", {"monitoring.enabled": (False, True)}),
    ("monitoring-5s", {"monitoring.enabled": (False, True), "monitoring.scrape_interval_s": (15, 5)}),
    ("tracing-sampled", {"monitoring.enabled": (False, True), "tracing.enabled": (False, True),
                         "tracing.otlp_endpoint": (None, SINK)}),
    ("tracing-all", {"monitoring.enabled": (False, True), "tracing.enabled": (False, True),
                     "tracing.otlp_endpoint": (None, SINK), "tracing.sample_ratio": (0.1, 1.0)}),
    ("json-logs", {"logs.format": ("text", "json")}),
])
def test_each_layer_differs_from_off_exactly_by_what_it_measures(layer: str, expected: dict[str, Any]) -> None:
    base = StackConfig()
    config = layer_config(base, layer, SINK)
    assert _differences(layer_config(base, OFF, SINK), config) == expected
    StackConfig.model_validate(config.model_dump(mode="json"))  # model_copy skips validation: the layer is valid


def test_tracing_sampled_keeps_the_configurations_ratio_and_off_turns_the_operators_tracing_off() -> None:
    base = StackConfig(tracing={"enabled": True, "otlp_endpoint": "http://collector:4318", "sample_ratio": 0.25})
    assert layer_config(base, "tracing-sampled", SINK).tracing.sample_ratio == 0.25
    assert layer_config(base, "tracing-all", SINK).tracing.sample_ratio == 1.0
    assert layer_config(base, OFF, SINK).tracing.enabled is False


def test_only_the_goal_layers_have_a_goal() -> None:
    assert set(CHOICES) == set(LAYERS) - {OFF}
    assert {name for name, layer in LAYERS.items() if layer.goal} == {"tracing-sampled", "json-logs"}


def test_a_layer_that_renders_differently_from_off_is_told_apart(tmp_path: Path) -> None:
    base = StackConfig(local={"state_dir": str(tmp_path / "stack")})
    off = layer_config(base, OFF, SINK)
    assert renders_alike(off, off, tmp_path / "secrets")
    # Only the effective configuration's copy differs (tracing is off, so its ratio reaches no process): alike.
    unused = off.model_copy(update={"tracing": off.tracing.model_copy(update={"sample_ratio": 0.5})})
    assert renders_alike(off, unused, tmp_path / "secrets")
    assert not renders_alike(off, layer_config(base, "monitoring", SINK), tmp_path / "secrets")


# ---------------------------------------------------------------- options and order


def test_layers_option() -> None:
    assert parse_layers("monitoring, tracing-sampled") == ("monitoring", "tracing-sampled")
    assert parse_layers("all") == CHOICES and OFF not in CHOICES
    with pytest.raises(UserError) as caught:
        parse_layers("monitoring,tracing")
    assert "tracing" in caught.value.problem and caught.value.fix and "tracing-all" in caught.value.fix


@pytest.mark.parametrize("kwargs", [{"flow_runs": 0}, {"deployments": 10, "work_pools": 20}, {"rounds": 0},
                                    {"layers": ()}, {"layers": ("off",)}, {"duration_s": 0.0}])
def test_nonsense_settings_are_refused_with_the_fix(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UserError) as caught:
        ObservabilitySettings(**kwargs)
    assert caught.value.fix


@pytest.mark.parametrize("rounds", [1, 2, 3, 4])
@pytest.mark.parametrize("layers", [("monitoring",), ("json-logs", "tracing-all"), CHOICES])
def test_rounds_alternate_in_abba_order(rounds: int, layers: tuple[str, ...]) -> None:
    order = round_order(layers, rounds)
    one = [name for name in LAYERS if name == OFF or name in layers]
    assert len(order) == rounds and set(one) == {OFF, *layers}
    for index, names in enumerate(order):
        assert names == (one if index % 2 == 0 else one[::-1])
    if rounds % 2 == 0:  # every configuration's mean position is the same: a linear drift cancels out
        flat = [name for names in order for name in names]
        means = {name: sum(i for i, n in enumerate(flat) if n == name) / rounds for name in one}
        assert len(set(means.values())) == 1


def test_two_layers_over_two_rounds() -> None:
    assert round_order(("monitoring", "json-logs"), 2) == [["monitoring", OFF, "json-logs"],
                                                           ["json-logs", OFF, "monitoring"]]


# ---------------------------------------------------------------- verdicts and report


def test_goals_met_when_the_rounds_agree() -> None:
    report = _report({OFF: [50, 51], "tracing-sampled": [49, 50], "json-logs": [50, 50.5]}, [0.2, 0.4])
    assert [v.status for v in judge(report)] == ["pass", "pass", "pass"]


def test_a_clear_miss() -> None:
    verdict = _verdict(_report({OFF: [50, 50.5], "tracing-sampled": [40, 40.5]}), "the production default")
    assert verdict.status == "fail" and verdict.ratio == pytest.approx(40.25 / 50.25)


def test_a_spread_larger_than_the_margin_to_the_goal_is_inconclusive() -> None:
    # 0.96x, but the off rounds differ by 20%: the rounds cannot say on which side of 0.95x the layer is.
    verdict = _verdict(_report({OFF: [45, 55], "json-logs": [47, 49]}), "JSON logs")
    assert verdict.status == "inconclusive" and "20.0%" in verdict.measured


def test_one_round_is_inconclusive() -> None:
    verdict = _verdict(_report({OFF: [50], "json-logs": [50]}), "JSON logs")
    assert verdict.status == "inconclusive" and "--rounds" in verdict.measured


def test_a_layer_not_chosen_or_skipped_is_not_measured() -> None:
    report = _report({OFF: [50, 50], "monitoring": [49, 49]})
    report.skipped["json-logs"] = "deploys nothing different from off"
    assert _verdict(report, "JSON logs").status == "not measured"
    assert "--layers" in _verdict(report, "the production default").measured


def test_the_slowest_scrape_decides_and_no_scrape_is_not_measured() -> None:
    verdict = _verdict(_report({OFF: [50]}, [0.1, 1.5, 0.2]), "exporter scrape")
    assert verdict.status == "fail" and "1.500" in verdict.measured
    assert _verdict(_report({OFF: [50]}, []), "exporter scrape").status == "not measured"


def test_a_cost_within_the_spread_is_flagged() -> None:
    assert LayerCost("monitoring", [50, 54], [51, 52]).within_spread
    assert not LayerCost("monitoring", [50, 50.5], [40, 40.5]).within_spread


def test_report_is_json_ready() -> None:
    report = _report({OFF: [50, 52], "monitoring": [49, 50], "tracing-all": [40, 41]}, [0.3, 0.5])
    report.order = [OFF, "monitoring", "tracing-all", "tracing-all", "monitoring", OFF]
    report.verdicts = judge(report)
    document = report.as_dict()
    assert set(document) == {"settings", "sample_ratio", "order", "throughput", "costs", "skipped_layers",
                             "scrape_seconds", "scrape_median_s", "scrape_max_s", "generated_s", "verdicts"}
    assert list(document["settings"]["layers"]) == ["monitoring", "tracing-sampled", "json-logs"]
    assert set(document["throughput"]) == {OFF, "monitoring", "tracing-all"}
    costs = {c["layer"]: c for c in document["costs"]}
    assert list(costs) == ["monitoring", "tracing-all"]
    assert costs["monitoring"]["ratio"] == pytest.approx(49.5 / 51, abs=1e-3)
    assert costs["monitoring"]["off_range_rps"] == [50, 52] and costs["monitoring"]["on_range_rps"] == [49, 50]
    assert costs["tracing-all"]["goal"] is None and costs["tracing-all"]["spread"] == pytest.approx(2 / 51, abs=1e-3)
    assert document["scrape_max_s"] == 0.5


# ---------------------------------------------------------------- the run's sequence, with the stack mocked


@pytest.fixture
def mocked_stack(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Records deploys (with monitoring on or off), measurements, history and scrapes, in order."""
    events: list[tuple[str, Any]] = []
    state = {"monitoring": False}

    def deploy(config: StackConfig) -> None:
        state["monitoring"] = config.monitoring.enabled
        events.append(("deploy", (config.monitoring.enabled, config.tracing.enabled, config.logs.format)))

    def run_level(target: Any, clients: int, level: Any, auth: Any) -> LevelResult:
        events.append(("measure", target.key.removeprefix("observability-")))
        return _level(50.0, target.key)

    def scrape(config: StackConfig) -> float:
        if not state["monitoring"]:  # what the real exporter does when it is not deployed
            raise AssertionError("scraped with monitoring off")
        events.append(("scrape", config.monitoring.enabled))
        return 0.1

    monkeypatch.setattr(observability, "_deploy_settled", deploy)
    monkeypatch.setattr(observability, "run_level", run_level)
    monkeypatch.setattr(observability, "_scrape", scrape)
    monkeypatch.setattr(observability, "_generate_history",
                        lambda config, settings: events.append(("history", state["monitoring"])) or 1.0)
    monkeypatch.setattr(observability, "destroy", lambda config: events.append(("destroy", None)))
    monkeypatch.setattr(observability, "api_auth", lambda config: ("admin", "x"))
    monkeypatch.setattr(observability, "load_balancer_verify", lambda config: True)
    monkeypatch.setattr(observability, "renders_alike", lambda a, b, secrets_dir: False)
    return events


def test_when_the_last_round_ends_with_monitoring_off_it_is_deployed_before_the_history_and_scrape(
    mocked_stack: list[tuple[str, Any]],
) -> None:
    settings = ObservabilitySettings(rounds=2, layers=("monitoring",), scrapes=2)
    report = observability.run_observability_benchmark(settings)
    # monitoring, off | off, monitoring ... with "monitoring" first in LAYERS' order: make the last round end off.
    assert report.order == ["monitoring", OFF, OFF, "monitoring"]
    report_off_last = observability.run_observability_benchmark(
        ObservabilitySettings(rounds=1, layers=("monitoring",), scrapes=2))
    assert report_off_last.order == ["monitoring", OFF]
    events = mocked_stack[mocked_stack.index(("destroy", None)) + 1:]  # the second run
    assert events == [
        ("deploy", (True, False, "text")), ("measure", "monitoring"),
        ("deploy", (False, False, "text")), ("measure", OFF),
        ("deploy", (True, False, "text")), ("history", True), ("scrape", True), ("scrape", True),
        ("destroy", None),
    ]
    assert [v.status for v in report_off_last.verdicts][-1] == "pass"


def test_each_round_redeploys_only_when_the_configuration_changes(mocked_stack: list[tuple[str, Any]]) -> None:
    report = observability.run_observability_benchmark(
        ObservabilitySettings(rounds=2, layers=("json-logs", "tracing-sampled"), scrape=False))
    assert report.order == ["tracing-sampled", OFF, "json-logs", "json-logs", OFF, "tracing-sampled"]
    assert [e for e, _ in mocked_stack].count("deploy") == 5  # the round boundary keeps json-logs deployed
    assert not [e for e, _ in mocked_stack if e in ("history", "scrape")]
    assert report.scrape_s == [] and report.verdicts[-1].status == "not measured"


def test_a_layer_that_deploys_nothing_new_is_skipped(mocked_stack: list[tuple[str, Any]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "renders_alike", lambda a, b, secrets_dir: b.logs.format == "json")
    report = observability.run_observability_benchmark(
        ObservabilitySettings(rounds=2, layers=("monitoring", "json-logs"), scrape=False))
    assert "json-logs" not in report.order and "json-logs" in report.skipped
    assert next(v for v in report.verdicts if v.goal.startswith("JSON logs")).status == "not measured"


def test_a_refused_scrape_names_the_port_and_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = StackConfig(local={"state_dir": str(tmp_path)}, monitoring={"prefect_exporter_port": 1})
    log = tmp_path / "log" / "prefect-exporter.log"
    log.parent.mkdir()
    log.write_text("starting\nTraceback: the database refused the connection\n")

    def refuse(url: str, **kwargs: Any) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(observability.httpx, "get", refuse)
    with pytest.raises(UserError) as caught:
        observability._scrape(config)
    assert "127.0.0.1:1" in caught.value.problem and str(log) in caught.value.problem
    assert "the database refused the connection" in caught.value.problem and caught.value.fix
