"""What is firing now, read from Alertmanager's API (v2): for `invoke alerts` and the tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import httpx

from infra.config import StackConfig
from infra.errors import UserError

TIMEOUT_S = 5.0
SEVERITY_ORDER = {"page": 0, "critical": 1, "warning": 2}


@dataclass(frozen=True)
class FiringAlert:
    name: str
    severity: str
    since: str  # ISO 8601, when Prometheus started firing it
    summary: str
    description: str
    runbook: str
    labels: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def age_s(self, now: datetime) -> float:
        return (now - datetime.fromisoformat(self.since.replace("Z", "+00:00"))).total_seconds()


def alertmanager_url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.monitoring.alertmanager_port}"


def prometheus_url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.monitoring.prometheus_port}"


def _parse(raw: dict[str, Any]) -> FiringAlert:
    labels = {k: str(v) for k, v in raw.get("labels", {}).items()}
    annotations = raw.get("annotations", {})
    return FiringAlert(
        name=labels.get("alertname", "?"), severity=labels.get("severity", "none"), since=str(raw.get("startsAt")),
        summary=str(annotations.get("summary", "")), description=str(annotations.get("description", "")),
        runbook=str(annotations.get("runbook", "")),
        labels={k: v for k, v in labels.items() if k not in ("alertname", "severity")},
    )


def firing_alerts(config: StackConfig) -> list[FiringAlert]:
    """Active alerts that are neither silenced nor inhibited, the most severe first, then the oldest."""
    if not config.monitoring.enabled:
        raise UserError("monitoring is off in the configuration (monitoring.enabled: false)",
                        fix="set monitoring.enabled: true and run invoke deploy")
    url = alertmanager_url(config)
    try:
        with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as client:
            response = client.get(f"{url}/api/v2/alerts",
                                  params={"active": "true", "silenced": "false", "inhibited": "false"})
            response.raise_for_status()
    except httpx.HTTPError as exc:
        raise UserError(f"Alertmanager at {url} did not answer: {exc}",
                        fix="check it with invoke status; invoke logs alertmanager") from None
    alerts = [_parse(raw) for raw in response.json()]
    return sorted(alerts, key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), a.since))
