"""Every rendered Kubernetes object, across a matrix of configurations: strict schemas (built-in kinds for the
configured Kubernetes version, custom resources against their CRDs from ../shared/k8s-crds), the stack's
invariants, and kustomize building the example overlay back into the rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.compose.project import placeholder_secrets
from infra.config import StackConfig, load_config
from infra.containers.images import DOCKERFILES, PREFECT_REPOSITORY, SYSTEM_REPOSITORY
from infra.kubernetes.objects import COMPONENTS, PHASES
from infra.kubernetes.render import OVERLAY, Rendering, reference_rendering, write_tree
from infra.kubernetes.secrets import secret_objects
from infra.secrets import SECRET_NAMES
from tests import kubernetes_checks as checks

AWS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-example-secret"}

# minimal: the smallest install; ha: more of everything; external: PostgreSQL and Redis the operator runs;
# everything: every component on, physical backups and tracing included.
MATRIX: dict[str, dict[str, Any]] = {
    "default": {},
    "minimal": {"api": {"replicas": 1}, "monitoring": {"enabled": False},
                "kubernetes": {"postgres": {"instances": 1, "pooler_instances": 1}, "redis": {"mode": "standalone"},
                               "network_policies": False, "ingress": {"enabled": False}}},
    "ha": {"api": {"replicas": 4}, "services": {"replicas": 2}, "postgres": {"max_connections": 400},
           "tracing": {"jaeger_storage": {"backend": "memory"}},
           "kubernetes": {"postgres": {"instances": 5, "pooler_instances": 3}, "redis": {"replicas": 5},
                          "storage_class": "fast-ssd", "version": "1.34", "image_registry": "registry.example.com",
                          "scheduling": {"node_selector": {"node-pool": "prefect"}, "priority_class": "prefect-high",
                                         "tolerations": [{"key": "dedicated", "value": "prefect",
                                                          "effect": "NoSchedule"}],
                                         "image_pull_secrets": ["registry-credentials"]}}},
    "external": {"kubernetes": {"postgres": {"mode": "external", "host": "db.example.com", "sslmode": "verify-full"},
                                "redis": {"mode": "external",
                                          "external_url": "redis+sentinel://s1:26379,s2:26379/mymaster"},
                                "s3_credentials": "iam-role",
                                "s3_identity_annotations": {
                                    "iam.gke.io/gcp-service-account": "backups@p.iam.gserviceaccount.com"},
                                "s3_identity_pod_labels": {"azure.workload.identity/use": "true"}},
                 "backups": {"s3": {"endpoint_url": "https://minio.example.com:9000"}}},
    "everything": {"backups": {"physical": {"enabled": True}},
                   "tracing": {"enabled": True, "otlp_endpoint": "http://otel-collector.observability:4318"},
                   "kubernetes": {"ingress": {"cluster_issuer": None},
                                  "gateway": {"enabled": True,
                                              "hostnames": ["prefect.example.com", "*.prefect.example.com"],
                                              "data_plane_namespace": "envoy-gateway-system",
                                              "data_plane_pod_labels": {
                                                  "gateway.envoyproxy.io/owning-gateway-name": "gateway"}}}},
    # The Gateway API alone, its Gateway in the stack's namespace, attached to every listener that admits the route.
    "gateway": {"kubernetes": {"ingress": {"enabled": False},
                               "gateway": {"enabled": True, "namespace": None, "section_name": None,
                                           "data_plane_pod_labels": {
                                               "gateway.networking.k8s.io/gateway-name": "gateway"}}}},
    # The stack's Loki, its Grafana datasource and NetworkPolicy beside the default stack.
    "loki": {"kubernetes": {"loki": True}, "logs": {"loki_storage": {"retention_days": 30}}},
    "recovered": {"backups": {"physical": {"enabled": True}},
                  "kubernetes": {"postgres": {"recovery": {"enabled": True, "target_time": "2026-11-27T02:15:00Z",
                                                           "server_name": "prefect-db-r1"}}}},
}


def _config(name: str) -> StackConfig:
    return load_config(target="kubernetes", **MATRIX[name])


@pytest.fixture(scope="module", params=sorted(MATRIX))
def rendering(request: pytest.FixtureRequest) -> Rendering:
    return reference_rendering(_config(request.param))


class TestSchemas:
    def test_every_object_validates_strictly(self, rendering: Rendering) -> None:
        problems = checks.validate_objects(rendering.objects(), rendering.config.kubernetes.version)
        assert problems == []

    def test_the_deploy_time_secrets_validate(self, rendering: Rendering) -> None:
        made = secret_objects(rendering.config, placeholder_secrets(), AWS)
        assert checks.validate_objects(made, rendering.config.kubernetes.version) == []


class TestInvariants:
    @pytest.mark.parametrize("invariant", sorted(checks.INVARIANTS))
    def test_holds(self, rendering: Rendering, invariant: str) -> None:
        assert checks.INVARIANTS[invariant](rendering.objects()) == []

    def test_every_reference_exists_or_is_made_at_deploy(self, rendering: Rendering) -> None:
        assert checks.references_exist(rendering.objects(), external_secrets=rendering.external_secrets) == []

    def test_no_secret_value_in_any_object(self, rendering: Rendering) -> None:
        values = [placeholder_secrets().get(name) for name in SECRET_NAMES] + list(AWS.values())
        assert checks.no_secret_values(rendering.objects(), values) == []

    def test_every_made_secret_is_declared(self, rendering: Rendering) -> None:
        made = {o["metadata"]["name"] for o in secret_objects(rendering.config, placeholder_secrets(), AWS)}
        assert made <= set(rendering.external_secrets)

    def test_names_are_unique(self, rendering: Rendering) -> None:
        keys = [checks.key_of(o) for o in rendering.objects()]
        assert len(keys) == len(set(keys))

    def test_everything_in_the_namespace(self, rendering: Rendering) -> None:
        namespaces = {o["metadata"].get("namespace") for o in rendering.objects() if o["kind"] != "Namespace"}
        assert namespaces == {rendering.config.kubernetes.namespace}

    def test_phases_and_components_are_known(self, rendering: Rendering) -> None:
        assert {m.phase for m in rendering.manifests} <= set(PHASES)
        assert {m.component for m in rendering.manifests} <= {None, *COMPONENTS}


def _entrypoint(dockerfile: Path) -> list[str] | None:
    """The image's ENTRYPOINT (exec form), or None when the Dockerfile sets none (it inherits its base's)."""
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRYPOINT")]
    return json.loads(lines[-1].removeprefix("ENTRYPOINT")) if lines else None


def project_entrypoints() -> dict[str, list[str]]:
    """The project's images and the init each starts with: the system image's tini, which the Prefect image
    (built FROM it) inherits."""
    system = _entrypoint(DOCKERFILES / "system" / "Dockerfile")
    assert system == ["/usr/bin/tini", "--"]
    assert _entrypoint(DOCKERFILES / "prefect" / "Dockerfile") is None
    return {SYSTEM_REPOSITORY: system, PREFECT_REPOSITORY: system}


class TestPid1:
    def test_tini_is_pid_1_in_every_container_of_the_projects_images(self, rendering: Rendering) -> None:
        assert checks.init_is_pid_1(rendering.objects(), project_entrypoints()) == []

    def test_the_check_sees_the_projects_containers(self, rendering: Rendering) -> None:
        images = {box["image"] for obj in rendering.objects() if (template := checks.pod_template(obj))
                  for box in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]}
        assert {image.split(":")[0] for image in images} >= {PREFECT_REPOSITORY}


class TestKustomize:
    def test_the_overlay_builds_to_the_rendering(self, rendering: Rendering, tmp_path: Path) -> None:
        write_tree(rendering, tmp_path)
        built = checks.kustomize_build(tmp_path / OVERLAY)
        assert checks.compare_objects(rendering.objects(), built) == []



# Every flow the stack needs: (source, destination, port), workloads named by kind and name suffix.
REQUIRED_FLOWS = [
    (("Deployment", "api"), ("Pooler", "pooler-transaction"), 5432),
    (("Deployment", "services"), ("Pooler", "pooler-session"), 5432),
    (("Pooler", "pooler-transaction"), ("Cluster", "db"), 5432),
    (("Pooler", "pooler-session"), ("Cluster", "db"), 5432),
    (("Cluster", "db"), ("Cluster", "db"), 5432),
    (("Job", "migrate"), ("Cluster", "db"), 5432),
    (("CronJob", "backup"), ("Cluster", "db"), 5432),
    (("Deployment", "exporter"), ("Cluster", "db"), 5432),
    (("Deployment", "api"), ("StatefulSet", "redis"), 6379),
    (("Deployment", "api"), ("StatefulSet", "redis"), 26379),
    (("Deployment", "services"), ("StatefulSet", "redis"), 6379),
    (("Deployment", "services"), ("StatefulSet", "redis"), 26379),
    (("Deployment", "exporter"), ("StatefulSet", "redis"), 6379),
    (("StatefulSet", "redis"), ("StatefulSet", "redis"), 6379),
    (("StatefulSet", "redis"), ("StatefulSet", "redis"), 26379),
    (("Deployment", "api"), ("Deployment", "jaeger"), 4318),
    (("Deployment", "services"), ("Deployment", "jaeger"), 4318),
    (("Deployment", "services"), ("Deployment", "api"), 4200),
]


def _workload(rendering: Rendering, kind: str, suffix: str) -> dict[str, Any]:
    prefix = rendering.config.kubernetes.name
    found = [o for o in rendering.objects() if o["kind"] == kind
             and (o["metadata"]["name"] == f"{prefix}-{suffix}"
                  or o["metadata"]["name"].startswith(f"{prefix}-{suffix}-"))]
    assert len(found) == 1, f"{kind} {prefix}-{suffix}: {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def everything() -> Rendering:
    """The default configuration: every component on, network policies included, tracing to the stack's Jaeger."""
    return reference_rendering(_config("default"))


