"""OpenTelemetry settings for the Prefect processes, from the model: standard OTEL_* variables only.

The processes run unchanged under ``opentelemetry-instrument``, which configures the SDK from these variables:
FastAPI server spans on the API replicas, Docket task spans in the services, both exported over OTLP/HTTP.
SQLAlchemy's instrumentation does not support the SQLAlchemy 2.1 Prefect installs, so there are no database
spans; a slow query shows as a long server span with no children.
"""

from __future__ import annotations

from infra.config import StackConfig

# Health checks arrive every second from HAProxy: tracing them would drown every real request.
EXCLUDED_URLS = "api/health,api/ready"


def exporter_environment(config: StackConfig, service: str) -> dict[str, str]:
    """What any process (server, worker, flow) needs to export its spans to the configured endpoint."""
    tracing = config.tracing
    if not tracing.enabled or not tracing.otlp_endpoint:
        return {}
    env = {
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": tracing.otlp_endpoint.rstrip("/"),
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(tracing.sample_ratio),
    }
    if config.logs.export_otlp:
        # The SDK's logging handler on the root logger, exporting every record (at the component's level) to
        # /v1/logs of the same endpoint, with the trace and span ids current when it was written.
        env["OTEL_LOGS_EXPORTER"] = "otlp"
        env["OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED"] = "true"
        if config.logs.otlp_endpoint:
            # A signal's own endpoint is used as it is (no /v1/logs appended): Loki's native OTLP path is
            # /otlp/v1/logs. Spans keep going to OTEL_EXPORTER_OTLP_ENDPOINT.
            env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] = config.logs.otlp_endpoint
    return env


def server_tracing_environment(config: StackConfig, service: str, instance: str) -> dict[str, str]:
    """For one API replica or services process: its service name, and which one it is (``api-2``)."""
    env = exporter_environment(config, service)
    if env:
        env["OTEL_RESOURCE_ATTRIBUTES"] = f"service.instance.id={instance}"
        env["OTEL_PYTHON_EXCLUDED_URLS"] = EXCLUDED_URLS
    return env
