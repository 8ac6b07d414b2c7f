"""The Kubernetes target's Prefect part: workloads, migration ordering, environments, deploy-time Secrets, the
kustomize tree and the repository's k8s/ folder."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from infra.backup import scheduler
from infra.backup.database import database_access
from infra.compose.project import placeholder_secrets
from infra.config import REPO_ROOT, StackConfig, load_config
from infra.errors import UserError
from infra.kubernetes import migrations, prefect, secrets
from infra.kubernetes.objects import Names
from infra.kubernetes.render import (
    OVERLAY,
    KubernetesImages,
    PlaceholderImages,
    Rendering,
    kustomize_tree,
    reference_rendering,
    render,
    write_tree,
)
from infra.secrets import SECRET_NAMES, load_secrets, mounted_secrets
from tests import kubernetes_checks as checks

AWS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-example-secret"}


def _config(**kubernetes: Any) -> StackConfig:
    return load_config(target="kubernetes", **({"kubernetes": kubernetes} if kubernetes else {}))


IRSA = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/prefect-backups"}
EXTERNAL_DB = {"postgres": {"mode": "external", "host": "db.example.com", "sslmode": "require"}}


def _find(rendering: Rendering, kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in rendering.objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


@pytest.fixture(scope="module")
def default() -> Rendering:
    return reference_rendering(_config())


class TestApiDeployment:
    def _deployment(self, rendering: Rendering) -> dict[str, Any]:
        return _find(rendering, "Deployment", Names.of(rendering.config).api)

    def test_replicas_come_from_the_model(self) -> None:
        rendering = reference_rendering(load_config(target="kubernetes", api={"replicas": 4}))
        assert self._deployment(rendering)["spec"]["replicas"] == 4

    def test_rollout_never_has_fewer_ready_replicas(self, default: Rendering) -> None:
        assert self._deployment(default)["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}

    def test_pre_stop_delay_lets_endpoints_drain(self, default: Rendering) -> None:
        api = self._deployment(default)["spec"]["template"]["spec"]["containers"][0]
        assert api["lifecycle"]["preStop"]["sleep"]["seconds"] >= 5

    def test_grace_period_covers_the_delay(self, default: Rendering) -> None:
        spec = self._deployment(default)["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > prefect.PRE_STOP_DELAY_S + 20

    @pytest.mark.parametrize(("probe", "path"), [("readinessProbe", "/api/ready"), ("livenessProbe", "/api/health"),
                                                 ("startupProbe", "/api/health")])
    def test_probes(self, default: Rendering, probe: str, path: str) -> None:
        api = self._deployment(default)["spec"]["template"]["spec"]["containers"][0]
        assert api[probe]["httpGet"]["path"] == path

    def test_api_runs_without_services(self, default: Rendering) -> None:
        # The project's server module: `prefect server start --no-services` with the request-id layer.
        api = self._deployment(default)["spec"]["template"]["spec"]["containers"][0]
        assert api["args"][api["args"].index("-m", api["args"].index("--")) + 1] == "infra.logs.api_server"

    def test_pods_wait_for_the_migration(self, default: Rendering) -> None:
        init = self._deployment(default)["spec"]["template"]["spec"]["initContainers"]
        assert [c["name"] for c in init] == ["wait-for-migrations"]
        assert init[0]["args"][-4:-2] == ["infra.kubernetes.migrations", "wait"]

    def test_spread_across_nodes_and_zones(self, default: Rendering) -> None:
        spread = self._deployment(default)["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}

    def test_no_credential_in_the_environment_listing(self, default: Rendering) -> None:
        api = self._deployment(default)["spec"]["template"]["spec"]["containers"][0]
        assert not any(e["name"].endswith(("PASSWORD", "AUTH_STRING", "URL")) for e in api.get("env", []))

    def test_tracing_points_at_the_stacks_jaeger(self) -> None:
        config = load_config(target="kubernetes", tracing={"enabled": True, "otlp_endpoint": "http://collector:4318"})
        api = self._deployment(reference_rendering(config))["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in api["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == "service.instance.id=$(POD_NAME)"
        assert env["OTEL_LOGS_EXPORTER"] == "otlp"

    def test_the_stacks_jaeger_gets_spans_but_no_log_records(self, default: Rendering) -> None:
        api = self._deployment(default)["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in api["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318")
        assert env["OTEL_LOGS_EXPORTER"] == "none"

    def test_single_replica_has_no_pdb(self) -> None:
        rendering = reference_rendering(load_config(target="kubernetes", api={"replicas": 1}))
        assert not [o for o in rendering.objects() if o["kind"] == "PodDisruptionBudget"
                    and o["metadata"]["name"] == Names.of(rendering.config).api]


class TestServicesDeployment:
    def _deployment(self, rendering: Rendering) -> dict[str, Any]:
        return _find(rendering, "Deployment", Names.of(rendering.config).services)

    def _container(self, rendering: Rendering) -> dict[str, Any]:
        return dict(self._deployment(rendering)["spec"]["template"]["spec"]["containers"][0])

    def test_two_replicas_by_default_with_a_disruption_budget(self, default: Rendering) -> None:
        """One services pod is a single point of failure on a cluster (node loss, drain): Docket coordinates two."""
        assert self._deployment(default)["spec"]["replicas"] == 2
        assert _find(default, "PodDisruptionBudget", Names.of(default.config).services)["spec"]["maxUnavailable"] == 1

    def test_replicas_set_in_the_model_win(self) -> None:
        rendering = reference_rendering(load_config(target="kubernetes", services={"replicas": 1}))
        assert self._deployment(rendering)["spec"]["replicas"] == 1
        assert not [o for o in rendering.objects() if o["kind"] == "PodDisruptionBudget"
                    and o["metadata"]["name"] == Names.of(rendering.config).services]

    def test_a_replica_must_stay_up_before_it_counts(self, default: Rendering) -> None:
        assert self._deployment(default)["spec"]["minReadySeconds"] >= 10

    @pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe"])
    def test_probes_read_the_heartbeat_of_the_services_process_itself(self, default: Rendering, probe: str) -> None:
        """Not a TCP connect to the pooler: a pooler outage must not restart them, a hung event loop must."""
        services = self._container(default)
        words = [*services.get("command", []), *services.get("args", [])]
        run = words[words.index("infra.containers.services"):]
        check = services[probe]["exec"]["command"]
        assert run[:2] == ["infra.containers.services", "run"]
        assert check[check.index("infra.containers.services"):][:2] == ["infra.containers.services", "check"]
        heartbeat = run[run.index("--heartbeat") + 1]
        assert check[check.index("--heartbeat") + 1] == heartbeat
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in services["volumeMounts"]}
        assert any(heartbeat.startswith(path + "/") and not read_only for path, read_only in mounts.items())

    def test_the_liveness_probe_allows_the_check_interval(self, default: Rendering) -> None:
        probe = self._container(default)["livenessProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 60


class TestIngress:
    def test_tls_for_the_host(self, default: Rendering) -> None:
        ingress = _find(default, "Ingress", Names.of(default.config).api)
        assert ingress["spec"]["tls"] == [{"hosts": ["prefect.example.com"], "secretName": "prefect-tls"}]

    def test_cert_manager_issues_it(self, default: Rendering) -> None:
        ingress = _find(default, "Ingress", Names.of(default.config).api)
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"

    def test_websockets_stay_open(self, default: Rendering) -> None:
        annotations = _find(default, "Ingress", Names.of(default.config).api)["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"

    def test_off(self) -> None:
        rendering = reference_rendering(_config(ingress={"enabled": False}))
        assert not [o for o in rendering.objects() if o["kind"] == "Ingress"]


ENVOY = {"enabled": True, "data_plane_namespace": "envoy-gateway-system",
         "data_plane_pod_labels": {"gateway.envoyproxy.io/owning-gateway-name": "gateway"}}


def _proxy(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """A Gateway's proxy Deployment (its data plane) in ``namespace``."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "proxy", "namespace": namespace, "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": []}}}}


