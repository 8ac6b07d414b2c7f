"""The Kubernetes observability objects (infra/kubernetes/monitoring.py): valid against the Kubernetes schemas and
prometheus-operator's CRDs, the alert rules promtool accepts and that fire on the failures they name, the
dashboards Grafana's sidecar loads, the exporter and Jaeger hardened, and nothing secret in any of them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.compose.project import placeholder_secrets
from infra.config import StackConfig, load_config
from infra.exporter.server import Sources, StackCollector, parse_arguments
from infra.kubernetes import monitoring
from infra.kubernetes.objects import Manifest
from infra.kubernetes.render import PlaceholderImages, render
from infra.render.alert_rules import kubernetes_alert_groups
from infra.secrets import SECRET_NAMES
from tests import kubernetes_checks as checks

CRD_FILES = {"PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
             "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml"}

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-jaeger": {"kubernetes": {"jaeger": False}},
    "jaeger-memory": {"tracing": {"jaeger_storage": {"backend": "memory", "max_traces": 20000}}},
    "jaeger-badger": {"tracing": {"jaeger_storage": {"retention_hours": 72, "volume_size": "50Gi"}}},
    "no-network-policies": {"kubernetes": {"network_policies": False}},
    "external": {"kubernetes": {"postgres": {"mode": "external", "host": "db.example.com"},
                                "redis": {"mode": "external", "external_url": "rediss://cache.example.com:6380"}}},
    "external-sentinel": {"kubernetes": {"redis": {"mode": "external",
                                                   "external_url": "redis+sentinel://s1:26379/mymaster"}}},
    "standalone": {"kubernetes": {"redis": {"mode": "standalone"}, "name": "flows", "namespace": "data"}},
}


def config_of(name: str) -> StackConfig:
    return load_config(target="kubernetes", **CONFIGS[name])


def rendered(name: str = "default") -> list[Manifest]:
    return monitoring.monitoring_manifests(config_of(name), PlaceholderImages())


def objects(name: str = "default", kind: str | None = None) -> list[dict[str, Any]]:
    return [m.obj for m in rendered(name) if kind is None or m.kind == kind]


def one(kind: str, name: str, config: str = "default") -> dict[str, Any]:
    [obj] = [o for o in objects(config, kind) if o["metadata"]["name"] == name]
    return obj


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


class TestSchemas:
    @pytest.mark.parametrize("config", CONFIGS)
    def test_custom_resources_match_their_crd(self, config: str) -> None:
        problems = [p for obj in objects(config) if obj["kind"] in CRD_FILES
                    for p in checks.schema_problems(obj, config_of(config).kubernetes.version)]
        assert problems == []

    @pytest.mark.parametrize("config", CONFIGS)
    def test_builtin_kinds_are_valid(self, config: str) -> None:
        problems = [p for obj in objects(config) if obj["kind"] not in CRD_FILES
                    for p in checks.schema_problems(obj, config_of(config).kubernetes.version)]
        assert problems == []

    @pytest.mark.parametrize("kind", CRD_FILES)
    def test_operator_objects_carry_the_release_label(self, kind: str) -> None:
        assert {o["metadata"]["labels"]["release"] for o in objects(kind=kind)} == {"kube-prometheus-stack"}

    def test_objects_live_in_the_namespace(self) -> None:
        assert {o["metadata"]["namespace"] for o in objects("standalone")} == {"data"}


class TestPhases:
    def test_monitoring_objects_in_the_monitoring_component(self) -> None:
        assert {(m.phase, m.component) for m in rendered() if m.kind != "NetworkPolicy"} == {
            ("monitoring", "monitoring")}

    def test_network_policies_in_the_namespace_phase(self) -> None:
        assert {(m.phase, m.component) for m in rendered() if m.kind == "NetworkPolicy"} == {
            ("namespace", "network-policies")}

    def test_nothing_when_monitoring_is_off(self) -> None:
        config = load_config(target="kubernetes", monitoring={"enabled": False})
        assert monitoring.monitoring_manifests(config, PlaceholderImages()) == []

    def test_file_names_are_unique(self) -> None:
        names = [m.file_name for m in rendered()]
        assert len(names) == len(set(names))


class TestAlertRules:
    def rules(self, config: str = "default") -> list[dict[str, Any]]:
        [rule] = objects(config, "PrometheusRule")
        return [r for group in rule["spec"]["groups"] for r in group["rules"]]

    def test_holds_every_kubernetes_alert_of_the_renderer(self) -> None:
        expected = [r["alert"] for g in kubernetes_alert_groups(config_of("default")) for r in g["rules"]]
        assert [r["alert"] for r in self.rules()] == expected

    @pytest.mark.parametrize("alert", ["PrefectEventsNotConsumed", "PrefectLateFlowRuns", "RedisDown",
                                       "PrefectExporterSourceDown", "PrefectApiReplicaDown", "PrefectBackupTooOld"])
    def test_keeps(self, alert: str) -> None:
        assert alert in {r["alert"] for r in self.rules()}

    @pytest.mark.parametrize("alert", ["LoadBalancerDown", "PrefectApiRequestsQueued", "HostDiskAlmostFull"])
    def test_leaves_out_what_kubernetes_does_not_run(self, alert: str) -> None:
        assert alert not in {r["alert"] for r in self.rules()}

    @pytest.mark.parametrize("alert", ["PostgresDown", "PgBouncerDown"])
    def test_database_rules_only_with_cloudnativepg(self, alert: str) -> None:
        assert (alert in {r["alert"] for r in self.rules()}, alert in {r["alert"] for r in self.rules("external")}) == (
            True, False)

    def test_no_rule_reads_haproxy_or_node_exporter(self) -> None:
        assert not [r["alert"] for r in self.rules() if "haproxy_" in r["expr"] or "node_" in r["expr"]]

    @pytest.mark.parametrize("config", ["default", "standalone", "external"])
    def test_every_selector_reads_the_stacks_namespace(self, config: str) -> None:
        """Prometheus holds the whole cluster's series: another namespace's pods have the same job names."""
        namespace = config_of(config).kubernetes.namespace
        unscoped = {r["alert"]: matchers for r in self.rules(config)
                    for matchers in re.findall(r"\{([^}]*)\}", r["expr"])
                    if f'namespace="{namespace}"' not in matchers.split(",")}
        assert unscoped == {}

    @pytest.mark.parametrize("config", ["default", "standalone", "external"])
    def test_no_metric_is_read_without_a_selector(self, config: str) -> None:
        # A bare name (redis_up == 0) would read every namespace; every metric of these rules has a prefix below.
        bare = {r["alert"]: name for r in self.rules(config)
                for name in re.findall(r"\b((?:redis|prefect|cnpg|kube|up)\w*)\b(?![{(\w])",
                                       re.sub(r'"[^"]*"', '""', r["expr"]))}
        assert bare == {}

    @pytest.mark.parametrize(("config", "expected"), [
        ("default", {"RedisDown", "RedisPodDown", "RedisMemoryNearLimit"}),
        ("standalone", {"RedisDown", "RedisMemoryNearLimit"}),
        ("external", set())])
    def test_redis_rules_by_mode(self, config: str, expected: set[str]) -> None:
        """One pod down is a rule of its own only where there are several (sentinel mode); an external Redis has
        no exporter of ours beside it. The stream rules (this project's exporter) stay in every mode."""
        alerts = {r["alert"] for r in self.rules(config)}
        assert (alerts & {"RedisDown", "RedisPodDown", "RedisMemoryNearLimit"},
                {"PrefectEventStreamGrowing", "PrefectEventsNotConsumed"} <= alerts) == (expected, True)

    def test_one_redis_pod_down_is_a_warning_and_messaging_down_a_page(self) -> None:
        severity = {r["alert"]: r["labels"]["severity"] for r in self.rules()}
        assert (severity["RedisPodDown"], severity["RedisDown"]) == ("warning", "page")

    @pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
    def test_promtool_accepts_them(self, tmp_path: Path) -> None:
        [rule] = objects(kind="PrometheusRule")
        path = tmp_path / "rules.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr


DEPLOYMENT = 'namespace="prefect",deployment="prefect-api"'
CRONJOB = 'namespace="prefect",cronjob="prefect-backup"'
NEW_JOB, OLD_JOB = 'namespace="prefect",job_name="prefect-backup-2"', 'namespace="prefect",job_name="prefect-backup-1"'
DB_POD, DB_POD2 = 'namespace="prefect",pod="prefect-db-1"', 'namespace="prefect",pod="prefect-db-2"'
POOLER_POD = 'namespace="prefect",pod="prefect-pooler-transaction-7f9c-x2"'
SESSION_POD = 'namespace="prefect",pod="prefect-pooler-session-5d8b-k4"'
REDIS_POD0, REDIS_POD1, REDIS_POD2 = (f'namespace="prefect",pod="prefect-redis-{i}"' for i in range(3))
EXPORTER = 'namespace="prefect",job="prefect-exporter",pod="prefect-exporter-6c9d-q7"'
# A series whose pod went away at minute 4: its exporter left with it (the last sample, then a staleness marker).
GONE = "1x3 stale"


def redis_pod(pod: str, role: str = "slave", values: str = "1x20") -> dict[str, str]:
    """One Redis pod as Prometheus sees it: redis_exporter's series (a container of the pod), the scrape's ``up``,
    and kube-state-metrics' readiness of the pod's Sentinel container."""
    return {f"redis_up{{{pod}}}": values, f'redis_instance_info{{{pod},role="{role}"}}': values,
            f"up{{{pod}}}": values, f'kube_pod_container_status_ready{{{pod},container="sentinel"}}': values}


def scraped(pod: str, metric: str, value: str, up: str = "1x20") -> dict[str, str]:
    """A pod's one metric and the ``up`` of its scrape."""
    return {f"{metric}{{{pod}}}": value, f"up{{{pod}}}": up}


HEALTHY_REDIS = {**redis_pod(REDIS_POD0, "master"), **redis_pod(REDIS_POD1), **redis_pod(REDIS_POD2)}
HEALTHY_DATABASE = {**scraped(DB_POD, "cnpg_collector_up", "1x20"), **scraped(DB_POD2, "cnpg_collector_up", "1x20")}
HEALTHY_POOLERS = {**scraped(POOLER_POD, "cnpg_pgbouncer_up", "1x20"),
                   **scraped(SESSION_POD, "cnpg_pgbouncer_up", "1x20")}

# Every Kubernetes rule: alert -> (eval time, series when it fires, series when it must not).
KUBERNETES_CASES: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "PrefectApiAllReplicasDown": (
        "10m", {f"kube_deployment_status_replicas_available{{{DEPLOYMENT}}}": "0x20"},
        {f"kube_deployment_status_replicas_available{{{DEPLOYMENT}}}": "2x20"}),
    "PrefectApiReplicaDown": (
        "10m", {f"kube_deployment_spec_replicas{{{DEPLOYMENT}}}": "2x20",
                f"kube_deployment_status_replicas_available{{{DEPLOYMENT}}}": "1x20"},
        {f"kube_deployment_spec_replicas{{{DEPLOYMENT}}}": "2x20",
         f"kube_deployment_status_replicas_available{{{DEPLOYMENT}}}": "2x20"}),
    "PrefectBackupTooOld": (
        # backups.max_age_hours (1 here) after the last success: one at the start (fires) or 10 min ago (quiet)
        "80m", {f"kube_cronjob_status_last_successful_time{{{CRONJOB}}}": "0x90"},
        {f"kube_cronjob_status_last_successful_time{{{CRONJOB}}}": "4200x90"}),
    "PrefectBackupMissing": ("80m", {'kube_cronjob_status_last_successful_time{namespace="other"}': "0x90"},
                             {f"kube_cronjob_status_last_successful_time{{{CRONJOB}}}": "0x90"}),
    "PrefectBackupFailed": (
        "10m", {f"kube_job_status_start_time{{{OLD_JOB}}}": "100x20",
                f"kube_job_status_start_time{{{NEW_JOB}}}": "200x20",
                f'kube_job_failed{{{OLD_JOB},condition="true"}}': "0x20",
                f'kube_job_failed{{{NEW_JOB},condition="true"}}': "1x20"},
        {f"kube_job_status_start_time{{{OLD_JOB}}}": "100x20", f"kube_job_status_start_time{{{NEW_JOB}}}": "200x20",
         f'kube_job_failed{{{OLD_JOB},condition="true"}}': "1x20",
         f'kube_job_failed{{{NEW_JOB},condition="true"}}': "0x20"}),
    "PostgresDown": (
        "10m", {**scraped(DB_POD, "cnpg_collector_up", "0x20"), **scraped(DB_POD2, "cnpg_collector_up", "0x20")},
        {**scraped(DB_POD, "cnpg_collector_up", "0x20"), **scraped(DB_POD2, "cnpg_collector_up", "1x20")}),
    "PostgresConnectionsNearLimit": (
        "10m", {f'cnpg_backends_total{{{DB_POD},datname="prefect",state="idle"}}': "180x20",
                f'cnpg_pg_settings_setting{{{DB_POD},name="max_connections"}}': "200x20"},
        {f'cnpg_backends_total{{{DB_POD},datname="prefect",state="idle"}}': "20x20",
         f'cnpg_pg_settings_setting{{{DB_POD},name="max_connections"}}': "200x20"}),
    "PgBouncerClientsWaiting": (
        "10m", {f'cnpg_pgbouncer_pools_cl_waiting{{{POOLER_POD},database="prefect",user="prefect"}}': "4x20"},
        {f'cnpg_pgbouncer_pools_cl_waiting{{{POOLER_POD},database="prefect",user="prefect"}}': "0x20"}),
    "PgBouncerDown": (
        "10m", {**scraped(POOLER_POD, "cnpg_pgbouncer_up", "0x20"),
                **scraped(SESSION_POD, "cnpg_pgbouncer_up", "1x20")},
        HEALTHY_POOLERS),
    "RedisDown": (
        # Every Redis pod up but none answering (redis_exporter: redis_up 0 and no instance info).
        "10m", {**{f"redis_up{{{pod}}}": "0x20" for pod in (REDIS_POD0, REDIS_POD1, REDIS_POD2)},
                **{f"up{{{pod}}}": "1x20" for pod in (REDIS_POD0, REDIS_POD1, REDIS_POD2)}},
        HEALTHY_REDIS),
    "RedisPodDown": (
        "12m", {**redis_pod(REDIS_POD0, "master"), **redis_pod(REDIS_POD1), **redis_pod(REDIS_POD2, values=GONE)},
        HEALTHY_REDIS),
    "RedisMemoryNearLimit": (
        "10m", {f"redis_memory_used_bytes{{{REDIS_POD0}}}": "950x20",
                f"redis_memory_max_bytes{{{REDIS_POD0}}}": "1000x20"},
        {f"redis_memory_used_bytes{{{REDIS_POD0}}}": "100x20", f"redis_memory_max_bytes{{{REDIS_POD0}}}": "1000x20"}),
    "PrefectEventStreamGrowing": (
        "70m", {f'prefect_event_stream_length{{{EXPORTER},stream="events"}}': "0+10000x80"},
        {f'prefect_event_stream_length{{{EXPORTER},stream="events"}}': "1000x80"}),
    "PrefectEventsNotConsumed": (
        "20m", {f'prefect_event_consumer_lag{{{EXPORTER},stream="events",group="event-persister"}}': "5000x30"},
        {f'prefect_event_consumer_lag{{{EXPORTER},stream="events",group="event-persister"}}': "0x30"}),
    "PrefectLateFlowRuns": (
        "20m", {f"prefect_late_flow_runs{{{EXPORTER}}}": "3x30",
                f"prefect_oldest_late_flow_run_age_seconds{{{EXPORTER}}}": "1200x30"},
        {f"prefect_late_flow_runs{{{EXPORTER}}}": "0x30",
         f"prefect_oldest_late_flow_run_age_seconds{{{EXPORTER}}}": "0x30"}),
    "PrefectWorkPoolWithoutWorker": (
        "20m", {f'prefect_work_pool_last_heartbeat_age_seconds{{{EXPORTER},work_pool="a"}}': "600x30",
                f'prefect_work_queue_backlog{{{EXPORTER},work_pool="a",work_queue="default"}}': "4x30"},
        {f'prefect_work_pool_last_heartbeat_age_seconds{{{EXPORTER},work_pool="a"}}': "600x30",
         f'prefect_work_queue_backlog{{{EXPORTER},work_pool="a",work_queue="default"}}': "0x30"}),
    "PrefectWorkQueueBacklogGrowing": (
        "30m", {f'prefect_work_queue_backlog{{{EXPORTER},work_pool="a",work_queue="default"}}': "0+1x40",
                f'prefect_work_pool_online_workers{{{EXPORTER},work_pool="a"}}': "2x40"},
        {f'prefect_work_queue_backlog{{{EXPORTER},work_pool="a",work_queue="default"}}': "0x40",
         f'prefect_work_pool_online_workers{{{EXPORTER},work_pool="a"}}': "2x40"}),
    "PrefectFlowRunsCrashing": (
        "20m", {f'prefect_flow_runs_finished_recent{{{EXPORTER},state="CRASHED",deployment="etl/hourly",'
                f'work_pool="a"}}': "1x30"},
        {f'prefect_flow_runs_finished_recent{{{EXPORTER},state="COMPLETED",deployment="etl/hourly",'
         f'work_pool="a"}}': "5x30"}),
    "PrefectExporterSourceDown": (
        "20m", {f'prefect_exporter_source_up{{{EXPORTER},source="redis"}}': "0x30"},
        {f'prefect_exporter_source_up{{{EXPORTER},source="redis"}}': "1x30"}),
    "MonitoringTargetDown": (
        "10m", {'up{namespace="prefect",job="prefect-exporter",pod="prefect-exporter-1"}': "0x20"},
        {'up{namespace="prefect",job="prefect-exporter",pod="prefect-exporter-1"}': "1x20",
         'up{namespace="kube-system",job="kubelet"}': "0x20"}),
}


