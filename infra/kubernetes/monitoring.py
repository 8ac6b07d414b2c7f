"""Observability as prometheus-operator resources, dashboards for Grafana's sidecar, Jaeger. (Being written.)"""

from __future__ import annotations

from typing import Any

from infra.config import StackConfig
from infra.kubernetes.objects import Manifest


def monitoring_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    return []


def tracing_endpoint(config: StackConfig) -> str | None:
    return config.tracing.otlp_endpoint if config.tracing.enabled else None