@pytest.fixture(scope="module")
def gateway() -> Rendering:
    return reference_rendering(_config(gateway=ENVOY))


class TestGatewayRoute:
    def route(self, rendering: Rendering) -> dict[str, Any]:
        return _find(rendering, "HTTPRoute", Names.of(rendering.config).api)

    def test_off_by_default(self, default: Rendering) -> None:
        assert not [o for o in default.objects() if o["kind"] == "HTTPRoute"]

    def test_attaches_to_the_gateways_https_listener(self, gateway: Rendering) -> None:
        assert self.route(gateway)["spec"]["parentRefs"] == [{
            "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gateway", "namespace": "gateway-system",
            "sectionName": "https"}]

    def test_answers_the_ingress_host_unless_told(self, gateway: Rendering) -> None:
        assert self.route(gateway)["spec"]["hostnames"] == ["prefect.example.com"]
        told = reference_rendering(_config(gateway={**ENVOY, "hostnames": ["flows.example.org"]}))
        assert self.route(told)["spec"]["hostnames"] == ["flows.example.org"]

    def test_every_rule_reaches_the_api_service(self, gateway: Rendering) -> None:
        service = _find(gateway, "Service", "prefect-api")
        ports = {p["port"] for p in service["spec"]["ports"]}
        backends = [b for rule in self.route(gateway)["spec"]["rules"] for b in rule["backendRefs"]]
        assert backends and all(b["name"] == "prefect-api" and b["port"] in ports for b in backends)

    def test_websockets_have_no_deadline(self, gateway: Rendering) -> None:
        [rule] = [r for r in self.route(gateway)["spec"]["rules"] if r["name"] == "websockets"]
        assert {m["path"]["value"] for m in rule["matches"]} == {"/api/events/in", "/api/events/out", "/api/logs/out"}
        assert rule["timeouts"] == {"request": "0s"}

    def test_other_requests_get_the_load_balancers_server_timeout(self, gateway: Rendering) -> None:
        [rule] = [r for r in self.route(gateway)["spec"]["rules"] if r["name"] == "api"]
        assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
        assert rule["timeouts"] == {"request": "1m"}

    @pytest.mark.parametrize(("seconds", "duration"), [(60, "1m"), (90, "1m30s"), (3600, "1h"), (45, "45s"),
                                                        (3661, "1h1m1s")])
    def test_gateway_durations(self, seconds: int, duration: str) -> None:
        assert prefect.gateway_duration(seconds) == duration

    def test_a_kustomize_component_applied_with_the_apps(self, gateway: Rendering) -> None:
        [manifest] = [m for m in gateway.manifests if m.kind == "HTTPRoute"]
        assert (manifest.component, manifest.phase) == ("gateway-api", "apps")

    def test_the_data_plane_reaches_the_api(self, gateway: Rendering) -> None:
        api = _find(gateway, "Deployment", "prefect-api")
        proxy = _proxy("envoy-gateway-system", {"gateway.envoyproxy.io/owning-gateway-name": "gateway"})
        assert checks.flow_problems(gateway.objects(), proxy, api, 4200) == []

    @pytest.mark.parametrize(("namespace", "labels"), [
        ("envoy-gateway-system", {"gateway.envoyproxy.io/owning-gateway-name": "other"}),
        ("gateway-system", {"gateway.envoyproxy.io/owning-gateway-name": "gateway"})])
    def test_other_pods_stay_out(self, gateway: Rendering, namespace: str, labels: dict[str, str]) -> None:
        api = _find(gateway, "Deployment", "prefect-api")
        assert checks.flow_problems(gateway.objects(), _proxy(namespace, labels), api, 4200) != []

    def test_the_gateways_namespace_by_default(self) -> None:
        rendering = reference_rendering(_config(gateway={"enabled": True}))
        api = _find(rendering, "Deployment", "prefect-api")
        assert checks.flow_problems(rendering.objects(), _proxy("gateway-system", {"app": "any"}), api, 4200) == []

    def test_the_ingress_controller_is_shut_out_without_the_ingress(self) -> None:
        rendering = reference_rendering(_config(gateway=ENVOY, ingress={"enabled": False}))
        api = _find(rendering, "Deployment", "prefect-api")
        assert checks.flow_problems(rendering.objects(), _proxy("ingress-nginx", {"app": "nginx"}), api, 4200) != []
        assert not [o for o in rendering.objects() if o["kind"] == "Ingress"]

    def test_the_ui_uses_the_routes_host_without_the_ingress(self) -> None:
        config = _config(gateway={**ENVOY, "hostnames": ["*.example.org", "flows.example.org"]},
                         ingress={"enabled": False})
        assert prefect.public_api_url(config) == "https://flows.example.org/api"

    def test_a_data_plane_in_the_stacks_namespace_needs_its_labels(self) -> None:
        with pytest.raises(UserError, match="data_plane_pod_labels"):
            _config(gateway={"enabled": True, "namespace": None})

    def test_a_bad_host_name_is_refused(self) -> None:
        with pytest.raises(UserError, match="hostnames"):
            _config(gateway={**ENVOY, "hostnames": ["Prefect_UI.example.com"]})