def in_another_namespace(series: dict[str, str]) -> dict[str, str]:
    """The same series from a namespace of another stack (same pod and job names)."""
    return {name.replace('namespace="prefect"', 'namespace="other"'): values for name, values in series.items()}


def promtool_test(tmp_path: Path, series: dict[str, str], check: dict[str, Any]) -> str:
    """Run one promtool test of the rendered PrometheusRule (default configuration, a one-hour backup age to keep
    the evaluated span short); '' on success, else promtool's report."""
    config = load_config(target="kubernetes", backups={"max_age_hours": 1})
    [rule] = [m.obj for m in monitoring.monitoring_manifests(config, PlaceholderImages())
              if m.kind == "PrometheusRule"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()], **check}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True,
                            text=True, check=False)
    return "" if result.returncode == 0 else result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
class TestKubernetesRulesFire:
    def run(self, tmp_path: Path, alert: str, series: dict[str, str]) -> list[str]:
        wait = KUBERNETES_CASES[alert][0]
        report = promtool_test(tmp_path, series, {
            "alert_rule_test": [{"eval_time": wait, "alertname": alert, "exp_alerts": []}]})
        # Expecting no alert: success means quiet, failure lists what fired.
        return [report] if report else []

    def test_every_rule_has_a_case(self) -> None:
        alerts = [r["alert"] for g in kubernetes_alert_groups(config_of("default")) for r in g["rules"]]
        assert sorted(alerts) == sorted(KUBERNETES_CASES)

    @pytest.mark.parametrize("alert", KUBERNETES_CASES)
    def test_fires(self, tmp_path: Path, alert: str) -> None:
        assert self.run(tmp_path, alert, KUBERNETES_CASES[alert][1])

    @pytest.mark.parametrize("alert", KUBERNETES_CASES)
    def test_stays_quiet(self, tmp_path: Path, alert: str) -> None:
        assert self.run(tmp_path, alert, KUBERNETES_CASES[alert][2]) == []

    @pytest.mark.parametrize("alert", KUBERNETES_CASES)
    def test_another_namespaces_failure_does_not_fire(self, tmp_path: Path, alert: str) -> None:
        """Another stack's pods fail under the same pod and job names while this stack is healthy."""
        _, failing, healthy = KUBERNETES_CASES[alert]
        assert self.run(tmp_path, alert, {**healthy, **in_another_namespace(failing)}) == []


