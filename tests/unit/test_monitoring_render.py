"""The monitoring files rendered from the model: valid for the real tools, loopback only, no secret inside."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import StackConfig
from infra.render import Addresses
from infra.render.alert_rules import alert_rules_yml
from infra.render.alertmanager import PAGERDUTY_KEY_SECRET, SLACK_WEBHOOK_SECRET, alertmanager_yml
from infra.render.prometheus import API_PASSWORD_FILE, RULES_FILE, prometheus_yml

RECEIVERS = {"webhook_url": "https://hooks.example.com/alerts", "email_to": "oncall@example.com",
             "email_from": "prefect@example.com", "email_smarthost": "smtp.example.com:587",
             "slack_channel": "#prefect-alerts", "pagerduty": True}


def _config(**monitoring: Any) -> StackConfig:
    return StackConfig(monitoring=monitoring)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (bootstrap)")
def test_prometheus_config_is_valid_for_promtool(tmp_path: Path) -> None:
    config = StackConfig()
    (tmp_path / RULES_FILE).write_text(alert_rules_yml(config))
    (tmp_path / API_PASSWORD_FILE).write_text("not-a-real-password")
    rendered = prometheus_yml(config, Addresses(), tmp_path)
    rendered.path.write_text(rendered.content)
    result = subprocess.run(["promtool", "check", "config", str(rendered.path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("receivers", [{}, RECEIVERS], ids=["no-receiver", "every-receiver"])
@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (bootstrap)")
def test_alertmanager_config_is_valid_for_amtool(tmp_path: Path, receivers: dict[str, Any]) -> None:
    for name in (SLACK_WEBHOOK_SECRET, PAGERDUTY_KEY_SECRET):
        (tmp_path / name).write_text("https://hooks.example.com/x" if name == SLACK_WEBHOOK_SECRET else "key")
    rendered = alertmanager_yml(_config(receivers=receivers), tmp_path, tmp_path)
    rendered.path.write_text(rendered.content)
    result = subprocess.run(["amtool", "check-config", str(rendered.path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_receiver_is_wired_and_no_credential_is_written(tmp_path: Path) -> None:
    document = yaml.safe_load(alertmanager_yml(_config(receivers=RECEIVERS), tmp_path, tmp_path).content)
    operators = next(r for r in document["receivers"] if r["name"] == "operators")
    assert {k for k in operators if k.endswith("_configs")} == {
        "webhook_configs", "email_configs", "slack_configs", "pagerduty_configs"}
    assert operators["slack_configs"][0]["api_url_file"].endswith(SLACK_WEBHOOK_SECRET)
    assert operators["pagerduty_configs"][0]["routing_key_file"].endswith(PAGERDUTY_KEY_SECRET)
    assert document["route"]["receiver"] == "operators"


def test_without_receivers_alerts_stay_in_alertmanager(tmp_path: Path) -> None:
    document = yaml.safe_load(alertmanager_yml(StackConfig(), tmp_path, tmp_path).content)
    assert document["route"]["receiver"] == "none"
    assert document["receivers"] == [{"name": "none"}]


def test_all_replicas_down_inhibits_the_other_api_alerts(tmp_path: Path) -> None:
    document = yaml.safe_load(alertmanager_yml(StackConfig(), tmp_path, tmp_path).content)
    rule = next(r for r in document["inhibit_rules"]
                if r["source_matchers"] == ['alertname="PrefectApiAllReplicasDown"'])
    assert 'area="api"' in rule["target_matchers"]


@pytest.mark.parametrize("job", ["prometheus", "alertmanager", "node", "haproxy", "postgres", "redis",
                                 "prefect-exporter", "prefect-api"])
def test_every_component_is_scraped(tmp_path: Path, job: str) -> None:
    document = yaml.safe_load(prometheus_yml(StackConfig(), Addresses(), tmp_path).content)
    jobs = {j["job_name"]: j for j in document["scrape_configs"]}
    assert job in jobs
    targets = [t for group in jobs[job]["static_configs"] for t in group["targets"]]
    assert targets and all(t.startswith("127.0.0.1:") for t in targets)


def test_each_api_replica_is_a_target_with_its_name_and_auth_from_a_file(tmp_path: Path) -> None:
    config = StackConfig(api={"replicas": 3})
    document = yaml.safe_load(prometheus_yml(config, Addresses(), tmp_path).content)
    api = next(j for j in document["scrape_configs"] if j["job_name"] == "prefect-api")
    assert [g["labels"]["component"] for g in api["static_configs"]] == ["api-1", "api-2", "api-3"]
    assert api["basic_auth"]["password_file"] == str(tmp_path / API_PASSWORD_FILE)
    assert "password" not in api["basic_auth"]


def test_compose_style_addresses_reach_the_rendered_targets(tmp_path: Path) -> None:
    addresses = Addresses(api=("api-1", "api-2"), load_balancer="haproxy", exporters="exporters")
    document = yaml.safe_load(prometheus_yml(StackConfig(), addresses, tmp_path).content)
    targets = [t for job in document["scrape_configs"] for g in job["static_configs"] for t in g["targets"]]
    assert "haproxy:8404" in targets and "api-2:14201" in targets and "exporters:19200" in targets