class TestMigrationJob:
    def _jobs(self, rendering: Rendering) -> list[dict[str, Any]]:
        return [o for o in rendering.objects() if o["kind"] == "Job"]

    def test_one_job_before_the_apps(self, default: Rendering) -> None:
        # The other Job, the work pools' provisioning, runs at every deploy after the apps (test_kubernetes_workers).
        phases = [m.phase for m in default.manifests if m.kind == "Job" and not m.rerun]
        assert phases == ["migrate"]

    def test_named_after_the_image(self) -> None:
        config = _config()
        one = prefect.migration_job_name(config, "registry/prefect-stack/prefect:aaaa")
        other = prefect.migration_job_name(config, "registry/prefect-stack/prefect:bbbb")
        assert one != other
        assert one == prefect.migration_job_name(config, "registry/prefect-stack/prefect:aaaa")

    def test_name_is_a_dns_label_with_the_version(self) -> None:
        name = prefect.migration_job_name(_config(), "x" * 300)
        assert len(name) <= 63 and name.startswith("prefect-migrate-3-")

    def _container(self, rendering: Rendering) -> dict[str, Any]:
        [migrate] = self._jobs(rendering)[0]["spec"]["template"]["spec"]["containers"]
        return migrate

    def _volumes(self, rendering: Rendering) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in self._jobs(rendering)[0]["spec"]["template"]["spec"]["volumes"]}

    def _program(self, rendering: Rendering) -> list[str]:
        """What the entrypoint runs: the arguments after its ``--``."""
        args = self._container(rendering)["args"]
        return args[args.index("--") + 1:]

    @pytest.mark.parametrize("case", ["cnpg", "external"])
    def test_mounts_no_superuser_secret(self, case: str) -> None:
        """The Job needs no superuser: neither CloudNativePG's superuser Secret nor the generated superuser
        password from the stack's Secret is in the pod."""
        rendering = reference_rendering(_config(**(EXTERNAL_DB if case == "external" else {})))
        names = Names.of(rendering.config)
        secret_volumes = [v["secret"] for v in self._volumes(rendering).values() if "secret" in v]
        assert names.secret_db_superuser not in {v["secretName"] for v in secret_volumes}
        assert "postgres_superuser" not in {item["key"] for v in secret_volumes for item in v.get("items", [])}

    def test_owner_password_from_the_app_secret(self, default: Rendering) -> None:
        """The Secret CloudNativePG sets the owner's password from (its managed role), as the file migrate reads."""
        owner = self._volumes(default)["owner"]["secret"]
        assert (owner["secretName"], owner["items"]) == (Names.of(default.config).secret_db_app,
                                                         [{"key": "password", "path": "postgres_prefect"}])

    def test_external_owner_password_from_the_stack_secret_alone(self) -> None:
        rendering = reference_rendering(_config(**EXTERNAL_DB))
        owner = self._volumes(rendering)["owner"]["secret"]
        assert (owner["secretName"], owner["items"]) == (Names.of(rendering.config).secret_stack,
                                                         [{"key": "postgres_prefect", "path": "postgres_prefect"}])

    def test_runs_the_owner_mode_as_the_owner(self, default: Rendering) -> None:
        program = self._program(default)
        assert program[1:4] == ["-m", "infra.containers.migrate", "--as-owner"]
        assert program[program.index("--user") + 1] == default.config.postgres.user

    @pytest.mark.parametrize(("postgres", "monitoring", "granted"), [
        ({}, False, True),                  # CloudNativePG makes prefect_monitor whatever monitoring says
        (EXTERNAL_DB["postgres"], True, True),  # the exporter reads Prefect's tables as prefect_monitor
        (EXTERNAL_DB["postgres"], False, False),  # nothing reads them: no role to require of the server's operator
    ])
    def test_monitor_grants(self, postgres: dict[str, Any], monitoring: bool, granted: bool) -> None:
        config = load_config(target="kubernetes", monitoring={"enabled": monitoring},
                             kubernetes={"postgres": postgres} if postgres else {})
        assert ("--monitor-grants" in self._program(reference_rendering(config))) is granted

    def test_the_program_accepts_the_command(self, default: Rendering, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
        """The rendered command line, run through infra.containers.migrate: the owner mode, connecting as the owner
        to the primary with the Cluster's CA, grants, then Prefect's migration. The Secret volume is stood in for by
        a directory holding only the owner's password, as the pod's mount does."""
        from infra.containers import migrate as container_migrate

        (tmp_path / "postgres_prefect").write_text("owner-password")
        argv = self._program(default)[3:]
        argv[argv.index("--secrets") + 1] = str(tmp_path)

        calls: list[tuple[str, ...]] = []

        def connected(connect: object, dbname: str, where: str) -> bool:
            calls.append(("connect", dbname, where))
            return True

        def granted(connect: object, database: str, owner: str) -> bool:
            calls.append(("grant", database, owner))
            return True

        def schema() -> int:
            calls.append(("schema",))
            return 0

        monkeypatch.setattr(container_migrate, "_wait_until_connected", connected)
        monkeypatch.setattr(container_migrate, "grant_as_owner", granted)
        monkeypatch.setattr("infra.database.migrate.main", schema)
        monkeypatch.setattr(container_migrate, "ensure_database", lambda *a, **k: pytest.fail("superuser path taken"))
        assert container_migrate.main(argv) == 0
        assert calls == [("connect", "prefect", "prefect-db-rw:5432"), ("grant", "prefect", "prefect"), ("schema",)]

    def test_the_owner_verifies_the_server_against_the_clusters_ca(self, default: Rendering) -> None:
        migrate = self._container(default)
        command = [*migrate.get("command", []), *migrate.get("args", [])]
        assert command[command.index("--sslmode") + 1] == "verify-ca"
        root_cert = command[command.index("--sslrootcert") + 1]
        assert any(root_cert.startswith(m["mountPath"] + "/") and m["name"] == "db-ca"
                   for m in migrate["volumeMounts"])


class TestBackupCronJob:
    def _cronjob(self, rendering: Rendering) -> dict[str, Any]:
        return _find(rendering, "CronJob", Names.of(rendering.config).backup)

    def test_runs_at_the_models_schedule_in_utc(self) -> None:
        cron = self._cronjob(reference_rendering(load_config(target="kubernetes", backups={"schedule": "03:05"})))
        assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == ("5 3 * * *", "Etc/UTC")

    def test_runs_never_overlap(self, default: Rendering) -> None:
        assert self._cronjob(default)["spec"]["concurrencyPolicy"] == "Forbid"

    def test_runs_the_same_code_once(self, default: Rendering) -> None:
        container = self._cronjob(default)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][1:] == ["-m", "infra.backup.scheduler", "--once"]

    def test_scratch_is_an_ephemeral_volume(self, default: Rendering) -> None:
        spec = self._cronjob(default)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        scratch = next(v for v in spec["volumes"] if v["name"] == "scratch")
        assert scratch["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "20Gi"

    @pytest.mark.parametrize(("volume", "path"), [("scratch", "/var/lib/prefect-stack/scratch"), ("tmp", "/tmp")])
    def test_verifications_temporary_server_has_writable_room(self, default: Rendering, volume: str,
                                                              path: str) -> None:
        """Its data directory in the scratch volume (where the code's scratch_dir is), its socket in /tmp: the
        root filesystem stays read-only."""
        container = self._cronjob(default)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        mounted = {m["name"]: m for m in container["volumeMounts"]}
        assert mounted[volume]["mountPath"] == path and not mounted[volume].get("readOnly")
        assert container["securityContext"]["readOnlyRootFilesystem"] is True

    def test_the_scratch_volume_is_the_code_s_scratch_dir(self, default: Rendering) -> None:
        effective = yaml.safe_load(_find(default, "ConfigMap", Names.of(default.config).backup)["data"][
            "stack.effective.yaml"])
        assert StackConfig(**effective).scratch_dir == Path("/var/lib/prefect-stack/scratch")

    def test_memory_holds_a_temporary_server_and_api(self, default: Rendering) -> None:
        container = self._cronjob(default)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"]["memory"] == "1Gi"
        assert container["resources"]["limits"]["memory"] == "2Gi"

    def test_s3_keys_come_as_a_credentials_file(self, default: Rendering) -> None:
        container = self._cronjob(default)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["AWS_SHARED_CREDENTIALS_FILE"].endswith("/credentials")
        assert "AWS_SECRET_ACCESS_KEY" not in env

    def test_mounts_only_the_secrets_the_backup_reads(self, default: Rendering) -> None:
        """Least privilege: a leak of the backup pod must not open the API, Redis or Grafana."""
        volumes = self._cronjob(default)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        stack = next(v for v in volumes if v["name"] == "secrets")["secret"]
        assert {item["key"] for item in stack["items"]} == {"postgres_superuser", "postgres_prefect",
                                                            "backup_encryption"}

    def test_iam_role_mounts_no_keys(self) -> None:
        cron = self._cronjob(reference_rendering(_config(s3_credentials="iam-role")))
        volumes = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        assert "s3" not in {v["name"] for v in volumes}

    def test_iam_role_runs_as_a_service_account_of_its_own_bound_to_the_cloud_role(self) -> None:
        """Not the namespace's default service account: the cloud role is bound to this one by its annotation."""
        rendering = reference_rendering(_config(s3_credentials="iam-role", s3_identity_annotations=IRSA,
                                                s3_identity_pod_labels={"azure.workload.identity/use": "true"}))
        name = Names.of(rendering.config).backup
        account = _find(rendering, "ServiceAccount", name)
        assert account["metadata"]["annotations"] == IRSA
        assert account["automountServiceAccountToken"] is False
        template = self._cronjob(rendering)["spec"]["jobTemplate"]["spec"]["template"]
        assert template["spec"]["serviceAccountName"] == name
        assert template["spec"]["automountServiceAccountToken"] is False
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"

    def test_the_clusters_service_account_carries_the_binding_for_its_archive(self) -> None:
        config = load_config(target="kubernetes", backups={"physical": {"enabled": True}},
                             kubernetes={"s3_credentials": "iam-role", "s3_identity_annotations": IRSA})
        cluster = _find(reference_rendering(config), "Cluster", Names.of(config).database)
        assert cluster["spec"]["serviceAccountTemplate"] == {"metadata": {"annotations": IRSA}}

    def test_keys_mode_renders_no_service_account(self, default: Rendering) -> None:
        assert not [o for o in default.objects() if o["kind"] == "ServiceAccount"
                    and o["metadata"]["labels"]["app.kubernetes.io/component"] == "backup"]
        spec = self._cronjob(default)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert "serviceAccountName" not in spec

    def test_schedule_off_suspends_it(self) -> None:
        cron = self._cronjob(reference_rendering(load_config(target="kubernetes",
                                                             backups={"schedule_enabled": False})))
        assert cron["spec"]["suspend"] is True

    def test_its_configuration_is_the_clusters(self, default: Rendering) -> None:
        config_map = _find(default, "ConfigMap", Names.of(default.config).backup)
        effective = yaml.safe_load(config_map["data"][prefect.EFFECTIVE_CONFIG])
        assert StackConfig(**effective).target == "kubernetes"


class TestEnvironment:
    secrets = placeholder_secrets()

    def _env(self, role: str, **kubernetes: Any) -> dict[str, str]:
        return prefect.prefect_environment(_config(**kubernetes), self.secrets, role)

    @pytest.mark.parametrize(("role", "host"), [("api", "prefect-pooler-transaction"),
                                                ("services", "prefect-pooler-session"), ("migrate", "prefect-db-rw")])
    def test_each_role_its_endpoint(self, role: str, host: str) -> None:
        assert f"@{host}:5432/prefect" in self._env(role)["PREFECT_SERVER_DATABASE_CONNECTION_URL"]

    def test_cnpg_connections_verify_the_clusters_ca(self) -> None:
        env = self._env("api")
        assert env["PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_ENABLED"] == "true"
        assert env["PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_CA_FILE"].endswith("/ca.crt")

    def test_external_require_encrypts(self) -> None:
        url = self._env("api", **EXTERNAL_DB)["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
        assert url.endswith("@db.example.com:5432/prefect?ssl=require")

    def test_the_api_is_called_through_its_service(self) -> None:
        assert self._env("services")["PREFECT_API_URL"] == "http://prefect-api:4200/api"

    def test_the_ui_uses_the_public_url(self) -> None:
        assert self._env("api")["PREFECT_SERVER_UI_API_URL"] == "https://prefect.example.com/api"

    def test_replicas_neither_migrate_nor_register(self) -> None:
        env = self._env("api")
        assert (env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"], env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"]) == (
            "false", "false")

    def test_docket_uses_redis(self) -> None:
        assert "PREFECT_SERVER_DOCKET_URL" in self._env("services")


class TestSecretObjects:
    secrets = placeholder_secrets()

    def _objects(self, config: StackConfig, environ: dict[str, str] = AWS) -> dict[str, dict[str, str]]:
        return {o["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in o["data"].items()}
                for o in secrets.secret_objects(config, self.secrets, environ)}

    def test_every_generated_secret_is_in_the_stack_secret(self) -> None:
        stack = self._objects(_config())[Names.of(_config()).secret_stack]
        assert stack["redis"] == self.secrets.get("redis")

    def test_cnpg_gets_basic_auth_secrets(self) -> None:
        app = self._objects(_config())[Names.of(_config()).secret_db_app]
        assert app == {"username": "prefect", "password": self.secrets.get("postgres_prefect")}

    def test_cnpg_monitor_role_secret_from_the_generated_secret(self) -> None:
        monitor = self._objects(_config())[Names.of(_config()).secret_db_monitor]
        assert monitor == {"username": "prefect_monitor", "password": self.secrets.get("postgres_monitor")}

    @pytest.mark.parametrize("name", ["secret_db_app", "secret_db_monitor"])
    def test_managed_role_secrets(self, name: str) -> None:
        """basic-auth (what managed.roles' passwordSecret requires), labelled so a changed password is applied
        at once."""
        config = _config()
        made = {o["metadata"]["name"]: o for o in secrets.secret_objects(config, self.secrets, AWS)}
        secret = made[getattr(Names.of(config), name)]
        assert (secret["type"], secret["metadata"]["labels"]["cnpg.io/reload"]) == ("kubernetes.io/basic-auth",
                                                                                    "true")

    def test_external_gets_no_managed_role_secrets(self) -> None:
        config = _config(**EXTERNAL_DB)
        names = Names.of(config)
        assert not {names.secret_db_app, names.secret_db_monitor} & set(self._objects(config))

    def test_the_environment_files_are_json(self) -> None:
        env = self._objects(_config())[Names.of(_config()).secret_prefect_env]
        assert json.loads(env["api.env.json"])["PREFECT_API_AUTH_STRING"] == self.secrets.get("prefect_auth")

    def test_s3_keys_from_the_shell(self) -> None:
        s3 = self._objects(_config())[Names.of(_config()).secret_s3]
        assert s3["ACCESS_KEY_ID"] == AWS["AWS_ACCESS_KEY_ID"]

    def test_missing_s3_keys_name_the_fix(self) -> None:
        with pytest.raises(UserError, match="AWS_ACCESS_KEY_ID") as caught:
            self._objects(_config(), environ={})
        assert "iam-role" in caught.value.fix

    def test_iam_role_needs_no_keys(self) -> None:
        assert Names.of(_config()).secret_s3 not in self._objects(_config(s3_credentials="iam-role"), environ={})

    def test_every_made_secret_is_declared(self) -> None:
        config = _config()
        made = set(self._objects(config))
        assert made <= set(reference_rendering(config).external_secrets)


class TestNamespace:
    def test_pod_security_restricted(self, default: Rendering) -> None:
        namespace = _find(default, "Namespace", "prefect")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


class TestNetworkPolicies:
    def _policies(self, rendering: Rendering) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in rendering.objects() if o["kind"] == "NetworkPolicy"}

    def test_default_deny_selects_every_pod(self, default: Rendering) -> None:
        deny = self._policies(default)["prefect-default-deny"]["spec"]
        assert (deny["podSelector"], deny["ingress"], deny["egress"]) == ({}, [], [])

    def test_api_reachable_from_the_ingress_controller(self, default: Rendering) -> None:
        rule = self._policies(default)["prefect-api"]["spec"]["ingress"][0]
        namespaces = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                      for p in rule["from"] if "namespaceSelector" in p]
        assert "ingress-nginx" in namespaces

    def test_external_database_reached_on_its_port(self) -> None:
        config = _config(postgres={"mode": "external", "host": "db.example.com", "port": 6432})
        egress = self._policies(reference_rendering(config))["prefect-migrate"]["spec"]["egress"]
        assert egress[0]["ports"] == [{"protocol": "TCP", "port": 6432}]

    def test_off(self) -> None:
        assert not self._policies(reference_rendering(_config(network_policies=False)))

    def _worker_reaches_the_api(self, rendering: Rendering) -> bool:
        """A worker Deployment in namespace ``flows``, labelled app: prefect-worker, calling the API pods."""
        worker = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "worker", "namespace": "flows", "labels": {"app": "prefect-worker"}},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "prefect-worker"}},
                           "template": {"metadata": {"labels": {"app": "prefect-worker"}}, "spec": {"containers": []}}}}
        api = _find(rendering, "Deployment", "prefect-api")
        return checks.flow_problems(rendering.objects(), worker, api, 4200) == []

    def test_in_cluster_clients_are_shut_out_unless_named(self, default: Rendering) -> None:
        assert not self._worker_reaches_the_api(default)

    @pytest.mark.parametrize("client", [{"namespace": "flows", "pod_labels": {"app": "prefect-worker"}},
                                        {"namespace": "flows"}])
    def test_named_client_namespaces_and_labels_reach_the_api(self, client: dict[str, Any]) -> None:
        assert self._worker_reaches_the_api(reference_rendering(_config(api_clients=[client])))

    @pytest.mark.parametrize("client", [{"namespace": "flows", "pod_labels": {"app": "other"}},
                                        {"namespace": "elsewhere"}, {"pod_labels": {"app": "prefect-worker"}}])
    def test_other_clients_stay_out(self, client: dict[str, Any]) -> None:
        assert not self._worker_reaches_the_api(reference_rendering(_config(api_clients=[client])))

    def test_a_host_network_ingress_controller_by_address_range(self) -> None:
        rendering = reference_rendering(_config(api_client_cidrs=["10.0.0.0/16"]))
        sources = self._policies(rendering)["prefect-api"]["spec"]["ingress"][0]["from"]
        assert {"ipBlock": {"cidr": "10.0.0.0/16"}} in sources

    def test_a_bad_client_range_is_refused(self) -> None:
        with pytest.raises(UserError, match="api_client_cidrs"):
            _config(api_client_cidrs=["10.0.0.0/40"])

    def _outbound(self, rendering: Rendering) -> list[dict[str, Any]]:
        egress = self._policies(rendering)["prefect-services"]["spec"]["egress"]
        return [rule for rule in egress if any("ipBlock" in peer for peer in rule.get("to", []))]

    def test_automations_reach_webhooks_and_mail_outside_the_cluster(self, default: Rendering) -> None:
        """Prefect's actions service (webhooks, Slack, e-mail) runs in the services pods: without a way out its
        notifications fail silently."""
        [rule] = self._outbound(default)
        assert rule["ports"] == [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 587}]
        assert rule["to"] == [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}},
            {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7"]}}]

    def test_the_api_pods_get_no_way_out(self, default: Rendering) -> None:
        egress = self._policies(default)["prefect-api"]["spec"]["egress"]
        assert not [rule for rule in egress if any("ipBlock" in peer for peer in rule.get("to", []))]

    def test_outbound_from_the_model(self) -> None:
        config = _config(services_outbound={"ports": [8443], "cidrs": ["203.0.113.0/24"], "except_cidrs": []})
        [rule] = self._outbound(reference_rendering(config))
        assert rule == {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 8443}]}

    def test_no_ports_no_way_out(self) -> None:
        assert self._outbound(reference_rendering(_config(services_outbound={"ports": []}))) == []

    @pytest.mark.parametrize(("outbound", "message"), [
        ({"cidrs": ["0.0.0.0/33"]}, "not an address range"),
        ({"cidrs": ["203.0.113.0/24"], "except_cidrs": ["10.0.0.0/8"]}, "lies in none of cidrs"),
        ({"ports": [0]}, "not between 1 and 65535"),
    ])
    def test_bad_outbound_is_refused_naming_it(self, outbound: dict[str, Any], message: str) -> None:
        with pytest.raises(UserError, match=message):
            _config(services_outbound=outbound)