# What fires when the database or Redis pods fail: scenario -> (alerts watched, series, (alert, severity, pooler)
# that fire at minute 12). The down alerts' exporters run in the pods they watch, so a pod that is gone leaves no
# series (GONE), and a failed scrape is up 0 (its last samples are kept here: the rules must not need staleness).
WATCH_REDIS = ("RedisDown", "RedisPodDown")
WATCH_DATABASE = ("PostgresDown", "PgBouncerDown")
MESSAGING_DOWN, POD_DOWN = ("RedisDown", "page", ""), ("RedisPodDown", "warning", "")
SCENARIOS: dict[str, tuple[tuple[str, ...], dict[str, str], list[tuple[str, str, str]]]] = {
    "redis-healthy": (WATCH_REDIS, HEALTHY_REDIS, []),
    "redis-replica-pod-gone": (
        WATCH_REDIS, {**redis_pod(REDIS_POD0, "master"), **redis_pod(REDIS_POD1), **redis_pod(REDIS_POD2, values=GONE)},
        [POD_DOWN]),
    "redis-primary-pod-gone-after-failover": (
        # Pod 1 answers as a replica until minute 4, then as the primary.
        WATCH_REDIS, {**redis_pod(REDIS_POD0, "master", values=GONE), **redis_pod(REDIS_POD1, values="1x20"),
                      f'redis_instance_info{{{REDIS_POD1},role="slave"}}': GONE,
                      f'redis_instance_info{{{REDIS_POD1},role="master"}}': "_x4 1x16", **redis_pod(REDIS_POD2)},
        [POD_DOWN]),
    "redis-sentinel-container-down": (
        WATCH_REDIS, {**HEALTHY_REDIS, f'kube_pod_container_status_ready{{{REDIS_POD1},container="sentinel"}}': "0x20"},
        [POD_DOWN]),
    "redis-process-down-in-replica-pod": (
        WATCH_REDIS, {**HEALTHY_REDIS, f"redis_up{{{REDIS_POD2}}}": "0x20",
                      f'redis_instance_info{{{REDIS_POD2},role="slave"}}': GONE},
        [POD_DOWN]),
    "redis-every-pod-gone": (
        WATCH_REDIS, {**redis_pod(REDIS_POD0, "master", GONE), **redis_pod(REDIS_POD1, values=GONE),
                      **redis_pod(REDIS_POD2, values=GONE)},
        [MESSAGING_DOWN, POD_DOWN]),
    "redis-no-primary": (
        WATCH_REDIS, {**redis_pod(REDIS_POD0), **redis_pod(REDIS_POD1), **redis_pod(REDIS_POD2)}, [MESSAGING_DOWN]),
    "redis-scrape-fails": (
        WATCH_REDIS, {**HEALTHY_REDIS, **{f"up{{{pod}}}": "0x20" for pod in (REDIS_POD0, REDIS_POD1, REDIS_POD2)}},
        [MESSAGING_DOWN, POD_DOWN]),
    "redis-primary-scrape-fails": (WATCH_REDIS, {**HEALTHY_REDIS, f"up{{{REDIS_POD0}}}": "0x20"},
                                   [MESSAGING_DOWN, POD_DOWN]),
    "redis-another-namespace-down": (
        WATCH_REDIS, {**HEALTHY_REDIS, **in_another_namespace({
            **{f"redis_up{{{pod}}}": "0x20" for pod in (REDIS_POD0, REDIS_POD1, REDIS_POD2)},
            **{f"up{{{pod}}}": "0x20" for pod in (REDIS_POD0, REDIS_POD1, REDIS_POD2)},
            **{f'kube_pod_container_status_ready{{{pod},container="sentinel"}}': "0x20"
               for pod in (REDIS_POD0, REDIS_POD1, REDIS_POD2)}})},
        []),
    "redis-gone-while-another-namespace-is-healthy": (
        WATCH_REDIS, {**redis_pod(REDIS_POD0, "master", GONE), **redis_pod(REDIS_POD1, values=GONE),
                      **redis_pod(REDIS_POD2, values=GONE), **in_another_namespace(HEALTHY_REDIS)},
        [MESSAGING_DOWN, POD_DOWN]),
    "database-healthy": (WATCH_DATABASE, {**HEALTHY_DATABASE, **HEALTHY_POOLERS}, []),
    "postgres-one-instance-gone": (
        WATCH_DATABASE, {**scraped(DB_POD, "cnpg_collector_up", GONE, up=GONE),
                         **scraped(DB_POD2, "cnpg_collector_up", "1x20"), **HEALTHY_POOLERS}, []),
    "postgres-every-instance-gone": (
        WATCH_DATABASE, {**scraped(DB_POD, "cnpg_collector_up", GONE, up=GONE),
                         **scraped(DB_POD2, "cnpg_collector_up", GONE, up=GONE), **HEALTHY_POOLERS},
        [("PostgresDown", "page", "")]),
    "postgres-scrape-fails": (
        WATCH_DATABASE, {**scraped(DB_POD, "cnpg_collector_up", "1x20", up="0x20"),
                         **scraped(DB_POD2, "cnpg_collector_up", "1x20", up="0x20"), **HEALTHY_POOLERS},
        [("PostgresDown", "page", "")]),
    "postgres-gone-while-another-namespace-is-healthy": (
        WATCH_DATABASE, {**HEALTHY_POOLERS, **in_another_namespace(HEALTHY_DATABASE)},
        [("PostgresDown", "page", "")]),
    "transaction-pooler-gone": (
        WATCH_DATABASE, {**HEALTHY_DATABASE, **scraped(POOLER_POD, "cnpg_pgbouncer_up", GONE, up=GONE),
                         **scraped(SESSION_POD, "cnpg_pgbouncer_up", "1x20")},
        [("PgBouncerDown", "page", "prefect-pooler-transaction")]),
    "session-pooler-scrape-fails": (
        WATCH_DATABASE, {**HEALTHY_DATABASE, **scraped(POOLER_POD, "cnpg_pgbouncer_up", "1x20"),
                         **scraped(SESSION_POD, "cnpg_pgbouncer_up", "1x20", up="0x20")},
        [("PgBouncerDown", "page", "prefect-pooler-session")]),
    "database-another-namespace-down": (
        WATCH_DATABASE, {**HEALTHY_DATABASE, **HEALTHY_POOLERS, **in_another_namespace({
            **scraped(DB_POD, "cnpg_collector_up", "0x20", up="0x20"),
            **scraped(DB_POD2, "cnpg_collector_up", "0x20", up="0x20"),
            **scraped(POOLER_POD, "cnpg_pgbouncer_up", "0x20", up="0x20"),
            **scraped(SESSION_POD, "cnpg_pgbouncer_up", "0x20", up="0x20")})},
        []),
}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_what_fires_when_pods_fail(tmp_path: Path, scenario: str) -> None:
    """Exactly the expected alerts, at their severity: one Redis pod down is a warning, no primary is a page."""
    watched, series, expected = SCENARIOS[scenario]
    names = "|".join(watched)
    samples = [{"labels": "{" + ",".join(f'{key}="{value}"' for key, value in
                                         (("alertname", alert), ("pooler", pooler), ("severity", severity)) if value)
                          + "}", "value": 1}
               for alert, severity, pooler in expected]
    report = promtool_test(tmp_path, series, {"promql_expr_test": [{
        "expr": f'count by (alertname, severity, pooler) (ALERTS{{alertstate="firing",alertname=~"{names}"}})',
        "eval_time": "12m", "exp_samples": samples}]})
    assert report == ""


