"""Tracing from the model: one switch, standard OTEL_* settings, the Prefect commands run unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.local.plan import build_plan
from infra.render.tracing import exporter_environment, server_tracing_environment
from infra.secrets import ensure_secrets

ON = {"enabled": True, "otlp_endpoint": "http://jaeger:4318"}


def test_off_by_default_adds_nothing() -> None:
    assert exporter_environment(StackConfig(), "prefect-api") == {}


def test_on_without_an_endpoint_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_STACK_TRACING__ENABLED", "true")
    with pytest.raises(UserError) as caught:
        load_config()
    assert "tracing.otlp_endpoint" in str(caught.value)


def test_server_processes_say_who_they_are_and_skip_health_checks() -> None:
    env = server_tracing_environment(StackConfig(tracing=ON), "prefect-api", "api-2")
    assert env["OTEL_SERVICE_NAME"] == "prefect-api"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "service.instance.id=api-2"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert "api/ready" in env["OTEL_PYTHON_EXCLUDED_URLS"]


def test_production_default_records_a_share_of_new_traces_and_every_sampled_callers() -> None:
    env = exporter_environment(StackConfig(tracing=ON), "prefect-api")
    assert 0.0 < float(env["OTEL_TRACES_SAMPLER_ARG"]) < 1.0
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"


def test_sampling_follows_the_caller_and_the_ratio() -> None:
    env = exporter_environment(StackConfig(tracing={**ON, "sample_ratio": 0.25}), "prefect-flows")
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"


@pytest.mark.parametrize("tracing", [False, True])
def test_prefect_processes_run_under_opentelemetry_instrument_only_when_on(tmp_path: Path, tracing: bool) -> None:
    config = StackConfig(tracing=ON if tracing else {}, local={"state_dir": str(tmp_path)})
    plan = build_plan(config, ensure_secrets(tmp_path / "secrets"))
    # The replicas run `prefect server start --no-services` through the project's request-id layer (python -m).
    for name, program in (("api-1", "python"), ("services-1", "prefect")):
        command = plan.program(name).command
        assert Path(command[0]).name == ("opentelemetry-instrument" if tracing else program)
        assert Path(command[1 if tracing else 0]).name == program


@pytest.mark.parametrize("export", [True, False])
def test_logs_go_where_the_spans_go_unless_turned_off(export: bool) -> None:
    env = exporter_environment(StackConfig(tracing=ON, logs={"export_otlp": export}), "prefect-api")
    assert env["OTEL_LOGS_EXPORTER"] == ("otlp" if export else "none")
    assert ("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED" in env) is export