class TestKustomizeTree:
    def test_each_object_one_file_named_for_it_and_its_kind(self, default: Rendering) -> None:
        tree = kustomize_tree(default)
        assert "base/prefect-api-deployment.yaml" in tree

    def test_optional_features_are_components(self, default: Rendering) -> None:
        tree = kustomize_tree(default)
        component = yaml.safe_load(tree["components/network-policies/kustomization.yaml"])
        assert component["kind"] == "Component"

    def test_the_overlay_builds_to_the_rendering(self, default: Rendering, tmp_path: Path) -> None:
        write_tree(default, tmp_path)
        built = subprocess.run(["kubectl", "kustomize", str(tmp_path / OVERLAY)], capture_output=True, text=True,
                               check=True, timeout=60).stdout
        key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
        assert sorted(yaml.safe_load_all(built), key=key) == sorted(default.objects(), key=key)

    def test_stale_files_are_removed(self, default: Rendering, tmp_path: Path) -> None:
        stale = tmp_path / "base" / "gone-deployment.yaml"
        stale.parent.mkdir(parents=True)
        stale.write_text("{}\n")
        write_tree(default, tmp_path)
        assert not stale.exists()

    def test_the_repository_copy_is_the_rendering_of_the_default_configuration(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("PREFECT_STACK_CONFIG", raising=False)
        expected = kustomize_tree(reference_rendering(load_config(target="kubernetes")))
        actual = {str(p.relative_to(REPO_ROOT / "k8s")): p.read_text()
                  for p in (REPO_ROOT / "k8s").rglob("*") if p.is_file() and p.parent != REPO_ROOT / "k8s"}
        assert actual == expected, "k8s/ is stale: run `invoke render --target kubernetes`"

    def test_real_images_are_pinned_by_content(self) -> None:
        images = KubernetesImages(system="r/prefect-stack/system:abc", prefect="r/prefect-stack/prefect:def")
        api = _find(render(_config(), images), "Deployment", "prefect-api")
        assert api["spec"]["template"]["spec"]["containers"][0]["image"] == images.prefect

    def test_placeholders_are_not_latest(self) -> None:
        assert not PlaceholderImages().prefect.endswith(":latest")


class TestWaitForMigrations:
    def test_head_is_a_revision(self) -> None:
        assert len(migrations.head_revision()) == 12

    def test_returns_once_the_schema_is_at_head(self) -> None:
        seen = iter([None, "old", "old", "head"])
        lines: list[str] = []
        assert migrations.wait_for_head(lambda: next(seen), "head", 60, lines.append, clock=lambda: 0.0,
                                        pause=lambda s: None)
        assert lines[-1] == "schema at head: ready"

    def test_gives_up_naming_the_job(self) -> None:
        clock = iter(range(0, 1000, 10))
        lines: list[str] = []
        assert not migrations.wait_for_head(lambda: "old", "head", 30, lines.append,
                                            clock=lambda: float(next(clock)), pause=lambda s: None)
        assert "migration Job" in lines[-1]

    def test_libpq_url_requires_tls(self) -> None:
        assert (migrations.libpq_url("postgresql+asyncpg://u:p@h:5432/db", {})
                == "postgresql://u:p@h:5432/db?sslmode=require")

    def test_libpq_url_verifies_the_server_as_prefect_does(self) -> None:
        """The init container checks the server with Prefect's own TLS settings (the Cluster's CA)."""
        env = prefect.prefect_environment(_config(), placeholder_secrets(), "api")
        url = migrations.libpq_url(env["PREFECT_SERVER_DATABASE_CONNECTION_URL"], env)
        assert url.endswith("?sslmode=verify-ca&sslrootcert=%2Fetc%2Fprefect-stack%2Fdb-ca%2Fca.crt")


class TestBackupCodeOnKubernetes:
    def test_superuser_to_the_primary_over_tls(self) -> None:
        access = database_access(_config(), placeholder_secrets())
        assert (access.host, access.port, access.user, access.sslmode) == ("prefect-db-rw", 5432, "postgres",
                                                                           "verify-ca")
        assert access.env()["PGSSLROOTCERT"] == access.sslrootcert == "/etc/prefect-stack/db-ca/ca.crt"

    def test_scheduler_once_reports_the_run(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(scheduler, "run_once", lambda config: False)
        assert scheduler.main(["--once"]) == 1

    def _mounted(self, directory: Path) -> Path:
        """The stack Secret as kubelet mounts it: files 0440 (fsGroup), a read-only directory."""
        directory.mkdir()
        for name in SECRET_NAMES:
            (directory / name).write_text(placeholder_secrets().get(name) + "\n")
            (directory / name).chmod(0o440)
        directory.chmod(0o555)
        return directory

    def test_mounted_secret_volume_is_readable_as_it_is(self, tmp_path: Path) -> None:
        directory = self._mounted(tmp_path / "secrets")
        assert mounted_secrets(directory).get("redis") == placeholder_secrets().get("redis")
        with pytest.raises(UserError, match="others can read it"):
            load_secrets(directory)  # the host's rule, which a Secret volume cannot meet

    def test_a_secret_not_given_to_the_workload_is_refused_by_name_when_used(self, tmp_path: Path) -> None:
        directory = self._mounted(tmp_path / "secrets")
        directory.chmod(0o755)
        (directory / "redis").unlink()
        secrets = mounted_secrets(directory)
        assert secrets.get("postgres_superuser") == placeholder_secrets().get("postgres_superuser")
        with pytest.raises(UserError, match="secret redis is not given to this workload"):
            secrets.get("redis")

    def test_an_empty_key_names_the_fix(self, tmp_path: Path) -> None:
        directory = self._mounted(tmp_path / "secrets")
        directory.chmod(0o755)
        (directory / "redis").chmod(0o644)
        (directory / "redis").write_text("\n")
        with pytest.raises(UserError, match="secret redis is empty"):
            mounted_secrets(directory)

    def test_the_cronjob_reads_the_mounted_secret(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self._mounted(tmp_path / "secrets")
        seen: list[str] = []

        def backup_job(config: StackConfig, generated: Any, progress: Any) -> None:
            seen.append(generated.get("postgres_superuser"))
            raise UserError("stop here")

        monkeypatch.setattr(scheduler, "backup_job", backup_job)
        config = load_config(target="kubernetes", local={"state_dir": str(tmp_path)})
        assert scheduler.run_once(config) is False
        assert seen == [placeholder_secrets().get("postgres_superuser")]

    def test_scheduler_rejects_unknown_arguments(self) -> None:
        assert scheduler.main(["--twice"]) == 2


def test_the_api_admin_is_only_in_the_secrets_the_prefect_processes_read() -> None:
    """No Secret made for Prometheus holds the admin's credential (the API is not scraped on Kubernetes)."""
    config = _config()
    generated = dataclasses.replace(placeholder_secrets(), prefect_auth=SecretStr("admin:s3cret"))
    made = {o["metadata"]["name"]: o for o in secrets.secret_objects(config, generated, AWS)}
    holding = [name for name, obj in made.items()
               if any("s3cret" in base64.b64decode(v).decode() for v in obj["data"].values())]
    names = Names.of(config)
    assert sorted(holding) == sorted([names.secret_stack, names.secret_prefect_env])
    assert not set(names.retired_secrets) & set(made)


def test_no_container_of_ours_trusts_the_database_server_unverified(default: Rendering) -> None:
    """With CloudNativePG every client checks the Cluster's CA: no container settles for an encrypted but
    unverified connection (sslmode require)."""
    for obj in default.objects():
        spec = obj.get("spec", {})
        pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            words = [*c.get("command", []), *c.get("args", [])]
            modes = [w.partition("=")[2] for w in words if w.startswith("--sslmode=")]
            modes += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--sslmode"]
            modes += [e["value"] for e in c.get("env", []) if e["name"] == "PGSSLMODE"]
            assert set(modes) <= {"verify-ca", "verify-full"}, (obj["metadata"]["name"], c["name"], modes)