class TestServiceMonitors:
    def endpoint(self, name: str) -> dict[str, Any]:
        [endpoint] = one("ServiceMonitor", name)["spec"]["endpoints"]
        return endpoint

    def test_scrapes_the_exporter(self) -> None:
        assert (self.endpoint("prefect-exporter")["port"], self.endpoint("prefect-exporter")["path"]) == (
            "metrics", "/metrics")

    def test_job_label_is_the_other_targets(self) -> None:
        assert ({"action": "replace", "targetLabel": "job", "replacement": "prefect-exporter"}
                in self.endpoint("prefect-exporter")["relabelings"])

    def test_selects_the_exporters_service(self) -> None:
        labels = one("ServiceMonitor", "prefect-exporter")["spec"]["selector"]["matchLabels"]
        assert labels == {"app.kubernetes.io/name": "exporter", "app.kubernetes.io/instance": "prefect"}


class TestApiNotScraped:
    """Prefect's /api/metrics needs the API admin's credential, which Prometheus must not hold: no monitor scrapes
    the replicas, and no Secret carries that credential for one."""

    @pytest.mark.parametrize("config", list(CONFIGS))
    def test_no_monitor_selects_the_api(self, config: str) -> None:
        monitors = [o for o in objects(config) if o["kind"] in ("ServiceMonitor", "PodMonitor")]
        selected = [o["spec"]["selector"].get("matchLabels", {}).get("app.kubernetes.io/name") for o in monitors]
        assert monitors and "api" not in selected

    @pytest.mark.parametrize("config", list(CONFIGS))
    def test_no_monitor_authenticates(self, config: str) -> None:
        monitors = [o for o in objects(config) if o["kind"] in ("ServiceMonitor", "PodMonitor")]
        endpoints = [e for o in monitors for e in [*o["spec"].get("endpoints", []),
                                                   *o["spec"].get("podMetricsEndpoints", [])]]
        assert [e for e in endpoints if {"basicAuth", "authorization", "bearerTokenSecret"} & set(e)] == []

    def test_no_secret_referenced_for_the_api_metrics(self) -> None:
        rendering = render(config_of("default"), PlaceholderImages())
        assert not [name for name in rendering.external_secrets if "metrics" in name]
        assert "api-metrics-auth" not in json.dumps(rendering.objects())
