"""The monitoring files rendered from the model: valid for the real tools, loopback only, no secret inside."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import StackConfig
from infra.layout import StateLayout
from infra.render import Addresses
from infra.render.alert_rules import alert_rules_yml
from infra.render.alertmanager import PAGERDUTY_KEY_SECRET, SLACK_WEBHOOK_SECRET, alertmanager_yml
from infra.render.monitoring import monitoring_programs
from infra.render.prometheus import RULES_FILE, SCRAPE_PASSWORD_FILE, prometheus_yml
from infra.secrets import ensure_secrets

RECEIVERS = {"webhook_url": "https://hooks.example.com/alerts", "email_to": "oncall@example.com",
             "email_from": "prefect@example.com", "email_smarthost": "smtp.example.com:587",
             "slack_channel": "#prefect-alerts", "pagerduty": True}


def _config(**monitoring: Any) -> StackConfig:
    return StackConfig(monitoring=monitoring)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (bootstrap)")
def test_prometheus_config_is_valid_for_promtool(tmp_path: Path) -> None:
    config = StackConfig()
    (tmp_path / RULES_FILE).write_text(alert_rules_yml(config))
    (tmp_path / SCRAPE_PASSWORD_FILE).write_text("not-a-real-password")
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


def test_each_api_replica_is_a_target_with_its_name_through_the_metrics_listener(tmp_path: Path) -> None:
    config = StackConfig(api={"replicas": 3})
    document = yaml.safe_load(prometheus_yml(config, Addresses(), tmp_path).content)
    api = next(j for j in document["scrape_configs"] if j["job_name"] == "prefect-api")
    groups = api["static_configs"]
    assert [g["labels"]["component"] for g in groups] == ["api-1", "api-2", "api-3"]
    assert [g["labels"]["__metrics_path__"] for g in groups] == ["/api-1/metrics", "/api-2/metrics", "/api-3/metrics"]
    assert all(g["targets"] == [f"127.0.0.1:{config.monitoring.api_metrics_port}"] for g in groups)


def test_api_scrape_holds_only_prometheuss_own_credential_file(tmp_path: Path) -> None:
    api = next(j for j in yaml.safe_load(prometheus_yml(StackConfig(), Addresses(), tmp_path).content)["scrape_configs"]
               if j["job_name"] == "prefect-api")
    assert api["basic_auth"] == {"username": "prometheus", "password_file": str(tmp_path / SCRAPE_PASSWORD_FILE)}


def test_no_admin_anywhere_in_prometheus_yml() -> None:
    assert "admin" not in prometheus_yml(StackConfig(), Addresses(), Path("/etc/prefect-stack")).content


def test_prometheus_is_given_its_own_password_and_not_the_admins(tmp_path: Path) -> None:
    secrets = ensure_secrets(tmp_path / "secrets")
    prometheus = next(p for p in monitoring_programs(StackConfig(), secrets, StateLayout(tmp_path), Addresses())
                      if p.name == "prometheus")
    contents = {f.path.name: f for f in prometheus.files}
    scrape = contents[SCRAPE_PASSWORD_FILE]
    assert (scrape.content, scrape.secret) == (secrets.get("prometheus_scrape"), True)
    admin_password = secrets.get("prefect_auth").partition(":")[2]
    assert admin_password and not any(admin_password in f.content for f in prometheus.files)


def test_api_scrape_uses_tls_when_the_stats_listener_does(tmp_path: Path) -> None:
    config = StackConfig(load_balancer={"bind_address": "0.0.0.0"})  # noqa: S104 - rendered text, not a bind
    jobs = {j["job_name"]: j for j in yaml.safe_load(prometheus_yml(config, Addresses(), tmp_path).content)[
        "scrape_configs"]}
    assert jobs["prefect-api"]["scheme"] == jobs["haproxy"]["scheme"] == "https"
    assert jobs["prefect-api"]["tls_config"] == jobs["haproxy"]["tls_config"]


def test_compose_style_addresses_reach_the_rendered_targets(tmp_path: Path) -> None:
    addresses = Addresses(api=("api-1", "api-2"), load_balancer="haproxy", exporters="exporters")
    document = yaml.safe_load(prometheus_yml(StackConfig(), addresses, tmp_path).content)
    targets = [t for job in document["scrape_configs"] for g in job["static_configs"] for t in g["targets"]]
    assert "haproxy:8404" in targets and "haproxy:19201" in targets and "exporters:19200" in targets
    assert not any(t.startswith("api-") for t in targets)
