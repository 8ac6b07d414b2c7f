"""Jaeger v2's configuration (the trace store and UI of the compose and Kubernetes targets), from the model."""

from __future__ import annotations

from typing import Any

import yaml

from infra.config import StackConfig

# Jaeger's OTLP/HTTP receiver (what the Prefect processes export their spans to) and its UI.
JAEGER_OTLP_HTTP, JAEGER_UI = 4318, 16686
# Where Badger keeps its files in the container: the volume the targets mount (only with backend badger).
JAEGER_DATA_DIR = "/var/lib/jaeger"


def jaeger_needs_volume(config: StackConfig) -> bool:
    """Badger writes its files to a volume; the memory store has none."""
    return config.tracing.jaeger_storage.backend == "badger"


def _storage_backend(config: StackConfig) -> dict[str, Any]:
    storage = config.tracing.jaeger_storage
    if storage.backend == "memory":
        return {"memory": {"max_traces": storage.max_traces}}
    return {"badger": {"directories": {"keys": f"{JAEGER_DATA_DIR}/keys", "values": f"{JAEGER_DATA_DIR}/values"},
                       "ephemeral": False, "ttl": {"spans": f"{storage.retention_hours}h"}}}


def jaeger_yaml(config: StackConfig) -> str:
    """Jaeger v2 (an OpenTelemetry Collector distribution): OTLP in, the configured storage, UI out."""
    document = {
        "service": {"extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                    "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"],
                                             "exporters": ["jaeger_storage_exporter"]}}},
        "extensions": {
            "healthcheckv2": {"use_v2": True, "http": {"endpoint": "0.0.0.0:13133"}},
            "jaeger_query": {"storage": {"traces": "main"}, "http": {"endpoint": f"0.0.0.0:{JAEGER_UI}"}},
            "jaeger_storage": {"backends": {"main": _storage_backend(config)}},
        },
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "0.0.0.0:4317"},
                                             "http": {"endpoint": f"0.0.0.0:{JAEGER_OTLP_HTTP}"}}}},
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "main"}},
    }
    return "# Rendered by prefect-stack from the configuration model.\n" + yaml.safe_dump(document, sort_keys=False)
