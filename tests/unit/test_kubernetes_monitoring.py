"""The Kubernetes observability objects (infra/kubernetes/monitoring.py): valid against the Kubernetes schemas and
prometheus-operator's CRDs, the alert rules promtool accepts and that fire on the failures they name, the
dashboards Grafana's sidecar loads, the exporter and Jaeger hardened, and nothing secret in any of them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import infra.kubernetes.database as database
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
ENDPOINTS = database.DatabaseEndpoints(api=("prefect-pooler-transaction", 5432),
                                       services=("prefect-pooler-session", 5432),
                                       direct=("prefect-db-rw", 5432), sslmode="require")

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-jaeger": {"kubernetes": {"jaeger": False}},
    "no-network-policies": {"kubernetes": {"network_policies": False}},
    "external": {"kubernetes": {"postgres": {"mode": "external", "host": "db.example.com"},
                                "redis": {"mode": "external", "external_url": "rediss://cache.example.com:6380"}}},
    "external-sentinel": {"kubernetes": {"redis": {"mode": "external",
                                                   "external_url": "redis+sentinel://s1:26379/mymaster"}}},
    "standalone": {"kubernetes": {"redis": {"mode": "standalone"}, "name": "flows", "namespace": "data"}},
}


@pytest.fixture(autouse=True)
def endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database module may still be a stub: its endpoints are given here (monitoring.py calls it lazily)."""
    monkeypatch.setattr(database, "database_endpoints", lambda config: ENDPOINTS)


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

    @pytest.mark.parametrize("config", ["default", "standalone"])
    def test_rules_read_the_stacks_namespace(self, config: str) -> None:
        namespace = config_of(config).kubernetes.namespace
        expr = next(r["expr"] for r in self.rules(config) if r["alert"] == "MonitoringTargetDown")
        assert f'namespace="{namespace}"' in expr

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
# The rules written for Kubernetes only: alert -> (eval time, series when it fires, series when it must not).
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
        "10m", {f'cnpg_collector_up{{{DB_POD}}}': "0x20", f'cnpg_collector_up{{{DB_POD2}}}': "0x20"},
        {f'cnpg_collector_up{{{DB_POD}}}': "0x20", f'cnpg_collector_up{{{DB_POD2}}}': "1x20"}),
    "PostgresConnectionsNearLimit": (
        "10m", {f'cnpg_backends_total{{{DB_POD},datname="prefect",state="idle"}}': "180x20",
                f'cnpg_pg_settings_setting{{{DB_POD},name="max_connections"}}': "200x20"},
        {f'cnpg_backends_total{{{DB_POD},datname="prefect",state="idle"}}': "20x20",
         f'cnpg_pg_settings_setting{{{DB_POD},name="max_connections"}}': "200x20"}),
    "PgBouncerClientsWaiting": (
        "10m", {f'cnpg_pgbouncer_pools_cl_waiting{{{POOLER_POD},database="prefect",user="prefect"}}': "4x20"},
        {f'cnpg_pgbouncer_pools_cl_waiting{{{POOLER_POD},database="prefect",user="prefect"}}': "0x20"}),
    "PgBouncerDown": (
        "10m", {f"cnpg_pgbouncer_up{{{POOLER_POD}}}": "0x20", f"cnpg_pgbouncer_up{{{SESSION_POD}}}": "1x20"},
        {f"cnpg_pgbouncer_up{{{POOLER_POD}}}": "1x20", f"cnpg_pgbouncer_up{{{SESSION_POD}}}": "1x20"}),
    "MonitoringTargetDown": (
        "10m", {'up{namespace="prefect",job="prefect-exporter",pod="prefect-exporter-1"}': "0x20"},
        {'up{namespace="prefect",job="prefect-exporter",pod="prefect-exporter-1"}': "1x20",
         'up{namespace="kube-system",job="kubelet"}': "0x20"}),
}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
class TestKubernetesRulesFire:
    def run(self, tmp_path: Path, alert: str, series: dict[str, str]) -> list[str]:
        # A one-hour backup age keeps the evaluated span (and promtool's time) short.
        config = load_config(target="kubernetes", backups={"max_age_hours": 1})
        [rule] = [m.obj for m in monitoring.monitoring_manifests(config, PlaceholderImages())
                  if m.kind == "PrometheusRule"]
        (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        wait = KUBERNETES_CASES[alert][0]
        tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
            "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [{"eval_time": wait, "alertname": alert, "exp_alerts": []}]}]}
        (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
        result = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True,
                                text=True, check=False)
        # Expecting no alert: success means quiet, failure lists what fired.
        return [] if result.returncode == 0 else [result.stdout + result.stderr]

    @pytest.mark.parametrize("alert", KUBERNETES_CASES)
    def test_fires(self, tmp_path: Path, alert: str) -> None:
        assert self.run(tmp_path, alert, KUBERNETES_CASES[alert][1])

    @pytest.mark.parametrize("alert", KUBERNETES_CASES)
    def test_stays_quiet(self, tmp_path: Path, alert: str) -> None:
        assert self.run(tmp_path, alert, KUBERNETES_CASES[alert][2]) == []


class TestServiceMonitors:
    def endpoint(self, name: str) -> dict[str, Any]:
        [endpoint] = one("ServiceMonitor", name)["spec"]["endpoints"]
        return endpoint

    @pytest.mark.parametrize(("name", "port", "path"), [("prefect-api", "http", "/api/metrics"),
                                                         ("prefect-exporter", "metrics", "/metrics")])
    def test_scrapes(self, name: str, port: str, path: str) -> None:
        assert (self.endpoint(name)["port"], self.endpoint(name)["path"]) == (port, path)

    @pytest.mark.parametrize(("name", "job"), [("prefect-api", "prefect-api"),
                                               ("prefect-exporter", "prefect-exporter")])
    def test_job_label_is_the_other_targets(self, name: str, job: str) -> None:
        assert {"action": "replace", "targetLabel": "job", "replacement": job} in self.endpoint(name)["relabelings"]

    def test_api_basic_auth_from_a_secret(self) -> None:
        auth = self.endpoint("prefect-api")["basicAuth"]
        assert {auth["username"]["name"], auth["password"]["name"]} == {"prefect-api-metrics-auth"}

    def test_api_auth_secret_is_declared_external(self) -> None:
        assert "prefect-api-metrics-auth" in render(config_of("default"), PlaceholderImages()).external_secrets

    def test_no_auth_secret_without_monitoring(self) -> None:
        assert monitoring.external_secrets(load_config(target="kubernetes", monitoring={"enabled": False})) == {}

    @pytest.mark.parametrize(("name", "component"), [("prefect-api", "api"), ("prefect-exporter", "exporter")])
    def test_selects_the_service(self, name: str, component: str) -> None:
        labels = one("ServiceMonitor", name)["spec"]["selector"]["matchLabels"]
        assert labels == {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": "prefect"}


class TestExporter:
    def args(self, config: str = "default") -> list[str]:
        name = f"{config_of(config).kubernetes.name}-exporter"
        [exporter] = containers(one("Deployment", name, config))
        return list(exporter["args"])

    def test_connects_to_the_primary_with_tls(self) -> None:
        assert {"--postgres=prefect-db-rw:5432/prefect", "--sslmode=require"} <= set(self.args())

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
        [secret] = [v["secret"] for v in volumes if "secret" in v]
        assert (secret["secretName"], {i["key"] for i in secret["items"]}) == (
            "prefect-stack-secrets", {"postgres_monitor", "redis_monitor"})

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