class TestExporter:
    def args(self, config: str = "default") -> list[str]:
        name = f"{config_of(config).kubernetes.name}-exporter"
        [exporter] = containers(one("Deployment", name, config))
        program, arguments = exporter["args"][:3], exporter["args"][3:]
        assert program[1:] == ["-m", "infra.exporter.server"]
        return list(arguments)

    def test_connects_to_the_primary_with_tls(self) -> None:
        assert {"--postgres=prefect-db-rw:5432/prefect", "--sslmode=verify-ca"} <= set(self.args())

    def test_no_pgbouncer_source(self) -> None:
        assert not [a for a in self.args() if a.startswith("--pgbouncer")]

    @pytest.mark.parametrize(("config", "redis"), [("standalone", "--redis=flows-redis:6379"),
                                                    ("external", "--redis=cache.example.com:6380")])
    def test_redis_address(self, config: str, redis: str) -> None:
        assert redis in self.args(config)

    def test_follows_the_primary_through_the_sentinels(self) -> None:
        pods = [f"prefect-redis-{i}.prefect-redis-headless.prefect.svc:26379" for i in range(3)]
        redis = [a for a in self.args() if a.startswith("--redis")]
        assert redis == [f"--redis-sentinels={','.join(pods)}", "--redis-master-set=prefect",
                         f"--redis-password-file={monitoring.SECRETS_DIR}/redis_monitor"]

    def test_sentinel_arguments_parse(self, tmp_path: Path) -> None:
        (tmp_path / "redis_monitor").write_text("pw\n")
        (tmp_path / "postgres_monitor").write_text("pw\n")
        _, sources = parse_arguments([a.replace(monitoring.SECRETS_DIR, str(tmp_path)) for a in self.args()])
        assert (sources.redis_host, sources.redis_sentinels[0], sources.redis_master_set, sources.reads_redis) == (
            None, ("prefect-redis-0.prefect-redis-headless.prefect.svc", 26379), "prefect", True)

    @pytest.mark.parametrize(("extra", "message"), [
        (["--redis=127.0.0.1:1", "--redis-sentinels=127.0.0.1:2", "--redis-master-set=m"], "not both"),
        (["--redis-sentinels=127.0.0.1:2"], "go together"),
    ])
    def test_sentinel_arguments_refused(self, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        extra: list[str], message: str) -> None:
        (tmp_path / "pw").write_text("pw")
        with pytest.raises(SystemExit):
            parse_arguments(["--listen=127.0.0.1:1", "--postgres=127.0.0.1:1/prefect",
                             f"--postgres-password-file={tmp_path / 'pw'}", f"--redis-password-file={tmp_path / 'pw'}",
                             *extra])
        assert message in capsys.readouterr().err

    def test_external_redis_over_tls(self) -> None:
        assert "--redis-tls" in self.args("external")

    def test_no_redis_source_behind_an_external_sentinel(self) -> None:
        assert not [a for a in self.args("external-sentinel") if a.startswith("--redis")]

    def test_arguments_parse(self, tmp_path: Path) -> None:
        files = {name: tmp_path / name for name in ("postgres_monitor", "redis_monitor")}
        for path in files.values():
            path.write_text("pw\n")
        args = [a.replace(monitoring.SECRETS_DIR, str(tmp_path)) for a in self.args("external")]
        listen, sources = parse_arguments(args)
        assert (listen, sources.sslmode, sources.redis_tls, sources.pgbouncer_host, sources.redis_password) == (
            ("0.0.0.0", 19200), "require", True, None, "pw")  # noqa: S104

    def test_local_arguments_still_parse(self, tmp_path: Path) -> None:
        (tmp_path / "pw").write_text("pw")
        _, sources = parse_arguments(["--listen=127.0.0.1:19200", "--postgres=127.0.0.1:15432/prefect",
                                      "--pgbouncer=127.0.0.1:16432", "--redis=127.0.0.1:16379",
                                      f"--postgres-password-file={tmp_path / 'pw'}",
                                      f"--redis-password-file={tmp_path / 'pw'}"])
        assert (sources.pgbouncer_host, sources.redis_host, sources.sslmode) == ("127.0.0.1", "127.0.0.1", "prefer")

    def test_sources_left_out_are_not_reported(self) -> None:
        """Without --pgbouncer and --redis, only PostgreSQL is read (and reported down here: nothing listens)."""
        sources = Sources(postgres_host="127.0.0.1", postgres_port=1, database="prefect", pgbouncer_host=None,
                          pgbouncer_port=0, redis_host=None, redis_port=0, postgres_password="pw",
                          redis_password="", finished_runs_window_s=3600, sslmode="disable")
        families = list(StackCollector(sources).collect())
        [up] = [f for f in families if f.name == "prefect_exporter_source_up"]
        assert ([s.labels["source"] for s in up.samples], "pgbouncer_up" in {f.name for f in families}) == (
            ["postgres"], False)

    def test_credentials_are_read_only_files(self) -> None:
        [exporter] = containers(one("Deployment", "prefect-exporter"))
        assert {"name": "secrets", "mountPath": monitoring.SECRETS_DIR, "readOnly": True} in exporter["volumeMounts"]

    def test_only_the_monitor_credentials_are_mounted(self) -> None:
        volumes = one("Deployment", "prefect-exporter")["spec"]["template"]["spec"]["volumes"]
        [secret] = [v["secret"] for v in volumes if v["name"] == "secrets"]
        assert (secret["secretName"], {i["key"] for i in secret["items"]}) == (
            "prefect-stack-secrets", {"postgres_monitor", "redis_monitor"})

    def test_verifies_the_database_server_against_the_clusters_ca(self) -> None:
        """As the apps do: a certificate of the Cluster's CA, not merely an encrypted connection."""
        deployment = one("Deployment", "prefect-exporter")
        [exporter] = containers(deployment)
        assert "--sslmode=verify-ca" in exporter["args"]
        [root_cert] = [a.removeprefix("--sslrootcert=") for a in exporter["args"] if a.startswith("--sslrootcert=")]
        mount = next(m for m in exporter["volumeMounts"] if root_cert.startswith(m["mountPath"] + "/"))
        volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "prefect-db-ca"
        assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"]  # not the CA's private key

    @pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
    def test_probes_the_metrics_port(self, probe: str) -> None:
        [exporter] = containers(one("Deployment", "prefect-exporter"))
        assert exporter[probe]["tcpSocket"]["port"] == "metrics"

    def test_service_port_named_metrics(self) -> None:
        assert one("Service", "prefect-exporter")["spec"]["ports"][0]["name"] == "metrics"

    def test_pods_carry_the_exporter_component(self) -> None:
        labels = one("Deployment", "prefect-exporter")["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "exporter"


class TestHardening:
    @pytest.mark.parametrize("workload", ["prefect-exporter", "prefect-jaeger"])
    def test_containers_are_restricted(self, workload: str) -> None:
        for c in containers(one("Deployment", workload)):
            context = c["securityContext"]
            assert (context["runAsNonRoot"], context["readOnlyRootFilesystem"], context["allowPrivilegeEscalation"],
                    context["capabilities"], context["seccompProfile"]) == (
                True, True, False, {"drop": ["ALL"]}, {"type": "RuntimeDefault"})

    @pytest.mark.parametrize("workload", ["prefect-exporter", "prefect-jaeger"])
    def test_requests_and_limits(self, workload: str) -> None:
        for c in containers(one("Deployment", workload)):
            assert set(c["resources"]) == {"requests", "limits"}

    @pytest.mark.parametrize("workload", ["prefect-exporter", "prefect-jaeger"])
    def test_no_service_account_token(self, workload: str) -> None:
        assert one("Deployment", workload)["spec"]["template"]["spec"]["automountServiceAccountToken"] is False

    @pytest.mark.parametrize("config", CONFIGS)
    def test_no_secret_value_in_any_object(self, config: str) -> None:
        text = json.dumps(objects(config))
        secrets = placeholder_secrets()
        assert [name for name in SECRET_NAMES if secrets.get(name) in text] == []

    def test_images_are_pinned(self) -> None:
        images = {c["image"] for kind in ["Deployment"] for o in objects(kind=kind) for c in containers(o)}
        assert [i for i in images if i.endswith(":latest") or ":" not in i.rsplit("/", 1)[-1]] == []


class TestDashboards:
    def maps(self) -> list[dict[str, Any]]:
        return [o for o in objects(kind="ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]

    def test_one_per_dashboard_kubernetes_can_fill(self) -> None:
        names = {key for m in self.maps() for key in m["data"]}
        assert names == {"prefect-overview.json", "prefect-api.json", "prefect-redis.json"}

    def test_labelled_for_the_sidecar(self) -> None:
        assert {m["metadata"]["labels"]["grafana_dashboard"] for m in self.maps()} == {"1"}

    def test_under_the_config_map_limit(self) -> None:
        assert max(len(json.dumps(m).encode()) for m in self.maps()) < monitoring.CONFIG_MAP_LIMIT

    def test_data_is_a_dashboard(self) -> None:
        for m in self.maps():
            [text] = m["data"].values()
            assert json.loads(text)["uid"].startswith("prefect-stack")

    def test_queries_use_the_datasource_variable(self) -> None:
        """Any Prometheus datasource, kube-prometheus-stack's (uid prometheus) included: no uid to rewrite."""
        uids = {target["datasource"]["uid"] for m in self.maps() for d in map(json.loads, m["data"].values())
                for panel in d["panels"] for target in panel.get("targets", [])}
        assert uids == {"${datasource}"}


class TestJaeger:
    def test_absent_when_turned_off(self) -> None:
        assert [o["kind"] for o in objects("no-jaeger") if "jaeger" in o["metadata"]["name"]] == []

    def test_config_is_the_compose_targets(self) -> None:
        from infra.render.jaeger import jaeger_yaml
        assert one("ConfigMap", "prefect-jaeger")["data"]["config.yaml"] == jaeger_yaml(config_of("default"))

    def test_listens_on_the_pod_address(self) -> None:
        [jaeger] = containers(one("Deployment", "prefect-jaeger"))
        assert {"name": "JAEGER_LISTEN_HOST", "value": "0.0.0.0"} in jaeger["env"]  # noqa: S104

    def test_runs_as_the_upstream_user(self) -> None:
        spec = one("Deployment", "prefect-jaeger")["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == 10001

    @pytest.mark.parametrize(("port", "number"), [("otlp-grpc", 4317), ("otlp-http", 4318), ("ui", 16686),
                                                   ("health", 13133)])
    def test_service_port(self, port: str, number: int) -> None:
        ports = {p["name"]: p["port"] for p in one("Service", "prefect-jaeger")["spec"]["ports"]}
        assert ports[port] == number

    @pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
    def test_probes_health(self, probe: str) -> None:
        [jaeger] = containers(one("Deployment", "prefect-jaeger"))
        assert jaeger[probe]["httpGet"]["port"] == "health"

    def test_storage_survives_a_restart(self) -> None:
        volumes = one("Deployment", "prefect-jaeger")["spec"]["template"]["spec"]["volumes"]
        assert {"name": "data", "persistentVolumeClaim": {"claimName": "prefect-jaeger"}} in volumes

    def test_recreated_not_rolled(self) -> None:
        """One ReadWriteOnce volume: a second pod could not mount it during a rolling update."""
        assert one("Deployment", "prefect-jaeger")["spec"]["strategy"] == {"type": "Recreate"}

    def _storage(self, config: str) -> dict[str, Any]:
        document = yaml.safe_load(one("ConfigMap", "prefect-jaeger", config)["data"]["config.yaml"])
        backends: dict[str, Any] = document["extensions"]["jaeger_storage"]["backends"]
        return backends

    def test_badger_keeps_spans_for_the_retention_on_a_claim_of_the_models_size(self) -> None:
        assert self._storage("jaeger-badger")["main"]["badger"]["ttl"] == {"spans": "72h"}
        claim = one("PersistentVolumeClaim", "prefect-jaeger", "jaeger-badger")
        assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
        [jaeger] = containers(one("Deployment", "prefect-jaeger", "jaeger-badger"))
        assert {"name": "data", "mountPath": "/var/lib/jaeger"} in jaeger["volumeMounts"]

    def test_memory_keeps_max_traces_without_a_volume(self) -> None:
        assert self._storage("jaeger-memory") == {"main": {"memory": {"max_traces": 20000}}}
        assert not objects("jaeger-memory", "PersistentVolumeClaim")
        spec = one("Deployment", "prefect-jaeger", "jaeger-memory")["spec"]["template"]["spec"]
        assert "data" not in {v["name"] for v in spec["volumes"]}
        assert "data" not in {m["name"] for m in spec["containers"][0]["volumeMounts"]}


class TestTracingEndpoint:
    @pytest.mark.parametrize(("overrides", "expected"), [
        ({}, "http://prefect-jaeger:4318"),
        ({"kubernetes": {"name": "flows"}}, "http://flows-jaeger:4318"),
        ({"tracing": {"otlp_endpoint": "http://collector.otel:4318"}}, "http://collector.otel:4318"),
        ({"kubernetes": {"jaeger": False}, "tracing": {"otlp_endpoint": "http://collector.otel:4318"}},
         "http://collector.otel:4318"),
        ({"kubernetes": {"jaeger": False}}, None),
        ({"monitoring": {"enabled": False}}, None),
    ])
    def test_endpoint(self, overrides: dict[str, Any], expected: str | None) -> None:
        assert monitoring.tracing_endpoint(load_config(target="kubernetes", **overrides)) == expected


class TestNetworkPolicies:
    def policy(self, name: str, config: str = "default") -> dict[str, Any]:
        return one("NetworkPolicy", name, config)["spec"]

    def test_absent_when_turned_off(self) -> None:
        assert objects("no-network-policies", "NetworkPolicy") == []

    def test_exporter_scraped_from_prometheus_namespace_only(self) -> None:
        [rule] = self.policy("prefect-exporter-allow")["ingress"]
        assert (rule["from"], rule["ports"]) == (
            [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            [{"protocol": "TCP", "port": 19200}])

    @pytest.mark.parametrize("port", [53, 5432, 6379, 26379])
    def test_exporter_egress_port(self, port: str) -> None:
        ports = {p["port"] for rule in self.policy("prefect-exporter-allow")["egress"] for p in rule["ports"]}
        assert port in ports

    def test_exporter_reaches_the_cnpg_instances(self) -> None:
        peers = [peer for rule in self.policy("prefect-exporter-allow")["egress"] for peer in rule.get("to", [])]
        assert {"podSelector": {"matchLabels": {"cnpg.io/cluster": "prefect-db"}}} in peers

    def test_exporter_reaches_an_external_redis_port(self) -> None:
        assert {"ports": [{"protocol": "TCP", "port": 6380}]} in self.policy("prefect-exporter-allow", "external")[
            "egress"]

    def test_jaeger_receives_spans_from_prefect_pods(self) -> None:
        rule = self.policy("prefect-jaeger-allow")["ingress"][0]
        components = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]}
        assert (components, {p["port"] for p in rule["ports"]}) == ({"api", "services"}, {4317, 4318})

    def test_jaeger_calls_no_one(self) -> None:
        assert self.policy("prefect-jaeger-allow")["egress"] == []

    @pytest.mark.parametrize("name", ["prefect-exporter-allow", "prefect-jaeger-allow"])
    def test_selects_its_pods(self, name: str) -> None:
        component = name.removeprefix("prefect-").removesuffix("-allow")
        assert self.policy(name)["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == component


class TestPlainData:
    @pytest.mark.parametrize("config", CONFIGS)
    def test_no_yaml_anchors(self, config: str) -> None:
        """No dict shared inside an object: the written files carry no &id001/*id001 aliases."""
        assert [o["metadata"]["name"] for o in objects(config) if "&id" in yaml.safe_dump(o)] == []
