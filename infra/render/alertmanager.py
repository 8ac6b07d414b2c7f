"""alertmanager.yml: how alerts are grouped, routed, inhibited and delivered.

No receiver is active by default: firing alerts are then visible in Alertmanager itself (``invoke alerts``).
Each configured receiver (webhook, email, Slack, PagerDuty) is added to one ``operators`` receiver; pages
(severity=page) go there at once. Credentials are read from files in the secrets directory, never written here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.config import StackConfig
from infra.render import RenderedFile

SLACK_WEBHOOK_SECRET = "alert_slack_webhook_url"  # noqa: S105 - a file name, not a secret
PAGERDUTY_KEY_SECRET = "alert_pagerduty_routing_key"  # noqa: S105 - a file name


def _receivers(config: StackConfig, secrets_dir: Path) -> dict[str, Any]:
    wanted = config.monitoring.receivers
    operators: dict[str, Any] = {"name": "operators"}
    if wanted.webhook_url:
        operators["webhook_configs"] = [{"url": wanted.webhook_url, "send_resolved": True}]
    if wanted.email_to:
        operators["email_configs"] = [{"to": wanted.email_to, "from": wanted.email_from,
                                       "smarthost": wanted.email_smarthost, "send_resolved": True}]
    if wanted.slack_channel:
        operators["slack_configs"] = [{"channel": wanted.slack_channel, "send_resolved": True,
                                       "api_url_file": str(secrets_dir / SLACK_WEBHOOK_SECRET)}]
    if wanted.pagerduty:
        operators["pagerduty_configs"] = [{"routing_key_file": str(secrets_dir / PAGERDUTY_KEY_SECRET),
                                           "send_resolved": True}]
    return operators


def alertmanager_yml(config: StackConfig, etc: Path, secrets_dir: Path) -> RenderedFile:
    monitoring = config.monitoring
    operators = _receivers(config, secrets_dir)
    delivering = len(operators) > 1
    document: dict[str, Any] = {
        "route": {
            "receiver": "operators" if delivering else "none",
            "group_by": ["alertname", "area"],
            "group_wait": f"{monitoring.group_wait_s}s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            # Pages go out without waiting for the group to fill.
            "routes": [{"matchers": ['severity="page"'], "group_wait": "0s",
                        "receiver": "operators" if delivering else "none"}],
        },
        "receivers": [{"name": "none"}, *([operators] if delivering else [])],
        "inhibit_rules": [
            # When every replica is down, the per-replica, error-rate and latency alerts say nothing new.
            {"source_matchers": ['alertname="PrefectApiAllReplicasDown"'],
             "target_matchers": ['area="api"', 'alertname!="PrefectApiAllReplicasDown"'], "equal": ["stack"]},
            # Without the load balancer, nothing behind it can be judged through it.
            {"source_matchers": ['alertname="LoadBalancerDown"'], "target_matchers": ['area="api"'],
             "equal": ["stack"]},
            # A critical alert silences the warning of the same name and target.
            {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
             "equal": ["alertname", "stack", "mountpoint"]},
        ],
    }
    if config.monitoring.receivers.email_to and config.monitoring.receivers.email_smarthost:
        document["global"] = {"smtp_require_tls": True}
    header = "# Rendered by prefect-stack from the configuration model; edit the model, not this file.\n"
    return RenderedFile(etc / "alertmanager.yml", header + yaml.safe_dump(document, sort_keys=False))
