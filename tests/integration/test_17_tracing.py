"""Tracing, switched on with one setting: the API replicas' and services' spans, and a real flow's flow-run and
task-run spans, arrive at an OTLP endpoint (a real OTLP/HTTP receiver in the test, standing in for Jaeger)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.console import wait_until
from tests.integration.conftest import Stack
from tests.otlp_receiver import OtlpReceiver, ReceivedLogRecord, ReceivedSpan

SPANS_TIMEOUT_S = 120
SERVER_KIND = 2
# Every trace recorded: these tests wait for spans of requests they did not start with a sampled traceparent (the
# services', a flow's through `invoke env --tracing`), which the production default (a tenth) would mostly drop.
TRACING_KEYS = ("PREFECT_STACK_TRACING__ENABLED", "PREFECT_STACK_TRACING__OTLP_ENDPOINT",
                "PREFECT_STACK_TRACING__SAMPLE_RATIO")

FLOW = textwrap.dedent("""\
    from prefect import flow, task

    @task
    def extract() -> int:
        return 41

    @task
    def load(value: int) -> int:
        return value + 1

    @flow
    def nightly_etl() -> int:
        return load(extract())

    assert nightly_etl() == 42
""")


@pytest.fixture(scope="module")
def receiver(stack: Stack) -> Iterator[OtlpReceiver]:
    """The stack redeployed with tracing on (a rolling restart of the Prefect processes), and off afterwards."""
    with OtlpReceiver() as otlp:
        stack.env["PREFECT_STACK_TRACING__ENABLED"] = "true"
        stack.env["PREFECT_STACK_TRACING__OTLP_ENDPOINT"] = otlp.endpoint
        stack.env["PREFECT_STACK_TRACING__SAMPLE_RATIO"] = "1.0"
        try:
            result = stack.invoke("deploy")
            assert result.returncode == 0, result.stderr[-3000:]
            yield otlp
        finally:
            for key in TRACING_KEYS:
                stack.env.pop(key, None)
            assert stack.invoke("deploy").returncode == 0


def _wait_for(receiver: OtlpReceiver, what: str, match: object) -> list[ReceivedSpan]:
    found: list[ReceivedSpan] = []

    def arrived() -> bool:
        found[:] = [s for s in receiver.snapshot() if match(s)]  # type: ignore[operator]
        return bool(found)

    wait_until(arrived, SPANS_TIMEOUT_S, what, fix="read invoke logs api-1 (the OTLP exporter logs its errors)")
    return found


def test_a_flow_run_created_through_the_load_balancer_joins_the_callers_trace(
    stack: Stack, receiver: OtlpReceiver
) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)  # the caller's span, as W3C trace context
    with stack.client(headers={"traceparent": f"00-{trace_id}-{parent}-01"}) as client:
        flow_id = client.post("/flows/", json={"name": "traced"}).json()["id"]
        assert client.post("/flow_runs/", json={"flow_id": flow_id}).status_code == 201
    spans = _wait_for(receiver, "the API's server span in the caller's trace",
                      lambda s: s.trace_id == trace_id and s.kind == SERVER_KIND)
    assert {s.service for s in spans} == {"prefect-api"}
    assert any(s.parent_span_id == parent for s in spans)
    assert spans[0].instance.startswith("api-")


def test_the_api_exports_its_log_records_with_the_requests_trace_id(stack: Stack, receiver: OtlpReceiver) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    request_id = f"otlp-logs-{secrets.token_hex(4)}"
    with stack.client(headers={"traceparent": f"00-{trace_id}-{parent}-01", "X-Request-ID": request_id}) as client:
        assert client.post("/flows/filter", json={}).status_code == 200
    found: list[ReceivedLogRecord] = []

    def arrived() -> bool:
        found[:] = [r for r in receiver.logs_snapshot() if request_id in r.body]
        return bool(found)

    wait_until(arrived, SPANS_TIMEOUT_S, "the API's access record over OTLP",
               fix="read invoke logs api-1 (the OTLP exporter logs its errors)")
    assert {r.service for r in found} == {"prefect-api"}
    assert {r.trace_id for r in found} == {trace_id}


def test_health_checks_are_not_traced(stack: Stack, receiver: OtlpReceiver) -> None:
    _wait_for(receiver, "any API span", lambda s: s.service == "prefect-api")
    paths = [str(s.attributes.get("http.target", s.attributes.get("url.path", ""))) for s in receiver.snapshot()]
    assert not [p for p in paths if p.endswith(("/api/ready", "/api/health"))]


def test_the_background_services_export_their_spans(stack: Stack, receiver: OtlpReceiver) -> None:
    _wait_for(receiver, "a span from the background services", lambda s: s.service == "prefect-services")


def test_a_real_flow_exports_flow_run_and_task_run_spans(
    stack: Stack, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    exports = stack.invoke("env").stdout + stack.invoke("env", "--tracing").stdout
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    for line in exports.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip("'")
    script = tmp_path / "etl.py"
    script.write_text(FLOW)
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    result = subprocess.run([str(instrument), sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    flows = _wait_for(receiver, "the flow run's span",
                      lambda s: s.attributes.get("prefect.run.type") == "flow" and s.service == "prefect-flows")
    trace = flows[0].trace_id
    tasks = _wait_for(receiver, "the task runs' spans in the flow's trace",
                      lambda s: s.attributes.get("prefect.run.type") == "task" and s.trace_id == trace)
    assert sorted(str(s.attributes["prefect.run.name"]).split("-")[0] for s in tasks) == ["extract", "load"]


def test_env_tracing_prints_what_a_worker_needs(stack: Stack, receiver: OtlpReceiver) -> None:
    result = stack.invoke("env", "--tracing")
    assert result.returncode == 0
    assert f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint}" in result.stdout
    assert "OTEL_TRACES_EXPORTER=otlp" in result.stdout
    assert "OTEL_TRACES_SAMPLER_ARG=1.0" in result.stdout
