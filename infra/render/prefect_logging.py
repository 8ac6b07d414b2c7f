"""The Prefect processes' logging configuration (``PREFECT_LOGGING_CONFIG_PATH``) and the environment that selects it.

With ``logs.format: json`` every Prefect process of the stack (API replicas, services, workers and the flow runs they
start, the migration step) writes one JSON object per line in the common format (``infra.logs.fields``), formatted by
``infra.logs.prefect_format``. The configuration is Prefect's own ``logging.yml`` of the installed version with the
stream handlers' formatter swapped, so everything else it sets up stays: the API log handlers that ship flow-run and
worker logs to the API, the levels per logger (templated from ``PREFECT_LOGGING_LEVEL`` and
``PREFECT_SERVER_LOGGING_LEVEL``, which the environment sets per component), uvicorn's and fastapi's loggers. With
``logs.format: text`` nothing is rendered and Prefect keeps its default configuration.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path, PurePath
from typing import Any

import yaml

from infra.config import StackConfig
from infra.errors import UserError
from infra.layout import StateLayout
from infra.logs import fields
from infra.render import RenderedFile

LOGGING_FILE = "prefect-logging.yaml"
FORMATTER = "infra.logs.prefect_format.JsonLineFormatter"
# Prefect's handlers that write to the process's stderr: their lines are what a log file or container log holds.
STREAM_HANDLERS = ("console", "debug")


def _prefect_default() -> dict[str, Any]:
    """Prefect's logging.yml (prefect.logging.configuration.DEFAULT_LOGGING_SETTINGS_PATH), found without importing
    Prefect: rendering stays cheap."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise UserError("Prefect is not installed in this environment", fix="run scripts/bootstrap.sh")
    loaded: dict[str, Any] = yaml.safe_load((Path(spec.origin).parent / "logging" / "logging.yml").read_text())
    return loaded


def logging_config() -> dict[str, Any]:
    """Prefect's default logging configuration with the stream handlers writing the common JSON lines."""
    document = _prefect_default()
    document["formatters"]["stack_json"] = {"()": FORMATTER}
    for name in STREAM_HANDLERS:
        handler = document["handlers"][name]
        # A plain stream handler: Prefect's console handler prints through rich, which would rewrite `:name:` as
        # emoji and markup in a message, so a JSON line would not always be the JSON the formatter wrote.
        document["handlers"][name] = {"level": handler.get("level", 0), "class": "logging.StreamHandler",
                                      "formatter": "stack_json", "stream": handler.get("stream", "ext://sys.stderr")}
    # Also configured as a named logger: under opentelemetry-instrument with log correlation on, the logging
    # instrumentation calls logging.basicConfig first, and Prefect then leaves the top-level `root` entry out (it
    # keeps a root handler it did not install), which would leave basicConfig's plain-text handler on the root.
    document["loggers"]["root"] = dict(document["root"])
    return document


def logging_yaml() -> str:
    # No dollar sign of its own: Prefect reads the file as a string.Template of its settings.
    header = ("# Rendered by prefect-stack from Prefect's own logging.yml (infra/render/prefect_logging.py): the\n"
              "# stream handlers write the stack's JSON lines; the templated levels are Prefect settings.\n")
    return header + yaml.safe_dump(logging_config(), sort_keys=False, width=120)


def logging_files(config: StackConfig, layout: StateLayout) -> tuple[RenderedFile, ...]:
    """The logging configuration the Prefect processes read, below ``layout``'s etc (none in text mode)."""
    if config.logs.format != "json":
        return ()
    return (RenderedFile(layout.etc / LOGGING_FILE, logging_yaml()),)


def logging_environment(config: StackConfig, directory: PurePath) -> dict[str, str]:
    """What selects that configuration in a Prefect process that sees it in ``directory``; and, with tracing on,
    the trace and span ids on each record (opentelemetry-instrumentation-logging)."""
    env: dict[str, str] = {}
    if config.logs.format == "json":
        env["PREFECT_LOGGING_CONFIG_PATH"] = str(directory / LOGGING_FILE)
        env["PREFECT_LOGGING_COLORS"] = "false"
        if config.tracing.enabled:
            # Only with the JSON lines: it also makes the instrumentation call logging.basicConfig, whose handler
            # Prefect's default configuration would keep on the root logger beside its own.
            env["OTEL_PYTHON_LOG_CORRELATION"] = "true"
    return env


def component_environment(component: str) -> dict[str, str]:
    """The name a process's lines carry (``api-1``, ``services-1``, ``worker-default-1``, ``migrate``)."""
    return {fields.COMPONENT_ENV: component}
