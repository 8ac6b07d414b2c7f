"""The stack's optional Loki, rendered for compose and Kubernetes (its image cannot be pulled here: rendered and
checked offline, as Grafana and Jaeger are): its configuration from the model, hardening, where the Prefect
processes send their log records, Grafana's datasource linking a trace id to Jaeger, and the network flows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.compose.project import BACKEND, ComposeProject, write_project
from infra.config import LOKI_IMAGE, StackConfig, load_config
from infra.kubernetes import monitoring
from infra.kubernetes.prefect import in_cluster_config
from infra.kubernetes.render import PlaceholderImages, Rendering, reference_rendering
from infra.render.dashboards import JAEGER_UID, LOKI_UID, grafana_provisioning
from infra.render.loki import loki_yaml
from infra.render.tracing import server_tracing_environment
from infra.secrets import Secrets, ensure_secrets
from tests import kubernetes_checks as checks

# The compose project as the compose render tests make it (placeholder images and TLS).
from tests.unit.test_compose_render import _project

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
DIGEST = re.compile(r"^[^@\s]+:\d+\.\d+\.\d+@sha256:[0-9a-f]{64}$")
LOKI_LOGS = "http://loki:3100/otlp/v1/logs"




@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    return ensure_secrets(tmp_path / "secrets")


def _file(project: ComposeProject, suffix: str) -> Any:
    return yaml.safe_load(next(f.content for f in project.files if f.path.name.endswith(suffix)))


# --- the model and Loki's configuration -------------------------------------------------------------------------

def test_off_by_default_on_both_targets() -> None:
    config = load_config()
    assert (config.compose.loki, config.kubernetes.loki) == (False, False)


@pytest.mark.parametrize("target", ["compose", "kubernetes"])
def test_the_image_is_a_loki_3_pinned_by_digest(target: str) -> None:
    image = getattr(load_config(), target).loki_image
    assert image == LOKI_IMAGE
    assert DIGEST.match(image) and image.startswith("grafana/loki:3.")


def test_loki_configuration_is_a_single_binary_on_the_filesystem_with_schema_v13() -> None:
    document = yaml.safe_load(loki_yaml(StackConfig()))
    assert document["target"] == "all"
    assert document["auth_enabled"] is False
    [schema] = document["schema_config"]["configs"]
    assert (schema["store"], schema["object_store"], schema["schema"]) == ("tsdb", "filesystem", "v13")
    assert document["common"]["storage"]["filesystem"]["chunks_directory"].startswith("/loki/")
    assert document["analytics"]["reporting_enabled"] is False


@pytest.mark.parametrize("days", [1, 14, 90])
def test_retention_comes_from_the_model_through_the_compactor(days: int) -> None:
    document = yaml.safe_load(loki_yaml(StackConfig(logs={"loki_storage": {"retention_days": days}})))
    assert document["limits_config"]["retention_period"] == f"{days * 24}h"
    assert document["compactor"]["retention_enabled"] is True
    assert document["compactor"]["delete_request_store"] == "filesystem"


def test_otlp_ingestion_keeps_structured_metadata() -> None:
    document = yaml.safe_load(loki_yaml(StackConfig()))
    assert document["limits_config"]["allow_structured_metadata"] is True


@pytest.mark.parametrize(("level", "expected"), [("DEBUG", "debug"), ("WARNING", "warn")])
def test_its_own_log_level_is_the_monitoring_components(level: str, expected: str) -> None:
    document = yaml.safe_load(loki_yaml(StackConfig(logs={"levels": {"monitoring": level}})))
    assert document["server"]["log_level"] == expected


def test_a_malformed_retention_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.errors import UserError
    monkeypatch.setenv("PREFECT_STACK_LOGS__LOKI_STORAGE__RETENTION_DAYS", "0")
    with pytest.raises(UserError) as caught:
        load_config()
    assert "retention_days" in str(caught.value)


# --- compose ----------------------------------------------------------------------------------------------------

def test_compose_file_with_loki_is_valid_compose_spec(tmp_path: Path, secrets: Secrets) -> None:
    write_project(_project(secrets, compose={"loki": True}), tmp_path / "project", None)
    result = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec",
                             str(tmp_path / "project" / "compose.yaml")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_renders_no_loki_unless_asked(secrets: Secrets) -> None:
    project = _project(secrets)
    assert "loki" not in project.document["services"]
    assert not [f for f in project.files if f.path.name.endswith("loki.yaml")]


def test_compose_loki_is_hardened_and_on_the_back_end_only(secrets: Secrets) -> None:
    loki = _project(secrets, compose={"loki": True}).document["services"]["loki"]
    assert loki["image"] == LOKI_IMAGE
    assert "ports" not in loki
    assert loki["networks"] == [BACKEND]
    assert loki["cap_drop"] == ["ALL"]
    assert loki["security_opt"] == ["no-new-privileges:true"]
    assert loki["read_only"] is True
    # The image's own unprivileged user (10001): no user override, and the data on a named volume.
    assert "user" not in loki
    assert loki["volumes"] == ["loki-data:/loki"]
    assert "-target=all" in loki["command"]


def test_compose_loki_reads_the_rendered_configuration(secrets: Secrets) -> None:
    project = _project(secrets, compose={"loki": True}, logs={"loki_storage": {"retention_days": 3}})
    [mount] = project.document["services"]["loki"]["configs"]
    assert f"-config.file={mount['target']}" in project.document["services"]["loki"]["command"]
    assert _file(project, "loki.yaml")["limits_config"]["retention_period"] == "72h"


@pytest.mark.parametrize("service", ["api-1", "services-1"])
def test_with_loki_the_prefect_processes_ship_records_to_it_and_spans_to_jaeger(secrets: Secrets,
                                                                                 service: str) -> None:
    env = _project(secrets, compose={"loki": True}).document["services"][service]["environment"]
    assert env["OTEL_LOGS_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] == LOKI_LOGS
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"


@pytest.mark.parametrize("service", ["api-1", "services-1"])
def test_without_loki_no_logs_endpoint_and_no_records_to_jaeger(secrets: Secrets, service: str) -> None:
    env = _project(secrets).document["services"][service]["environment"]
    assert "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" not in env
    assert env["OTEL_LOGS_EXPORTER"] == "none"


def test_with_loki_and_a_collector_spans_go_to_the_collector_and_records_to_loki(secrets: Secrets) -> None:
    env = _project(secrets, compose={"loki": True}, tracing={"enabled": True,
                                                             "otlp_endpoint": "http://collector:4318"}
                   ).document["services"]["api-1"]["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] == LOKI_LOGS


def test_a_configured_logs_endpoint_is_used_as_it_is_spans_unchanged() -> None:
    config = StackConfig(tracing={"enabled": True, "otlp_endpoint": "http://collector:4318"},
                         logs={"otlp_endpoint": "http://loki.example.com:3100/otlp/v1/logs"})
    env = server_tracing_environment(config, "prefect-api", "api-1")
    assert env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] == "http://loki.example.com:3100/otlp/v1/logs"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"


def test_the_installed_exporter_posts_records_to_lokis_path_and_spans_elsewhere(secrets: Secrets,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's OTLP/HTTP exporters, as opentelemetry-instrument builds them from the rendered environment: the
    logs endpoint is taken as it is (no /v1/logs appended), the spans' gets /v1/traces."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    env = _project(secrets, compose={"loki": True}).document["services"]["api-1"]["environment"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert OTLPLogExporter()._endpoint == LOKI_LOGS
    assert OTLPSpanExporter()._endpoint == "http://jaeger:4318/v1/traces"


def test_turning_log_export_off_wins_over_loki(secrets: Secrets) -> None:
    env = _project(secrets, compose={"loki": True}, logs={"export_otlp": False}
                   ).document["services"]["api-1"]["environment"]
    assert env["OTEL_LOGS_EXPORTER"] == "none"
    assert "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" not in env


def test_without_tracing_nothing_is_shipped(secrets: Secrets) -> None:
    # Log export runs in the OpenTelemetry SDK under opentelemetry-instrument, only started with tracing on.
    env = _project(secrets, compose={"loki": True, "jaeger": False}).document["services"]["api-1"].get(
        "environment", {})
    assert not [k for k in env if k.startswith("OTEL_")]


def test_compose_grafana_has_a_loki_datasource_linking_trace_ids_to_jaeger(secrets: Secrets) -> None:
    datasources = _file(_project(secrets, compose={"loki": True}),
                        "provisioning-datasources-prefect-stack.yaml")["datasources"]
    [loki] = [d for d in datasources if d["type"] == "loki"]
    assert (loki["uid"], loki["url"]) == (LOKI_UID, "http://loki:3100")
    [field] = loki["jsonData"]["derivedFields"]
    assert (field["matcherType"], field["matcherRegex"], field["datasourceUid"]) == ("label", "trace_id", JAEGER_UID)
    # $$ survives Grafana's environment expansion of provisioning files as Grafana's own ${__value.raw}.
    assert field["url"] == "$${__value.raw}"
    assert JAEGER_UID in {d["uid"] for d in datasources}


def test_without_jaeger_the_loki_datasource_has_no_trace_link() -> None:
    files = grafana_provisioning(StackConfig(), "http://prometheus:9090", None, "/d", "http://loki:3100")
    [loki] = [d for d in yaml.safe_load(files["datasources/prefect-stack.yaml"])["datasources"]
              if d["type"] == "loki"]
    assert "derivedFields" not in loki["jsonData"]


def test_compose_grafana_has_no_loki_datasource_without_loki(secrets: Secrets) -> None:
    datasources = _file(_project(secrets), "provisioning-datasources-prefect-stack.yaml")["datasources"]
    assert "loki" not in {d["type"] for d in datasources}


# --- Kubernetes -------------------------------------------------------------------------------------------------

def _k8s(**overrides: Any) -> StackConfig:
    return load_config(target="kubernetes", kubernetes={"loki": True, **overrides.pop("kubernetes", {})},
                       **overrides)


@pytest.fixture(scope="module")
def rendering() -> Rendering:
    return reference_rendering(_k8s(logs={"loki_storage": {"retention_days": 30, "volume_size": "40Gi"}}))


def _one(rendering: Rendering, kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in rendering.objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _loki_objects(rendering: Rendering) -> list[dict[str, Any]]:
    return [o for o in rendering.objects() if "loki" in o["metadata"]["name"]
            or o["metadata"]["name"].endswith("grafana-datasources")]


def test_kubernetes_renders_no_loki_unless_asked() -> None:
    objects = [m.obj for m in monitoring.monitoring_manifests(load_config(target="kubernetes"), PlaceholderImages())]
    assert [o for o in objects if "loki" in o["metadata"]["name"] or "datasources" in o["metadata"]["name"]] == []


def test_kubernetes_loki_objects_are_all_there(rendering: Rendering) -> None:
    kinds = sorted(o["kind"] for o in _loki_objects(rendering))
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Service"]


def test_kubernetes_loki_objects_validate_strictly(rendering: Rendering) -> None:
    assert checks.validate_objects(_loki_objects(rendering), rendering.config.kubernetes.version) == []


def test_kubernetes_loki_keeps_its_data_on_a_claim_of_the_configured_size(rendering: Rendering) -> None:
    claim = _one(rendering, "PersistentVolumeClaim", "prefect-loki")
    assert claim["spec"]["resources"]["requests"]["storage"] == "40Gi"
    spec = _one(rendering, "Deployment", "prefect-loki")["spec"]
    assert spec["strategy"] == {"type": "Recreate"}
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "prefect-loki"}} in spec["template"]["spec"][
        "volumes"]
    config = yaml.safe_load(_one(rendering, "ConfigMap", "prefect-loki")["data"]["config.yaml"])
    assert config["limits_config"]["retention_period"] == "720h"


def test_kubernetes_loki_is_restricted_with_resources_and_ready_probes(rendering: Rendering) -> None:
    pod = _one(rendering, "Deployment", "prefect-loki")["spec"]["template"]["spec"]
    [loki] = pod["containers"]
    context = loki["securityContext"]
    assert (context["runAsNonRoot"], context["readOnlyRootFilesystem"], context["allowPrivilegeEscalation"],
            context["capabilities"], context["seccompProfile"]) == (
        True, True, False, {"drop": ["ALL"]}, {"type": "RuntimeDefault"})
    assert set(loki["resources"]) == {"requests", "limits"}
    assert loki["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert loki["startupProbe"]["httpGet"]["path"] == "/ready"
    assert pod["automountServiceAccountToken"] is False
    assert loki["image"].endswith(LOKI_IMAGE.split("/", 1)[1])


def test_kubernetes_prefect_pods_ship_records_to_loki_and_spans_to_jaeger() -> None:
    env = server_tracing_environment(in_cluster_config(_k8s()), "prefect-api", "$(POD_NAME)")
    assert env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] == "http://prefect-loki:3100/otlp/v1/logs"
    assert env["OTEL_LOGS_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://prefect-jaeger:4318"


def test_kubernetes_without_loki_prefect_pods_send_no_records() -> None:
    env = server_tracing_environment(in_cluster_config(load_config(target="kubernetes")), "prefect-api", "x")
    assert env["OTEL_LOGS_EXPORTER"] == "none"
    assert "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" not in env


def test_kubernetes_datasource_is_for_grafanas_sidecar_and_links_to_jaeger(rendering: Rendering) -> None:
    config_map = _one(rendering, "ConfigMap", "prefect-grafana-datasources")
    assert config_map["metadata"]["labels"]["grafana_datasource"] == "1"
    [text] = config_map["data"].values()
    datasources = {d["uid"]: d for d in yaml.safe_load(text)["datasources"]}
    assert datasources[LOKI_UID]["url"] == "http://prefect-loki.prefect.svc:3100"
    assert datasources[JAEGER_UID]["url"] == "http://prefect-jaeger.prefect.svc:16686"
    [field] = datasources[LOKI_UID]["jsonData"]["derivedFields"]
    assert field["datasourceUid"] == JAEGER_UID


def _workload(rendering: Rendering, kind: str, suffix: str) -> dict[str, Any]:
    prefix = rendering.config.kubernetes.name
    [found] = [o for o in rendering.objects() if o["kind"] == kind and o["metadata"]["name"] == f"{prefix}-{suffix}"]
    return found


@pytest.mark.parametrize("source", ["api", "services"])
def test_prefect_pods_may_reach_loki(rendering: Rendering, source: str) -> None:
    src, dst = _workload(rendering, "Deployment", source), _workload(rendering, "Deployment", "loki")
    assert checks.flow_problems(rendering.objects(), src, dst, 3100) == []


@pytest.mark.parametrize(("kind", "source"), [("Deployment", "exporter"), ("StatefulSet", "redis")])
def test_other_pods_may_not_reach_loki(rendering: Rendering, kind: str, source: str) -> None:
    src, dst = _workload(rendering, kind, source), _workload(rendering, "Deployment", "loki")
    assert checks.flow_problems(rendering.objects(), src, dst, 3100) != []


def test_grafanas_namespace_may_query_loki(rendering: Rendering) -> None:
    policy = _one(rendering, "NetworkPolicy", "prefect-loki-allow")["spec"]
    peers = [(peer, rule["ports"]) for rule in policy["ingress"] for peer in rule["from"]]
    grafana = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert (grafana, [{"protocol": "TCP", "port": 3100}]) in peers
    assert policy["egress"] == []
