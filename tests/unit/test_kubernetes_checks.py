"""The offline Kubernetes checks (tests/kubernetes_checks.py) catch what they promise to, on hand-made objects: a
small stack that passes every check, and one flaw at a time that each check must report."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import ResourcesConfig
from infra.kubernetes.objects import container, pod_spec, secret_volume
from tests import kubernetes_checks as checks

NS = "prefect"
VERSION = "1.32"
IMAGE = "prefect-stack/prefect:0123abcd"
EXTERNAL_SECRETS = ("prefect-prefect-env", "prefect-db-app", "prefect-db-superuser", "prefect-s3", "prefect-tls")
Obj = dict[str, Any]


def labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": "prefect"}


def meta(name: str, component: str = "") -> Obj:
    return {"name": name, "namespace": NS, **({"labels": labels(component)} if component else {})}


def spread(component: str) -> list[Obj]:
    return [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": labels(component)}}]


def pod(component: str) -> Obj:
    box = container(component, IMAGE, ["prefect"], ResourcesConfig(), mounts={"env": "/run/env"})
    return {"metadata": {"labels": labels(component)},
            "spec": pod_spec([box], [secret_volume("env", "prefect-prefect-env"),
                                     {"name": "config", "configMap": {"name": "prefect-config"}}],
                             topologySpreadConstraints=spread(component))}


def deployment(component: str, replicas: int = 2) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(f"prefect-{component}", component),
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels(component)}, "template": pod(component)}}


def service(name: str, selector: dict[str, str]) -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name),
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 4200, "targetPort": "http"}]}}


def pdb(name: str, selector: Obj) -> Obj:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(name),
            "spec": {"maxUnavailable": 1, "selector": selector}}


def cluster() -> Obj:
    return {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": meta("prefect-db"),
            "spec": {"instances": 3, "storage": {"size": "10Gi"}, "enableSuperuserAccess": True,
                     "superuserSecret": {"name": "prefect-db-superuser"},
                     "bootstrap": {"initdb": {"database": "prefect", "owner": "prefect",
                                              "secret": {"name": "prefect-db-app"}}},
                     "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                   "limits": {"cpu": "1000m", "memory": "2048Mi"}},
                     "plugins": [{"name": "barman-cloud.cloudnative-pg.io", "isWALArchiver": True,
                                  "parameters": {"barmanObjectName": "prefect-backups"}}]}}


def pooler() -> Obj:
    return {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Pooler", "metadata": meta("prefect-pooler-transaction"),
            "spec": {"cluster": {"name": "prefect-db"}, "instances": 2, "type": "rw",
                     "pgbouncer": {"poolMode": "transaction", "parameters": {"max_client_conn": "1000"}},
                     "template": {"metadata": {"labels": labels("pooler-transaction")},
                                  "spec": {"topologySpreadConstraints": spread("pooler-transaction"),
                                           "containers": [{"name": "pgbouncer", "resources": {
                                      "requests": {"cpu": "100m", "memory": "64Mi"},
                                      "limits": {"memory": "128Mi"}}}]}}}}


def object_store() -> Obj:
    return {"apiVersion": "barmancloud.cnpg.io/v1", "kind": "ObjectStore", "metadata": meta("prefect-backups"),
            "spec": {"retentionPolicy": "30d", "configuration": {
                "destinationPath": "s3://bucket/prefect",
                "s3Credentials": {"accessKeyId": {"name": "prefect-s3", "key": "ACCESS_KEY_ID"},
                                  "secretAccessKey": {"name": "prefect-s3", "key": "ACCESS_SECRET_KEY"}},
                "wal": {"compression": "zstd"}},
                "instanceSidecarConfiguration": {"resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                                               "limits": {"cpu": "100m", "memory": "128Mi"}}}}}


def service_monitor() -> Obj:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {**meta("prefect-api"), "labels": {"release": "kube-prometheus-stack"}},
            "spec": {"selector": {"matchLabels": labels("api")},
                     "endpoints": [{"port": "http", "path": "/api/metrics", "interval": "30s",
                                    "basicAuth": {"username": {"name": "prefect-prefect-env", "key": "user"},
                                                  "password": {"name": "prefect-prefect-env", "key": "pass"}}}]}}


def cron_job() -> Obj:
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("prefect-backup", "backup"),
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
                **pod("backup"), "spec": {**pod("backup")["spec"], "restartPolicy": "OnFailure"}}}}}}


def stack() -> list[Obj]:
    """A small stack every check passes: every kind the checks look at, once."""
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("prefect-config"), "data": {"a": "b"}},
        deployment("api"),
        service("prefect-api", labels("api")),
        pdb("prefect-api", {"matchLabels": labels("api")}),
        deployment("services", replicas=1),
        cron_job(),
        cluster(),
        service("prefect-db-primary", {"cnpg.io/cluster": "prefect-db", "cnpg.io/instanceRole": "primary"}),
        pooler(),
        object_store(),
        service_monitor(),
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("prefect-default-deny"),
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta("prefect-api"),
         "spec": {"tls": [{"hosts": ["prefect.example.com"], "secretName": "prefect-tls"}],
                  "rules": [{"host": "prefect.example.com", "http": {"paths": [{
                      "path": "/", "pathType": "Prefix",
                      "backend": {"service": {"name": "prefect-api", "port": {"name": "http"}}}}]}}]}},
    ]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def api_container(objects: list[Obj]) -> Obj:
    box: Obj = find(objects, "Deployment", "prefect-api")["spec"]["template"]["spec"]["containers"][0]
    return box


@pytest.fixture(scope="module")
def crds() -> checks.CrdSchemas:
    return checks.crd_schemas()


class TestSchemas:
    @pytest.mark.parametrize("index", range(len(stack())), ids=[checks.describe(o) for o in stack()])
    def test_stack_valid(self, index: int, crds: checks.CrdSchemas) -> None:
        assert checks.schema_problems(stack()[index], VERSION, crds) == []

    def test_built_in_unknown_field(self) -> None:
        objects = stack()
        api_container(objects)["securityContext"]["readOnlyRootFileSystem"] = True
        problems = checks.schema_problems(find(objects, "Deployment", "prefect-api"), VERSION)
        assert problems == ["Deployment/prefect/prefect-api: spec.template.spec.containers[0].securityContext: "
                            "Additional properties are not allowed ('readOnlyRootFileSystem' was unexpected)"]

    def test_built_in_wrong_type(self) -> None:
        obj = deployment("api")
        obj["spec"]["replicas"] = "two"
        assert checks.schema_problems(obj, VERSION) == [
            "Deployment/prefect/prefect-api: spec.replicas: 'two' is not of type 'integer', 'null'"]

    def test_cluster_unknown_field(self, crds: checks.CrdSchemas) -> None:
        obj = cluster()
        obj["spec"]["storage"]["sise"] = "1Gi"
        assert crds.problems(obj) == [
            "Cluster/prefect/prefect-db: spec.storage: Additional properties are not allowed ('sise' was unexpected)"]

    def test_every_error_listed(self, crds: checks.CrdSchemas) -> None:
        obj = cluster()
        obj["spec"]["instances"] = "three"
        obj["spec"]["bogus"] = True
        assert len(crds.problems(obj)) == 2

    def test_preserve_unknown_fields_stays_open(self, crds: checks.CrdSchemas) -> None:
        # postgresql.parameters is a free map upstream: any PostgreSQL setting goes.
        obj = cluster()
        obj["spec"]["postgresql"] = {"parameters": {"any_setting_at_all": "on"}}
        assert crds.problems(obj) == []

    def test_service_monitor_bad_field(self, crds: checks.CrdSchemas) -> None:
        obj = service_monitor()
        obj["spec"]["endpoints"][0]["intervall"] = "30s"
        assert crds.problems(obj) == ["ServiceMonitor/prefect/prefect-api: spec.endpoints[0]: Additional properties "
                                      "are not allowed ('intervall' was unexpected)"]

    @pytest.mark.parametrize("port", [9090, "metrics"])
    def test_int_or_string_accepted(self, port: int | str, crds: checks.CrdSchemas) -> None:
        obj = service_monitor()
        obj["spec"]["endpoints"][0]["targetPort"] = port
        assert crds.problems(obj) == []

    def test_int_or_string_rejects_other_types(self, crds: checks.CrdSchemas) -> None:
        obj = service_monitor()
        obj["spec"]["endpoints"][0]["targetPort"] = [9090]
        assert [p for p in crds.problems(obj) if "targetPort" in p]

    def test_pooler_bad_pool_mode(self, crds: checks.CrdSchemas) -> None:
        obj = pooler()
        obj["spec"]["pgbouncer"]["poolMode"] = "statement-ish"
        assert [p for p in crds.problems(obj) if "spec.pgbouncer.poolMode" in p]

    @staticmethod
    def http_route() -> Obj:
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta("prefect-api"),
                "spec": {"parentRefs": [{"name": "gateway", "namespace": "gateway-system", "sectionName": "https"}],
                         "hostnames": ["prefect.example.com"],
                         "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                    "backendRefs": [{"name": "prefect-api", "port": 4200}],
                                    "timeouts": {"request": "1m"}}]}}

    def test_gateway_api_route_valid(self, crds: checks.CrdSchemas) -> None:
        # gateway.networking.k8s.io is a *.k8s.io group that no Kubernetes version serves: its CRD validates it.
        assert checks.schema_problems(self.http_route(), VERSION, crds) == []

    @pytest.mark.parametrize(("mutate", "where"), [
        (lambda spec: spec["rules"][0]["backendRefs"][0].update(port="http"), "spec.rules[0].backendRefs[0].port"),
        (lambda spec: spec["rules"][0]["matches"][0]["path"].update(type="Prefix"), "spec.rules[0].matches[0]"),
        (lambda spec: spec["rules"][0]["timeouts"].update(request="60"), "spec.rules[0].timeouts.request"),
        (lambda spec: spec.update(hostnames=["Prefect.Example.com"]), "spec.hostnames[0]"),
        (lambda spec: spec["rules"][0].update(retry={"attempts": 2}), "spec.rules[0]"),
    ], ids=["named-port", "ingress-path-type", "duration-without-unit", "upper-case-host", "experimental-retry"])
    def test_gateway_api_route_flaws(self, mutate: Callable[[Obj], object], where: str,
                                     crds: checks.CrdSchemas) -> None:
        obj = self.http_route()
        mutate(obj["spec"])
        assert [p for p in checks.schema_problems(obj, VERSION, crds) if f"prefect-api: {where}" in p]

    def test_unknown_custom_kind(self, crds: checks.CrdSchemas) -> None:
        obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": meta("w")}
        [problem] = checks.schema_problems(obj, VERSION, crds)
        assert "Widget (example.com/v1) is neither a built-in kind nor defined by a CRD" in problem

    def test_unknown_version_of_a_custom_kind(self, crds: checks.CrdSchemas) -> None:
        obj = {**cluster(), "apiVersion": "postgresql.cnpg.io/v2"}
        assert "neither a built-in kind nor defined by a CRD" in checks.schema_problems(obj, VERSION, crds)[0]

    def test_unknown_built_in_kind(self, crds: checks.CrdSchemas) -> None:
        obj = {"apiVersion": "apps/v1", "kind": "Widget", "metadata": meta("w")}
        [problem] = checks.schema_problems(obj, VERSION, crds)
        assert problem.startswith("Widget/prefect/w: Widget (apps/v1) is neither a built-in kind nor defined by a CRD")

    @pytest.mark.parametrize(("version", "count"), [("1.30", 0), ("1.29", 1)])
    def test_kind_of_a_later_version(self, version: str, count: int, crds: checks.CrdSchemas) -> None:
        # ValidatingAdmissionPolicy is GA (v1) from Kubernetes 1.30 on.
        obj = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
               "metadata": {"name": "p"}, "spec": {}}
        assert len(checks.schema_problems(obj, version, crds)) == count

    def test_missing_crd_folder(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(checks.CRDS_ENV, str(tmp_path / "absent"))
        with pytest.raises(checks.CrdsMissing) as raised:
            checks.schema_problems(cluster(), VERSION)
        assert all(part in str(raised.value) for part in
                   ("does not exist", "postgresql.cnpg.io_clusters.yaml", "cloudnative-pg v1.30.0",
                    "plugin-barman-cloud v0.14.0", "prometheus-operator v0.93.0", checks.CRDS_ENV))

    def test_incomplete_crd_folder(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "postgresql.cnpg.io_clusters.yaml").write_text("{}")
        monkeypatch.setenv(checks.CRDS_ENV, str(tmp_path))
        with pytest.raises(checks.CrdsMissing, match=r"lacks postgresql\.cnpg\.io_poolers\.yaml"):
            checks.crd_folder()

    def test_built_in_needs_no_crd_folder(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(checks.CRDS_ENV, str(tmp_path / "absent"))
        assert checks.schema_problems(deployment("api"), VERSION) == []


def broken(mutate: Callable[[list[Obj]], object]) -> list[Obj]:
    objects = stack()
    mutate(objects)
    return objects


class TestServices:
    def test_stack(self) -> None:
        assert checks.services_select_one_workload(stack()) == []

    def test_two_workloads(self) -> None:
        objects = broken(lambda o: o.append(service("prefect-all", {"app.kubernetes.io/instance": "prefect"})))
        [problem] = checks.services_select_one_workload(objects)
        assert problem == ("Service/prefect/prefect-all: selects 3 workloads (Deployment/prefect/prefect-api, "
                           "Deployment/prefect/prefect-services, CronJob/prefect/prefect-backup), not one")

    def test_no_workload(self) -> None:
        objects = broken(lambda o: o.append(service("prefect-none", labels("nothing"))))
        assert checks.services_select_one_workload(objects) == [
            "Service/prefect/prefect-none: selects 0 workloads (none), not one"]

    def test_other_namespace_not_selected(self) -> None:
        objects = stack()
        find(objects, "Service", "prefect-api")["metadata"]["namespace"] = "elsewhere"
        assert len(checks.services_select_one_workload(objects)) == 1

    def test_cnpg_cluster_and_pooler_both_selected(self) -> None:
        # Pooler pods carry cnpg.io/cluster too: a Service on that label alone reaches PgBouncer as well.
        objects = broken(lambda o: o.append(service("prefect-db-any", {"cnpg.io/cluster": "prefect-db"})))
        [problem] = checks.services_select_one_workload(objects)
        assert "selects 2 workloads (Cluster/prefect/prefect-db, Pooler/prefect/prefect-pooler-transaction)" in problem

    def test_no_selector(self) -> None:
        objects = broken(lambda o: find(o, "Service", "prefect-api")["spec"].pop("selector"))
        assert checks.services_select_one_workload(objects) == ["Service/prefect/prefect-api: has no selector"]


class TestPodDisruptionBudgets:
    def test_stack(self) -> None:
        assert checks.pdbs_match_replicated_workloads(stack()) == []

    def test_replicated_without_pdb(self) -> None:
        objects = [o for o in stack() if o["kind"] != "PodDisruptionBudget"]
        assert checks.pdbs_match_replicated_workloads(objects) == [
            "Deployment/prefect/prefect-api: runs 2 replicas and no PodDisruptionBudget covers it"]

    def test_single_replica_with_pdb(self) -> None:
        objects = broken(lambda o: o.append(pdb("prefect-services", {"matchLabels": labels("services")})))
        [problem] = checks.pdbs_match_replicated_workloads(objects)
        assert problem.startswith("PodDisruptionBudget/prefect/prefect-services: guards "
                                  "Deployment/prefect/prefect-services, which runs 1 replica")

    def test_two_workloads(self) -> None:
        objects = broken(lambda o: o.append(pdb("prefect-both", {"matchExpressions": [
            {"key": "app.kubernetes.io/name", "operator": "In", "values": ["api", "services"]}]})))
        [problem] = checks.pdbs_match_replicated_workloads(objects)
        assert problem.startswith("PodDisruptionBudget/prefect/prefect-both: selects 2 workloads")

    def test_pooler_counts_as_workload(self) -> None:
        objects = broken(lambda o: o.append(pdb("prefect-pooler", {"matchLabels": {
            "cnpg.io/poolerName": "prefect-pooler-transaction"}})))
        assert checks.pdbs_match_replicated_workloads(objects) == []


def env_from_secret(objects: list[Obj]) -> None:
    api_container(objects)["env"] = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "x"}}}]


def env_from_config_map(objects: list[Obj]) -> None:
    api_container(objects)["envFrom"] = [{"configMapRef": {"name": "gone"}}]


def projected(objects: list[Obj]) -> None:
    find(objects, "Deployment", "prefect-api")["spec"]["template"]["spec"]["volumes"].append(
        {"name": "p", "projected": {"sources": [{"secret": {"name": "gone"}}]}})


def config_map_volume(objects: list[Obj]) -> None:
    find(objects, "Deployment", "prefect-api")["spec"]["template"]["spec"]["volumes"][1]["configMap"]["name"] = "gone"


def cnpg_superuser(objects: list[Obj]) -> None:
    find(objects, "Cluster", "prefect-db")["spec"]["superuserSecret"]["name"] = "gone"


def cnpg_initdb(objects: list[Obj]) -> None:
    find(objects, "Cluster", "prefect-db")["spec"]["bootstrap"]["initdb"]["secret"]["name"] = "gone"


def object_store_credentials(objects: list[Obj]) -> None:
    find(objects, "ObjectStore", "prefect-backups")["spec"]["configuration"]["s3Credentials"]["accessKeyId"][
        "name"] = "gone"


def ingress_tls(objects: list[Obj]) -> None:
    find(objects, "Ingress", "prefect-api")["spec"]["tls"][0]["secretName"] = "gone"


def service_monitor_basic_auth(objects: list[Obj]) -> None:
    find(objects, "ServiceMonitor", "prefect-api")["spec"]["endpoints"][0]["basicAuth"]["password"]["name"] = "gone"


def cron_job_volume(objects: list[Obj]) -> None:
    find(objects, "CronJob", "prefect-backup")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0][
        "secret"]["secretName"] = "gone"


class TestReferences:
    def test_stack(self) -> None:
        assert checks.references_exist(stack(), EXTERNAL_SECRETS) == []

    def test_external_must_be_declared(self) -> None:
        assert "refers to Secret prefect-db-app" in "\n".join(checks.references_exist(stack()))

    @pytest.mark.parametrize("mutate", [env_from_secret, env_from_config_map, projected, config_map_volume,
                                        cnpg_superuser, cnpg_initdb, object_store_credentials, ingress_tls,
                                        service_monitor_basic_auth, cron_job_volume])
    def test_missing_reported(self, mutate: Callable[[list[Obj]], None]) -> None:
        [problem] = checks.references_exist(broken(mutate), EXTERNAL_SECRETS)
        assert " gone, which is neither rendered nor external" in problem

    def test_optional_ignored(self) -> None:
        def optional(objects: list[Obj]) -> None:
            api_container(objects)["envFrom"] = [{"secretRef": {"name": "gone", "optional": True}}]
        assert checks.references_exist(broken(optional), EXTERNAL_SECRETS) == []

    def test_config_map_in_other_namespace_missing(self) -> None:
        objects = broken(lambda o: find(o, "ConfigMap", "prefect-config")["metadata"].update(namespace="elsewhere"))
        assert len(checks.references_exist(objects, EXTERNAL_SECRETS)) == 3  # api, services, backup mount it


class TestNetworkPolicies:
    def test_default_deny_selects_all(self) -> None:
        assert checks.pods_selected_by_network_policies(stack()) == []

    def test_no_policies_nothing_to_check(self) -> None:
        assert checks.pods_selected_by_network_policies(
            [o for o in stack() if o["kind"] != "NetworkPolicy"]) == []

    def test_uncovered_pods_reported(self) -> None:
        objects = broken(lambda o: find(o, "NetworkPolicy", "prefect-default-deny")["spec"].update(
            podSelector={"matchLabels": labels("api")}))
        assert checks.pods_selected_by_network_policies(objects) == [
            f"{name}: no NetworkPolicy selects its pods" for name in (
                "Deployment/prefect/prefect-services", "CronJob/prefect/prefect-backup", "Cluster/prefect/prefect-db",
                "Pooler/prefect/prefect-pooler-transaction")]

    @pytest.mark.parametrize(("expression", "uncovered"), [
        ({"key": "cnpg.io/cluster", "operator": "Exists"}, 3),
        ({"key": "cnpg.io/podRole", "operator": "DoesNotExist"}, 2),
        ({"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["backup"]}, 1),
        ({"key": "app.kubernetes.io/name", "operator": "In", "values": ["api", "services", "backup"]}, 2),
    ])
    def test_match_expressions(self, expression: Obj, uncovered: int) -> None:
        objects = broken(lambda o: find(o, "NetworkPolicy", "prefect-default-deny")["spec"].update(
            podSelector={"matchExpressions": [expression]}))
        assert len(checks.pods_selected_by_network_policies(objects)) == uncovered


def context_set(field: str, value: object) -> Callable[[list[Obj]], None]:
    return lambda objects: api_container(objects)["securityContext"].update({field: value})


def context_drop(field: str) -> Callable[[list[Obj]], None]:
    return lambda objects: api_container(objects)["securityContext"].pop(field)


def pod_context_drop(field: str) -> Callable[[list[Obj]], None]:
    return lambda objects: find(objects, "Deployment", "prefect-api")["spec"]["template"]["spec"][
        "securityContext"].pop(field)


def resources_drop(section: str, field: str) -> Callable[[list[Obj]], None]:
    return lambda objects: api_container(objects)["resources"][section].pop(field)


def image(reference: str) -> Callable[[list[Obj]], None]:
    return lambda objects: api_container(objects).update(image=reference)


def init_container_writable(objects: list[Obj]) -> None:
    spec = find(objects, "Deployment", "prefect-api")["spec"]["template"]["spec"]
    init = copy.deepcopy(spec["containers"][0])
    init["securityContext"]["readOnlyRootFilesystem"] = False
    spec["initContainers"] = [{**init, "name": "init"}]


HARDENING_FLAWS: dict[str, tuple[Callable[[list[Obj]], None], str]] = {
    "writable root fs": (context_set("readOnlyRootFilesystem", False), "readOnlyRootFilesystem is not true"),
    "privilege escalation": (context_set("allowPrivilegeEscalation", True), "allowPrivilegeEscalation is not false"),
    "escalation unset": (context_drop("allowPrivilegeEscalation"), "allowPrivilegeEscalation is not false"),
    "capabilities kept": (context_set("capabilities", {"drop": ["NET_RAW"]}), "capabilities.drop lacks ALL"),
    "root allowed": (context_set("runAsNonRoot", False), "runAsNonRoot is not true"),
    "seccomp unconfined": (context_set("seccompProfile", {"type": "Unconfined"}),
                           "seccompProfile is not RuntimeDefault"),
    "no cpu request": (resources_drop("requests", "cpu"), "no cpu request"),
    "no memory limit": (resources_drop("limits", "memory"), "no memory limit"),
    "latest": (image("prefect-stack/prefect:latest"), "is not pinned"),
    "untagged": (image("registry:5000/prefect-stack/prefect"), "is not pinned"),
    "init container": (init_container_writable, "container init: readOnlyRootFilesystem is not true"),
}


class TestHardening:
    def test_stack(self) -> None:
        assert checks.pods_hardened(stack()) == []

    @pytest.mark.parametrize("reference", ["registry:5000/prefect-stack/prefect:3.8.8",
                                           "prefect-stack/prefect@sha256:" + "0" * 64])
    def test_pinned_images(self, reference: str) -> None:
        assert checks.pods_hardened(broken(image(reference))) == []

    @pytest.mark.parametrize("flaw", HARDENING_FLAWS)
    def test_flaw_reported(self, flaw: str) -> None:
        mutate, expected = HARDENING_FLAWS[flaw]
        [problem] = checks.pods_hardened(broken(mutate))
        assert problem.startswith("Deployment/prefect/prefect-api: container ") and expected in problem

    def test_pod_level_settings_count(self) -> None:
        # runAsNonRoot and seccomp set on the pod only are enough.
        objects = broken(lambda o: [context_drop("runAsNonRoot")(o), context_drop("seccompProfile")(o)])
        assert checks.pods_hardened(objects) == []

    def test_no_setting_at_either_level(self) -> None:
        objects = broken(lambda o: [context_drop("seccompProfile")(o), pod_context_drop("seccompProfile")(o)])
        assert checks.pods_hardened(objects) == [
            "Deployment/prefect/prefect-api: container api: seccompProfile is not RuntimeDefault"]

    def test_cron_job_checked(self) -> None:
        def writable(objects: list[Obj]) -> None:
            job = find(objects, "CronJob", "prefect-backup")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            job["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
        assert checks.pods_hardened(broken(writable)) == [
            "CronJob/prefect/prefect-backup: container backup: readOnlyRootFilesystem is not true"]

    def test_token_without_service_account(self) -> None:
        objects = broken(lambda o: find(o, "Deployment", "prefect-api")["spec"]["template"]["spec"].pop(
            "automountServiceAccountToken"))
        assert checks.pods_hardened(objects) == [
            "Deployment/prefect/prefect-api: mounts a service-account token without naming a service account"]

    def test_token_with_service_account(self) -> None:
        objects = broken(lambda o: find(o, "Deployment", "prefect-api")["spec"]["template"]["spec"].update(
            automountServiceAccountToken=True, serviceAccountName="prefect-api"))
        assert checks.pods_hardened(objects) == []


TINI = {"prefect-stack/prefect": ["/usr/bin/tini", "--"]}


def programs_in_args(objects: list[Obj]) -> list[Obj]:
    """The stack with every container's program in args: the image's entrypoint stays."""
    for obj in objects:
        template = checks.pod_template(obj)
        for box in (template or {}).get("spec", {}).get("containers", []):
            if "command" in box:
                box["args"] = box.pop("command")
    return objects


class TestInitIsPid1:
    def test_programs_in_args_keep_the_entrypoint(self) -> None:
        assert checks.init_is_pid_1(programs_in_args(stack()), TINI) == []

    def test_a_command_replaces_it(self) -> None:
        objects = programs_in_args(stack())
        api_container(objects)["command"] = ["prefect"]
        [problem] = checks.init_is_pid_1(objects, TINI)
        assert problem.startswith("Deployment/prefect/prefect-api: container api: command ['prefect']")

    def test_a_command_starting_with_the_init_keeps_it(self) -> None:
        objects = programs_in_args(stack())
        api_container(objects)["command"] = ["/usr/bin/tini", "--", "prefect"]
        assert checks.init_is_pid_1(objects, TINI) == []

    def test_other_images_are_not_checked(self) -> None:
        assert checks.init_is_pid_1(stack(), {"prefect-stack/system": ["/usr/bin/tini", "--"]}) == []

    def test_a_registry_prefix_still_matches(self) -> None:
        objects = programs_in_args(stack())
        api_container(objects).update(command=["prefect"], image="registry:5000/team/prefect-stack/prefect:1")
        assert len(checks.init_is_pid_1(objects, TINI)) == 1

    def test_a_shared_process_namespace_takes_pid_1(self) -> None:
        objects = programs_in_args(stack())
        find(objects, "Deployment", "prefect-api")["spec"]["template"]["spec"]["shareProcessNamespace"] = True
        [problem] = checks.init_is_pid_1(objects, TINI)
        assert "shares its process namespace" in problem


class TestNames:
    def test_stack(self) -> None:
        assert checks.names_valid(stack()) == []

    @pytest.mark.parametrize(("kind", "name"), [("ConfigMap", "Prefect_Config"), ("ConfigMap", "a" * 254),
                                                ("Service", "4200-api"), ("Service", "a" * 64),
                                                ("Namespace", "a.b")])
    def test_bad_name(self, kind: str, name: str) -> None:
        obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
        assert len(checks.names_valid([obj])) == 1

    @pytest.mark.parametrize("value", ["a" * 64, "-api", "api v2", "api/x"])
    def test_bad_label_value(self, value: str) -> None:
        objects = broken(lambda o: find(o, "Deployment", "prefect-api")["metadata"]["labels"].update(x=value))
        [problem] = checks.names_valid(objects)
        assert "metadata.labels: x=" in problem

    def test_bad_pod_template_label(self) -> None:
        objects = broken(lambda o: find(o, "Deployment", "prefect-api")["spec"]["template"]["metadata"][
            "labels"].update({"bad key!": "v"}))
        [problem] = checks.names_valid(objects)
        assert "pod template labels: label key 'bad key!'" in problem


SECRET = "s3cr3t-Value/with+chars"


class TestSecretValues:
    def test_stack(self) -> None:
        assert checks.no_secret_values(stack(), [SECRET]) == []

    def test_plain_value_in_env(self) -> None:
        objects = broken(lambda o: api_container(o).update(env=[{"name": "PASSWORD", "value": f"x{SECRET}x"}]))
        assert checks.no_secret_values(objects, ["other", SECRET]) == [
            "Deployment/prefect/prefect-api: spec.template.spec.containers[0].env[0].value holds secret #1 "
            "(or its base64)"]

    def test_base64_in_config_map(self) -> None:
        encoded = base64.b64encode(SECRET.encode()).decode()
        objects = broken(lambda o: find(o, "ConfigMap", "prefect-config")["data"].update(a=encoded))
        assert len(checks.no_secret_values(objects, [SECRET])) == 1

    def test_secret_objects_may_hold_them(self) -> None:
        objects = [*stack(), {"apiVersion": "v1", "kind": "Secret", "metadata": meta("s"),
                              "stringData": {"password": SECRET}}]
        assert checks.no_secret_values(objects, [SECRET]) == []

    def test_value_never_in_the_report(self) -> None:
        objects = broken(lambda o: api_container(o).update(args=[SECRET]))
        assert SECRET not in "".join(checks.no_secret_values(objects, [SECRET]))


class TestNamespace:
    def test_stack(self) -> None:
        assert checks.namespace_restricted(stack()) == []

    def test_baseline(self) -> None:
        objects = broken(lambda o: o[0]["metadata"]["labels"].update(
            {"pod-security.kubernetes.io/enforce": "baseline"}))
        assert checks.namespace_restricted(objects) == [
            "Namespace/prefect: label pod-security.kubernetes.io/enforce is 'baseline', not 'restricted'"]

    def test_not_rendered(self) -> None:
        assert checks.namespace_restricted(stack()[1:]) == [
            "namespace prefect: objects live there but no Namespace object is rendered"]


def _egress(*rules: Obj) -> Obj:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("prefect-out"),
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": list(rules)}}


class TestClusterServicesReachedByPort:
    def test_ports_alone_pass(self) -> None:
        dns = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
        objects = [_egress({"ports": dns}, {"ports": [{"port": 443}, {"port": 6443}]})]
        assert checks.cluster_services_reached_by_port(objects) == []

    @pytest.mark.parametrize(("peer", "port"), [
        ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}, 53),
        ({"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}, 53),
        ({"ipBlock": {"cidr": "0.0.0.0/0"}}, 6443),
    ])
    def test_a_peer_on_dns_or_the_api_server_is_reported(self, peer: Obj, port: int) -> None:
        problems = checks.cluster_services_reached_by_port([_egress({"to": [peer], "ports": [{"port": port}]})])
        assert len(problems) == 1 and f"(port {port})" in problems[0]

    def test_other_ports_may_name_peers(self) -> None:
        assert checks.cluster_services_reached_by_port(
            [_egress({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]})]) == []


class TestReplicasSpreadOverNodes:
    def test_preferred_spread_is_reported(self) -> None:
        def prefer(objects: list[Obj]) -> None:
            find(objects, "Deployment", "prefect-api")["spec"]["template"]["spec"]["topologySpreadConstraints"][0][
                "whenUnsatisfiable"] = "ScheduleAnyway"
        assert checks.replicas_spread_over_nodes(broken(prefer)) == [
            "Deployment/prefect/prefect-api: 2 replicas without a DoNotSchedule topology spread over "
            "kubernetes.io/hostname"]

    def test_a_pooler_without_spread_is_reported(self) -> None:
        def drop(objects: list[Obj]) -> None:
            del find(objects, "Pooler", "prefect-pooler-transaction")["spec"]["template"]["spec"][
                "topologySpreadConstraints"]
        assert len(checks.replicas_spread_over_nodes(broken(drop))) == 1

    def test_a_single_replica_needs_no_spread(self) -> None:
        assert checks.replicas_spread_over_nodes([deployment("services", replicas=1) | {"spec": {
            "replicas": 1, "template": {"spec": {}}}}]) == []

    @pytest.mark.parametrize(("affinity", "expected"), [
        ({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": labels("redis")}}]}}, 0),
        ({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}}, 1),
        ({}, 1),
    ])
    def test_a_stateful_set_needs_required_anti_affinity(self, affinity: Obj, expected: int) -> None:
        redis = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("prefect-redis", "redis"),
                 "spec": {"replicas": 3, "template": {"spec": {"affinity": affinity}}}}
        assert len(checks.replicas_spread_over_nodes([redis])) == expected


def redis_pod(*, exporter_readiness: bool = False, sentinel_limits: Obj | None = None) -> Obj:
    """A Redis StatefulSet: Redis, Sentinel and an exporter, requests equal to limits in each."""
    guaranteed = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}
    probe = {"tcpSocket": {"port": "metrics"}}
    containers = [
        {"name": "redis", "ports": [{"name": "redis", "containerPort": 6379}], "resources": guaranteed,
         "readinessProbe": {"exec": {"command": ["true"]}}},
        {"name": "sentinel", "ports": [{"name": "sentinel", "containerPort": 26379}],
         "resources": {**guaranteed, "limits": sentinel_limits or guaranteed["limits"]},
         "readinessProbe": {"exec": {"command": ["true"]}}},
        {"name": "exporter", "ports": [{"name": "metrics", "containerPort": 9121}], "resources": guaranteed,
         "livenessProbe": probe, **({"readinessProbe": probe} if exporter_readiness else {})},
    ]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("prefect-redis", "redis"),
            "spec": {"replicas": 3, "template": {"spec": {"containers": containers}}}}


class TestDataPodsGuaranteed:
    def test_redis(self) -> None:
        assert checks.data_pods_guaranteed([redis_pod()]) == []

    @pytest.mark.parametrize(("limits", "expected"), [
        ({"cpu": "1", "memory": "1Gi"}, "container sentinel: cpu request 500m and limit 1 differ"),
        ({"memory": "1Gi"}, "container sentinel: cpu request 500m and limit None differ"),
        ({"cpu": "500m", "memory": "2Gi"}, "container sentinel: memory request 1Gi and limit 2Gi differ"),
    ])
    def test_a_sidecar_below_its_limits(self, limits: Obj, expected: str) -> None:
        assert checks.data_pods_guaranteed([redis_pod(sentinel_limits=limits)]) == [
            f"StatefulSet/prefect/prefect-redis: {expected}"]

    def test_cluster_instances(self) -> None:
        objects = broken(lambda o: find(o, "Cluster", "prefect-db")["spec"]["resources"]["limits"].pop("cpu"))
        assert checks.data_pods_guaranteed(objects) == [
            "Cluster/prefect/prefect-db: instances: cpu request 1 and limit None differ"]

    def test_backup_sidecar(self) -> None:
        objects = broken(lambda o: find(o, "ObjectStore", "prefect-backups")["spec"].pop(
            "instanceSidecarConfiguration"))
        assert len(checks.data_pods_guaranteed(objects)) == 2  # cpu and memory

    def test_stateless_pods_may_burst(self) -> None:
        assert checks.data_pods_guaranteed([deployment("api")]) == []


class TestMetricsSidecars:
    def test_liveness_only(self) -> None:
        assert checks.metrics_sidecars_do_not_gate_readiness([redis_pod()]) == []

    def test_readiness_reported(self) -> None:
        assert checks.metrics_sidecars_do_not_gate_readiness([redis_pod(exporter_readiness=True)]) == [
            "StatefulSet/prefect/prefect-redis: the metrics sidecar exporter has a readiness probe: it decides "
            "whether the pod is Ready"]

    def test_an_exporter_alone_in_its_pod_may_have_one(self) -> None:
        pod = redis_pod(exporter_readiness=True)
        containers = pod["spec"]["template"]["spec"]["containers"]
        pod["spec"]["template"]["spec"]["containers"] = containers[-1:]
        assert checks.metrics_sidecars_do_not_gate_readiness([pod]) == []


@pytest.mark.parametrize("name", checks.INVARIANTS)
def test_stack_passes_every_invariant(name: str) -> None:
    assert checks.INVARIANTS[name](stack()) == []


def test_invariant_problems_names_each_invariant() -> None:
    problems = checks.invariant_problems(stack(), external_secrets=EXTERNAL_SECRETS, secrets=[SECRET])
    assert problems == {name: [] for name in [*checks.INVARIANTS, "references_exist", "no_secret_values"]}


class TestKustomize:
    @pytest.fixture
    def tree(self, tmp_path: Path) -> Path:
        objects = [find(stack(), "Deployment", "prefect-api"), find(stack(), "Service", "prefect-api")]
        for obj in objects:
            obj["metadata"].pop("namespace")
            (tmp_path / f"{obj['metadata']['name']}-{obj['kind'].lower()}.yaml").write_text(yaml.safe_dump(obj))
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": NS,
            "resources": sorted(p.name for p in tmp_path.glob("prefect-*.yaml"))}))
        return tmp_path

    def test_build_gives_back_the_objects(self, tree: Path) -> None:
        expected = [find(stack(), "Deployment", "prefect-api"), find(stack(), "Service", "prefect-api")]
        assert checks.compare_objects(expected, checks.kustomize_build(tree)) == []

    def test_difference_reported(self, tree: Path) -> None:
        expected = [deployment("api", replicas=3), find(stack(), "Service", "prefect-api")]
        assert checks.compare_objects(expected, checks.kustomize_build(tree)) == [
            "('apps/v1', 'Deployment', 'prefect', 'prefect-api'): differs at spec.replicas differs"]

    def test_missing_and_extra_reported(self, tree: Path) -> None:
        expected = [find(stack(), "Deployment", "prefect-api"), find(stack(), "ConfigMap", "prefect-config")]
        assert checks.compare_objects(expected, checks.kustomize_build(tree)) == [
            "('v1', 'ConfigMap', 'prefect', 'prefect-config'): only expected",
            "('v1', 'Service', 'prefect', 'prefect-api'): only actual"]

    def test_broken_tree(self, tree: Path) -> None:
        (tree / "kustomization.yaml").write_text("resources: [absent.yaml]\n")
        with pytest.raises(checks.KustomizeFailed, match=r"absent\.yaml"):
            checks.kustomize_build(tree)