class TestNetworkFlows:
    @pytest.mark.parametrize(("source", "destination", "port"), REQUIRED_FLOWS,
                             ids=[f"{s[1]}->{d[1]}:{p}" for s, d, p in REQUIRED_FLOWS])
    def test_needed_flow_is_allowed(self, everything: Rendering, source: tuple[str, str],
                                    destination: tuple[str, str], port: int) -> None:
        src, dst = _workload(everything, *source), _workload(everything, *destination)
        assert checks.flow_problems(everything.objects(), src, dst, port) == []

    @pytest.mark.parametrize(("source", "destination", "port"), [
        (("Deployment", "api"), ("Cluster", "db"), 5432),          # the API goes through its Pooler only
        (("Deployment", "jaeger"), ("Cluster", "db"), 5432),
        (("Deployment", "exporter"), ("Deployment", "api"), 4200),
        (("CronJob", "backup"), ("StatefulSet", "redis"), 6379),
        (("StatefulSet", "redis"), ("Deployment", "api"), 4200),
    ], ids=["api->db", "jaeger->db", "exporter->api", "backup->redis", "redis->api"])
    def test_unneeded_flow_is_denied(self, everything: Rendering, source: tuple[str, str],
                                     destination: tuple[str, str], port: int) -> None:
        src, dst = _workload(everything, *source), _workload(everything, *destination)
        assert checks.flow_problems(everything.objects(), src, dst, port) != []
