"""Every alert rule of the stack, unit-tested with promtool: it fires on the failure it names, and stays quiet
on a healthy stack. Also: every rule carries what an operator needs at 3 a.m., and the file is valid."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import StackConfig
from infra.render.alert_rules import alert_groups, alert_rules_yml, kubernetes_alert_groups

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (bootstrap)")

API = 'proxy="prefect_api"'
FS = 'mountpoint="/",fstype="ext4"'
QUEUE = 'work_pool="a",work_queue="default"'
BACKLOG, ONLINE = f"prefect_work_queue_backlog{{{QUEUE}}}", 'prefect_work_pool_online_workers{work_pool="a"}'
DEPLOYMENT_A = 'deployment="etl/hourly",work_pool="a"'

# alert -> (eval time, series when it must fire, series when it must not). Samples are one minute apart.
CASES: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "PrefectApiAllReplicasDown": (
        "20m", {f"haproxy_backend_active_servers{{{API}}}": "0x30"},
        {f"haproxy_backend_active_servers{{{API}}}": "2x30"}),
    "PrefectApiReplicaDown": (
        "20m", {f'haproxy_server_status{{{API},server="api-2",state="UP"}}': "0x30"},
        {f'haproxy_server_status{{{API},server="api-2",state="UP"}}': "1x30"}),
    "PrefectApiHighErrorRate": (
        "20m", {f'haproxy_backend_http_responses_total{{{API},code="5xx"}}': "0+60x30",
                f'haproxy_backend_http_responses_total{{{API},code="2xx"}}': "0+60x30"},
        {f'haproxy_backend_http_responses_total{{{API},code="5xx"}}': "0x30",
         f'haproxy_backend_http_responses_total{{{API},code="2xx"}}': "0+60x30"}),
    "PrefectApiSlowResponses": (
        "20m", {f"haproxy_backend_response_time_average_seconds{{{API}}}": "2x30"},
        {f"haproxy_backend_response_time_average_seconds{{{API}}}": "0.05x30"}),
    "PrefectApiRequestsQueued": (
        "20m", {f"haproxy_backend_current_queue{{{API}}}": "3x30"},
        {f"haproxy_backend_current_queue{{{API}}}": "0x30"}),
    "LoadBalancerDown": ("20m", {'up{job="haproxy"}': "0x30"}, {'up{job="haproxy"}': "1x30"}),
    "PostgresDown": ("20m", {"pg_up": "0x30"}, {"pg_up": "1x30"}),
    "PostgresConnectionsNearLimit": (
        "20m", {'pg_stat_database_numbackends{datname="prefect"}': "190x30", "pg_settings_max_connections": "200x30"},
        {'pg_stat_database_numbackends{datname="prefect"}': "20x30", "pg_settings_max_connections": "200x30"}),
    "PgBouncerClientsWaiting": (
        "20m", {'pgbouncer_pools_client_waiting_connections{database="prefect",user="prefect"}': "5x30"},
        {'pgbouncer_pools_client_waiting_connections{database="prefect",user="prefect"}': "0x30"}),
    "PgBouncerDown": ("20m", {"pgbouncer_up": "0x30"}, {"pgbouncer_up": "1x30"}),
    "RedisDown": ("20m", {"redis_up": "0x30"}, {"redis_up": "1x30"}),
    "RedisMemoryNearLimit": (
        "20m", {"redis_memory_used_bytes": "950x30", "redis_memory_max_bytes": "1000x30"},
        {"redis_memory_used_bytes": "100x30", "redis_memory_max_bytes": "1000x30"}),
    "PrefectEventStreamGrowing": (
        "70m", {'prefect_event_stream_length{stream="events"}': "0+10000x80"},
        {'prefect_event_stream_length{stream="events"}': "1000x80"}),
    "PrefectEventsNotConsumed": (
        "20m", {'prefect_event_consumer_lag{stream="events",group="event-persister"}': "5000x30"},
        {'prefect_event_consumer_lag{stream="events",group="event-persister"}': "0x30"}),
    "PrefectLateFlowRuns": (
        "20m", {"prefect_late_flow_runs": "3x30", "prefect_oldest_late_flow_run_age_seconds": "1200x30"},
        {"prefect_late_flow_runs": "0x30", "prefect_oldest_late_flow_run_age_seconds": "0x30"}),
    "PrefectWorkPoolWithoutWorker": (
        "20m", {'prefect_work_pool_last_heartbeat_age_seconds{work_pool="a"}': "600x30",
                'prefect_work_queue_backlog{work_pool="a",work_queue="default"}': "4x30"},
        {'prefect_work_pool_last_heartbeat_age_seconds{work_pool="a"}': "600x30",
         'prefect_work_queue_backlog{work_pool="a",work_queue="default"}': "0x30"}),
    "PrefectWorkQueueBacklogGrowing": (
        # One more run due every minute, with two workers online.
        "30m", {BACKLOG: "0+1x40", ONLINE: "2x40"}, {BACKLOG: "0x40", ONLINE: "2x40"}),
    "PrefectFlowRunsCrashing": (
        "20m", {f'prefect_flow_runs_finished_recent{{state="CRASHED",{DEPLOYMENT_A}}}': "1x30"},
        {f'prefect_flow_runs_finished_recent{{state="COMPLETED",{DEPLOYMENT_A}}}': "5x30",
         'prefect_flow_runs_finished_recent{state="CRASHED",deployment="",work_pool=""}': "1x30"}),
    "PrefectExporterSourceDown": (
        "20m", {'prefect_exporter_source_up{source="redis"}': "0x30"},
        {'prefect_exporter_source_up{source="redis"}': "1x30"}),
    "HostDiskWillFillIn24Hours": (
        "7h", {f"node_filesystem_avail_bytes{{{FS}}}": "20000000000-20000000x420",
               f"node_filesystem_size_bytes{{{FS}}}": "100000000000x420"},
        {f"node_filesystem_avail_bytes{{{FS}}}": "20000000000x420",
         f"node_filesystem_size_bytes{{{FS}}}": "100000000000x420"}),
    "HostDiskAlmostFull": (
        "20m", {f"node_filesystem_avail_bytes{{{FS}}}": "3000000000x30",
                f"node_filesystem_size_bytes{{{FS}}}": "100000000000x30"},
        {f"node_filesystem_avail_bytes{{{FS}}}": "50000000000x30",
         f"node_filesystem_size_bytes{{{FS}}}": "100000000000x30"}),
    "MonitoringTargetDown": (
        "20m", {'up{job="node",component="node"}': "0x30"}, {'up{job="node",component="node"}': "1x30"}),
    "PrefectBackupFailed": (
        "20m", {'prefect_backup_last_attempt_success{method="logical"}': "0x30"},
        {'prefect_backup_last_attempt_success{method="logical"}': "1x30"}),
    "PrefectBackupVerificationFailed": (
        "20m", {'prefect_backup_last_verification_success{method="logical"}': "0x30"},
        {'prefect_backup_last_verification_success{method="logical"}': "1x30"}),
    "PrefectBackupTooOld": (
        "27h", {'prefect_backup_last_verified_backup_timestamp_seconds{method="logical"}': "0+0x1700"},
        {'prefect_backup_last_verified_backup_timestamp_seconds{method="logical"}': "0+60x1700"}),
    "PrefectBackupMissing": (
        "27h", {'prefect_backup_last_attempt_success{method="logical"}': "1+0x1700"},
        {'prefect_backup_last_verified_backup_timestamp_seconds{method="logical"}': "0+60x1700"}),
}


# More healthy stacks a rule must stay quiet on, where one per rule would not show its edges.
ALSO_QUIET: dict[str, tuple[str, dict[str, str]]] = {
    "backlog-burst-draining": ("PrefectWorkQueueBacklogGrowing", {BACKLOG: "0x5 30-1x30", ONLINE: "2x40"}),
    "backlog-burst-flat": ("PrefectWorkQueueBacklogGrowing", {BACKLOG: "0x5 30x35", ONLINE: "2x40"}),
    # No worker online: PrefectWorkPoolWithoutWorker's case, not this one's.
    "backlog-growing-without-workers": ("PrefectWorkQueueBacklogGrowing", {BACKLOG: "0+1x40", ONLINE: "0x40"}),
    # Crashed, then scheduled again by the crash-retry automation within the minute.
    "crash-retried": ("PrefectFlowRunsCrashing", {
        f'prefect_flow_runs_finished_recent{{state="CRASHED",{DEPLOYMENT_A}}}': "0x5 1 0x24"}),
}


@pytest.fixture(scope="module")
def rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(alert_rules_yml(StackConfig()))
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def _promtool_test(tmp_path: Path, alert: str, eval_time: str, series: dict[str, str], firing: bool) -> None:
    (tmp_path / "rules.yml").write_text(alert_rules_yml(StackConfig()))
    selector = f'ALERTS{{alertname="{alert}",alertstate="firing"}}'
    check: dict[str, Any] = (
        {"expr": f"count({selector}) > 0", "eval_time": eval_time, "exp_samples": [{"labels": "{}", "value": 1}]}
        if firing else {"expr": f"absent({selector})", "eval_time": eval_time,
                        "exp_samples": [{"labels": f'{{alertname="{alert}",alertstate="firing"}}', "value": 1}]}
    )
    test = {
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m",
                   "input_series": [{"series": name, "values": values} for name, values in series.items()],
                   "promql_expr_test": [check]}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_case(rules: dict[str, dict[str, Any]]) -> None:
    assert sorted(rules) == sorted(CASES)


def test_the_rules_file_is_valid(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(alert_rules_yml(StackConfig()))
    result = subprocess.run(["promtool", "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", sorted(CASES))
def test_fires_on_the_failure(tmp_path: Path, alert: str) -> None:
    eval_time, failing, _ = CASES[alert]
    _promtool_test(tmp_path, alert, eval_time, failing, firing=True)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_quiet_on_a_healthy_stack(tmp_path: Path, alert: str) -> None:
    eval_time, _, healthy = CASES[alert]
    _promtool_test(tmp_path, alert, eval_time, healthy, firing=False)


@pytest.mark.parametrize("case", sorted(ALSO_QUIET))
def test_quiet_on_another_healthy_stack(tmp_path: Path, case: str) -> None:
    alert, series = ALSO_QUIET[case]
    _promtool_test(tmp_path, alert, "30m", series, firing=False)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_carries_what_an_operator_needs(rules: dict[str, dict[str, Any]], alert: str) -> None:
    rule = rules[alert]
    assert rule["labels"]["severity"] in ("page", "critical", "warning")
    assert rule["labels"]["area"]
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert rule["annotations"]["runbook"] == f"docs/runbooks.md#{alert.lower()}"


def _runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook page's sections: ``## PrefectApiAllReplicasDown`` is
    ``#prefectapiallreplicasdown``."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "runbooks.md").read_text()
    return {line.removeprefix("## ").strip().lower() for line in page.splitlines() if line.startswith("## ")}


@pytest.mark.parametrize("groups", [alert_groups, kubernetes_alert_groups])
def test_every_runbook_link_has_its_section(groups: Callable[[StackConfig], list[dict[str, Any]]]) -> None:
    links = {rule["alert"]: rule["annotations"]["runbook"]
             for group in groups(StackConfig()) for rule in group["rules"]}
    anchors = _runbook_anchors()
    broken = {name: link for name, link in links.items()
              if not link.startswith("docs/runbooks.md#") or link.partition("#")[2] not in anchors}
    assert broken == {}
