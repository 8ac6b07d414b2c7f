"""The Prefect processes' JSON lines: the formatter's output, the rendered logging configuration, how each target
selects it, and a real Prefect process writing the common format with it."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.compose.project import placeholder_secrets, placeholder_tls, render_project
from infra.config import REPO_ROOT, StackConfig, load_config
from infra.kubernetes.render import reference_rendering
from infra.layout import StateLayout
from infra.local.plan import build_plan
from infra.logs import fields
from infra.logs.prefect_format import JsonLineFormatter, rfc3339
from infra.render.prefect_logging import LOGGING_FILE, logging_config, logging_environment, logging_files
from infra.secrets import ensure_secrets

# 2026-12-06T19:22:25.123456Z
CREATED = 1796584945.123456
TIME = "2026-12-06T19:22:25.123Z"


def _record(msg: str = "hello", args: tuple[Any, ...] = (), exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("prefect.server", logging.INFO, __file__, 1, msg, args, exc_info)
    record.created = CREATED
    record.__dict__.update(extra)
    return record


def _line(record: logging.LogRecord) -> dict[str, Any]:
    text = JsonLineFormatter("api-1").format(record)
    assert "\n" not in text
    parsed: dict[str, Any] = json.loads(text)
    return parsed


class TestFormatter:
    def test_a_plain_record_has_the_common_keys_only(self) -> None:
        assert _line(_record()) == {fields.TIME: TIME, fields.LEVEL: "INFO", fields.COMPONENT: "api-1",
                                    fields.MESSAGE: "hello", fields.LOGGER: "prefect.server"}

    def test_the_message_is_joined_with_its_arguments(self) -> None:
        assert _line(_record("%s runs %d", ("flow", 3)))[fields.MESSAGE] == "flow runs 3"

    def test_a_traceback_goes_under_exception(self) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            line = _line(_record("failed", exc_info=sys.exc_info()))
        assert line[fields.MESSAGE] == "failed"
        assert line[fields.EXCEPTION].startswith("Traceback")
        assert "ValueError: boom" in line[fields.EXCEPTION]

    def test_run_ids_from_prefects_run_loggers(self) -> None:
        line = _line(_record(flow_run_id="0b8b7c4e-1", task_run_id="7d3e", flow_run_name="brisk-otter"))
        assert (line[fields.FLOW_RUN_ID], line[fields.TASK_RUN_ID]) == ("0b8b7c4e-1", "7d3e")
        assert "flow_run_name" not in line

    def test_an_unknown_run_id_is_left_out(self) -> None:
        assert fields.FLOW_RUN_ID not in _line(_record(flow_run_id="<unknown>"))

    def test_a_request_id_on_the_record(self) -> None:
        assert _line(_record(request_id="r-42"))[fields.REQUEST_ID] == "r-42"

    def test_trace_and_span_ids_inside_a_span(self) -> None:
        line = _line(_record(otelTraceID="4bf92f3577b34da6a3ce929d0e0e4736", otelSpanID="00f067aa0ba902b7"))
        assert (line[fields.TRACE_ID], line[fields.SPAN_ID]) == ("4bf92f3577b34da6a3ce929d0e0e4736",
                                                                 "00f067aa0ba902b7")

    def test_no_trace_id_outside_a_span(self) -> None:
        line = _line(_record(otelTraceID="0", otelSpanID="0"))
        assert fields.TRACE_ID not in line and fields.SPAN_ID not in line

    def test_the_component_comes_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(fields.COMPONENT_ENV, "worker-default-1")
        assert json.loads(JsonLineFormatter().format(_record()))[fields.COMPONENT] == "worker-default-1"

    def test_time_is_utc_with_milliseconds(self) -> None:
        assert rfc3339(0.0015) == "1970-01-01T00:00:00.001Z"


class TestConfiguration:
    def test_it_loads_with_dictconfig(self, tmp_path: Path) -> None:
        document = yaml.safe_load(yaml.safe_dump(logging_config()).replace("${PREFECT_LOGGING_LEVEL}", "INFO")
                                  .replace("${PREFECT_SERVER_LOGGING_LEVEL}", "INFO")
                                  .replace("${PREFECT_INTERNAL_LOGGING_LEVEL}", "ERROR"))
        previous = logging.getLogger().handlers[:]
        try:
            logging.config.dictConfig(document)
            assert isinstance(logging.getLogger().handlers[0].formatter, JsonLineFormatter)
        finally:
            logging.getLogger().handlers[:] = previous

    def test_prefects_api_handlers_and_loggers_stay(self) -> None:
        document = logging_config()
        assert document["handlers"]["api"]["class"] == "prefect.logging.handlers.APILogHandler"
        assert document["handlers"]["worker_api"]["class"] == "prefect.logging.handlers.WorkerAPILogHandler"
        assert document["loggers"]["prefect.flow_runs"]["handlers"] == ["api"]
        assert document["loggers"]["uvicorn"]["handlers"] == ["console"]

    @pytest.mark.parametrize("handler", ["console", "debug"])
    def test_stream_handlers_write_json_lines(self, handler: str) -> None:
        assert logging_config()["handlers"][handler]["formatter"] == "stack_json"

    def test_text_mode_keeps_prefects_default(self, tmp_path: Path) -> None:
        config = load_config(logs={"format": "text"})
        assert logging_files(config, StateLayout(tmp_path)) == ()
        assert "PREFECT_LOGGING_CONFIG_PATH" not in logging_environment(config, tmp_path)

    def test_trace_ids_only_with_tracing(self, tmp_path: Path) -> None:
        assert "OTEL_PYTHON_LOG_CORRELATION" not in logging_environment(load_config(), tmp_path)
        traced = load_config(tracing={"enabled": True, "otlp_endpoint": "http://127.0.0.1:4318"})
        assert logging_environment(traced, tmp_path)["OTEL_PYTHON_LOG_CORRELATION"] == "true"


class TestTargets:
    def test_local_programs(self, tmp_path: Path) -> None:
        config = load_config(local={"state_dir": str(tmp_path / "state")})
        plan = build_plan(config, ensure_secrets(tmp_path / "secrets"))
        path = str(StateLayout(config.state_dir).etc / LOGGING_FILE)
        for name in ("api-1", "services-1", "worker-default-1"):
            program = plan.program(name)
            assert program.environment["PREFECT_LOGGING_CONFIG_PATH"] == path, name
            assert program.environment[fields.COMPONENT_ENV] == name
            assert program.environment["PREFECT_LOGGING_COLORS"] == "false"
        assert plan.migration_env[fields.COMPONENT_ENV] == "migrate"
        assert path in {str(f.path) for f in plan.files}

    def test_local_levels_per_component(self, tmp_path: Path) -> None:
        config = load_config(local={"state_dir": str(tmp_path / "state")},
                             logs={"levels": {"api": "DEBUG", "services": "WARNING", "workers": "ERROR"}})
        plan = build_plan(config, ensure_secrets(tmp_path / "secrets"))
        levels = {name: plan.program(name).environment["PREFECT_LOGGING_LEVEL"]
                  for name in ("api-1", "services-1", "worker-default-1")}
        assert levels == {"api-1": "DEBUG", "services-1": "WARNING", "worker-default-1": "ERROR"}

    def test_compose_services(self) -> None:
        project = render_project(StackConfig(target="compose"), placeholder_secrets(), _Images(), placeholder_tls())
        env_files = {str(f.path): json.loads(f.content) for f in project.files if f.path.name.endswith(".env.json")}
        services = project.document["services"]
        for name in ("migrate", "api-1", "services-1", "worker-default-1"):
            service = services[name]
            assert service["environment"][fields.COMPONENT_ENV] == name
            assert any(mount["target"].endswith(LOGGING_FILE) for mount in service["configs"]), name
        api_env = next(env for path, env in env_files.items() if "api.env" in path)
        assert api_env["PREFECT_LOGGING_CONFIG_PATH"].endswith(LOGGING_FILE)
        assert services["worker-default-1"]["environment"]["PREFECT_LOGGING_CONFIG_PATH"].endswith(LOGGING_FILE)

    def test_kubernetes_pods(self) -> None:
        rendering = reference_rendering(load_config(target="kubernetes"))
        config_maps = [o for o in rendering.objects() if o["kind"] == "ConfigMap" and LOGGING_FILE in o.get("data", {})]
        assert len(config_maps) == 1
        workloads = [o for o in rendering.objects() if o["kind"] in ("Deployment", "Job")
                     and o["metadata"]["name"].split("-", 1)[1].startswith(("api", "services", "worker", "migrate"))]
        assert workloads
        for workload in workloads:
            container = workload["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert fields.COMPONENT_ENV in env, workload["metadata"]["name"]
            assert any(m["mountPath"].endswith("logging") for m in container["volumeMounts"])


class _Images:
    system = "prefect-stack/system:0123456789ab"
    prefect = "prefect-stack/prefect:0123456789ab"


def test_a_prefect_process_writes_the_common_format(tmp_path: Path) -> None:
    """Prefect itself, with the rendered configuration: its loggers' lines are JSON in the common format."""
    path = tmp_path / LOGGING_FILE
    path.write_text(logging_files(load_config(), StateLayout(tmp_path))[0].content)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
           **logging_environment(load_config(), tmp_path), fields.COMPONENT_ENV: "api-7",
           "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_LOGGING_LEVEL": "INFO",
           "PREFECT_SERVER_LOGGING_LEVEL": "INFO"}
    # Prefect's CLI and server set logging up at start exactly so (prefect/cli/_app.py, prefect/server/api/server.py).
    script = ("import logging\n"
              "from prefect.logging.configuration import setup_logging\n"
              "from prefect.logging import get_logger\n"
              "setup_logging()\n"
              "get_logger('prefect.server.test').info('ready on %s', 'port 4200')\n"
              "logging.getLogger('uvicorn.error').warning('uvicorn says :smile: [b]hi[/b]')\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert [(line[fields.LOGGER], line[fields.MESSAGE]) for line in lines] == [
        ("prefect.server.test", "ready on port 4200"), ("uvicorn.error", "uvicorn says :smile: [b]hi[/b]")]
    for line in lines:
        assert line[fields.COMPONENT] == "api-7"
        assert line[fields.TIME].endswith("Z") and len(line[fields.TIME]) == len(TIME)


def test_under_opentelemetry_instrument_lines_carry_the_trace_and_span_ids(tmp_path: Path) -> None:
    """As a traced replica runs: log correlation on (the instrumentation also calls logging.basicConfig, whose
    plain-text handler must not survive), ids inside a span, none outside."""
    traced = load_config(tracing={"enabled": True, "otlp_endpoint": "http://127.0.0.1:4318"})
    path = tmp_path / LOGGING_FILE
    path.write_text(logging_files(traced, StateLayout(tmp_path))[0].content)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OTEL_"))},
           **logging_environment(traced, tmp_path), fields.COMPONENT_ENV: "api-1",
           "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_LOGGING_LEVEL": "INFO",
           # Nothing leaves the process: the spans exist, nothing exports them.
           "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    script = ("import logging\n"
              "from opentelemetry import trace\n"
              "from prefect.logging.configuration import setup_logging\n"
              "setup_logging()\n"
              "with trace.get_tracer('test').start_as_current_span('request'):\n"
              "    logging.getLogger('prefect.server.test').info('inside')\n"
              "logging.getLogger('prefect.server.test').info('outside')\n")
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    result = subprocess.run([str(instrument), sys.executable, "-c", script], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    inside, outside = (json.loads(line) for line in result.stderr.splitlines() if line.strip())
    assert inside[fields.MESSAGE] == "inside"
    assert (len(inside[fields.TRACE_ID]), len(inside[fields.SPAN_ID])) == (32, 16)
    assert outside[fields.MESSAGE] == "outside" and fields.TRACE_ID not in outside
