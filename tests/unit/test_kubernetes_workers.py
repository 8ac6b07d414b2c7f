"""Workers on Kubernetes, offline: RBAC exactly what prefect-kubernetes calls, the worker Deployments, the pools'
base job template rendered by Prefect's own code into a Job a strict API server accepts (restricted Pod Security, the
credentials from a Secret), the provisioning Job, and NetworkPolicies that let workers and flow-run pods reach the API
and nothing else of the stack."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from infra.compose.project import placeholder_secrets
from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.kubernetes import workers
from infra.kubernetes.objects import Manifest
from infra.kubernetes.render import PlaceholderImages, Rendering, reference_rendering
from infra.kubernetes.secrets import secret_objects
from infra.render.workers import worker_command
from infra.work_pools.provision import from_document
from tests import kubernetes_checks as checks

IMAGE = PlaceholderImages().prefect
AWS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-example-secret"}
# The worker process's own auth string, as Prefect would copy it into a flow run's environment.
WORKER_AUTH = "admin:worker-process-literal-Xq3"
# What a strict reading of prefect-kubernetes 0.8.0 needs (see workers.WORKER_RULES for the calls behind each).
EXPECTED_RULES = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    # Two entries for one pool (different queues and limits: two Deployments), and a second pool.
    "two-pools": {"workers": {
        "pools": [{"name": "default", "queues": [{"name": "default"}, {"name": "urgent", "priority": 1}]},
                  {"name": "gpu", "job_variables": {"cpu_limit": "4", "memory_limit": "8Gi",
                                                   "env": {"CUDA_VISIBLE_DEVICES": "0"}}}],
        "workers": [{"pool": "default", "count": 2, "queues": ["default"]},
                    {"pool": "default", "count": 1, "queues": ["urgent"], "limit": 3,
                     "resources": {"cpu_request": "200m", "memory_request": "512Mi", "memory_limit": "2Gi"}},
                    {"pool": "gpu", "count": 1}]}},
    "flow-runs-elsewhere": {"kubernetes": {"flow_run_namespace": "flows",
                                           "scheduling": {"image_pull_secrets": ["registry-credentials"]}}},
}


def _config(name: str) -> StackConfig:
    return load_config(target="kubernetes", **CONFIGS[name])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def rendering(request: pytest.FixtureRequest) -> Rendering:
    return reference_rendering(_config(request.param))


def _of(rendering: Rendering, kind: str, component: str | None = None) -> list[dict[str, Any]]:
    return [o for o in rendering.objects() if o["kind"] == kind
            and (component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component)]


def _manifest(rendering: Rendering, kind: str, name: str) -> Manifest:
    return next(m for m in rendering.manifests if m.kind == kind and m.name == name)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _runs(config: StackConfig) -> str:
    return config.kubernetes.flow_run_namespace or config.kubernetes.namespace


# --- RBAC --------------------------------------------------------------------------------------------------------


class TestRbac:
    def test_one_role_per_pool_with_exactly_the_workers_calls(self, rendering: Rendering) -> None:
        roles = _of(rendering, "Role")
        assert {r["metadata"]["name"] for r in roles} == {
            f"prefect-worker-{p.name}" for p in rendering.config.workers.pools}
        assert all(r["rules"] == EXPECTED_RULES for r in roles)

    def test_roles_and_bindings_live_in_the_flow_run_namespace(self, rendering: Rendering) -> None:
        placed = {o["metadata"]["namespace"] for o in _of(rendering, "Role") + _of(rendering, "RoleBinding")}
        assert placed == {_runs(rendering.config)}

    def test_nothing_cluster_wide(self, rendering: Rendering) -> None:
        assert not [o for o in rendering.objects() if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]

    def test_each_binding_gives_its_pools_account_its_role(self, rendering: Rendering) -> None:
        for binding in _of(rendering, "RoleBinding"):
            name = binding["metadata"]["name"]
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                            "namespace": rendering.config.kubernetes.namespace}]

    def test_worker_pods_run_as_their_pools_account(self, rendering: Rendering) -> None:
        for deployment in _of(rendering, "Deployment", "worker"):
            pool = deployment["metadata"]["labels"]["prefect-stack.io/work-pool"]
            assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"prefect-worker-{pool}"

    def test_no_other_pod_uses_a_workers_account(self, rendering: Rendering) -> None:
        accounts = {a["metadata"]["name"] for a in _of(rendering, "ServiceAccount", "worker")}
        others = [checks.describe(o) for o in rendering.objects() if o["kind"] != "Deployment"
                  or o["metadata"]["labels"].get("app.kubernetes.io/component") != "worker"
                  if (checks.pod_template(o) or {}).get("spec", {}).get("serviceAccountName") in accounts]
        assert others == []

    def test_the_flow_run_account_has_no_token(self, rendering: Rendering) -> None:
        [account] = _of(rendering, "ServiceAccount", "flow-run")
        assert account["metadata"]["namespace"] == _runs(rendering.config)
        assert account["automountServiceAccountToken"] is False


# --- the worker Deployments ---------------------------------------------------------------------------------------


class TestWorkerDeployments:
    def test_one_per_workers_entry_with_its_count(self, rendering: Rendering) -> None:
        deployments = _of(rendering, "Deployment", "worker")
        assert sorted(d["spec"]["replicas"] for d in deployments) == sorted(
            w.count for w in rendering.config.workers.workers)

    def test_entries_of_one_pool_are_numbered(self) -> None:
        names = {d["metadata"]["name"] for d in _of(reference_rendering(_config("two-pools")), "Deployment", "worker")}
        assert names == {"prefect-worker-default", "prefect-worker-default-2", "prefect-worker-gpu"}

    def test_runs_the_shared_worker_command_named_after_its_pod(self, rendering: Rendering) -> None:
        entries = workers.worker_deployments(rendering.config)
        for entry in entries:
            deployment = _manifest(rendering, "Deployment", f"prefect-worker-{entry.pool}"
                                   + ("" if entry.entry == 1 else f"-{entry.entry}")).obj
            [container] = deployment["spec"]["template"]["spec"]["containers"]
            expected = worker_command("/opt/prefect-stack/.venv/bin/prefect", "kubernetes", "$(POD_NAME)",
                                      entry.worker)
            assert container["args"] == list(expected)
            assert container["resources"]["requests"] == {"cpu": entry.worker.resources.cpu_request,
                                                          "memory": entry.worker.resources.memory_request}
            assert _env(container)["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    def test_credentials_from_the_stacks_secret(self, rendering: Rendering) -> None:
        for deployment in _of(rendering, "Deployment", "worker"):
            env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
            assert env["PREFECT_API_AUTH_STRING"] == {"name": "PREFECT_API_AUTH_STRING", "valueFrom": {
                "secretKeyRef": {"name": "prefect-stack-secrets", "key": "prefect_auth"}}}

    def test_api_reached_in_the_cluster(self, rendering: Rendering) -> None:
        namespace = rendering.config.kubernetes.namespace
        for deployment in _of(rendering, "Deployment", "worker"):
            env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
            assert env["PREFECT_API_URL"]["value"] == f"http://prefect-api.{namespace}.svc:4200/api"

    def test_probes_on_the_health_endpoint_it_serves(self, rendering: Rendering) -> None:
        for deployment in _of(rendering, "Deployment", "worker"):
            [container] = deployment["spec"]["template"]["spec"]["containers"]
            env = _env(container)
            port = next(p for p in container["ports"] if p["name"] == "health")["containerPort"]
            assert env["PREFECT_WORKER_WEBSERVER_PORT"]["value"] == str(port)
            assert env["PREFECT_WORKER_WEBSERVER_HOST"]["value"] == "0.0.0.0"  # noqa: S104 - the pod's address
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"] == {"path": "/health", "port": "health", "scheme": "HTTP"}

    def test_observer_watches_only_the_flow_run_namespace(self, rendering: Rendering) -> None:
        for deployment in _of(rendering, "Deployment", "worker"):
            env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
            assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"] == _runs(rendering.config)

    def test_prefect_home_and_tmp_writable_on_a_read_only_root(self, rendering: Rendering) -> None:
        for deployment in _of(rendering, "Deployment", "worker"):
            pod = deployment["spec"]["template"]["spec"]
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
            home = _env(pod["containers"][0])["PREFECT_HOME"]["value"]
            assert mounts["/tmp"] in empty
            assert any(home.startswith(path) and name in empty for path, name in mounts.items())

    def test_a_pdb_exactly_for_entries_of_two_or_more(self) -> None:
        rendering = reference_rendering(_config("two-pools"))
        pdbs = {p["metadata"]["name"] for p in _of(rendering, "PodDisruptionBudget", "worker")}
        assert pdbs == {"prefect-worker-default"}

    def test_applied_after_the_pools_are_provisioned(self, rendering: Rendering) -> None:
        phases = {m.phase for m in rendering.manifests if m.kind == "Deployment"
                  and m.obj["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}
        assert phases == {"workers"}

    def test_none_without_workers(self) -> None:
        rendering = reference_rendering(load_config(target="kubernetes", workers={"enabled": False}))
        found = [checks.describe(o) for o in rendering.objects()
                 if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") in
                 ("worker", "work-pools", "flow-run")]
        assert found == []


# --- the pools' base job template, rendered by Prefect -----------------------------------------------------------


class _NoServer:
    """Stands for Prefect's client: the template has no block or variable reference, so it is never called."""


def worker_process_environment(rendering: Rendering, pool: str) -> dict[str, str]:
    """What the worker process's Prefect settings hold (Prefect copies them into each flow run): its plain env, and
    its auth string as the secretKeyRef resolves it in the pod."""
    deployment = _manifest(rendering, "Deployment", f"prefect-worker-{pool}").obj
    env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
    plain = {name: entry["value"] for name, entry in env.items() if "value" in entry and name.startswith("PREFECT_")
             and not name.startswith("PREFECT_INTEGRATIONS_")}
    return {**plain, "PREFECT_API_AUTH_STRING": WORKER_AUTH}


def flow_run_job(rendering: Rendering, pool: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Job the pool's worker creates for a flow run: Prefect's own templating and preparation, then the worker's
    own replacement of the auth string by its Secret (from the worker Deployment's settings)."""
    spec = next(p for p in workers.kubernetes_pools(rendering.config, IMAGE) if p.name == pool)
    worker_env = _env(_manifest(rendering, "Deployment", f"prefect-worker-{pool}")
                      .obj["spec"]["template"]["spec"]["containers"][0])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KubernetesWorkerJobConfiguration, "_base_environment",
                      classmethod(lambda cls: worker_process_environment(rendering, pool)))
        configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
            copy.deepcopy(spec.base_job_template), values or {}, client=_NoServer()))  # type: ignore[arg-type]
        configuration.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="bright-otter", flow_id=uuid.uuid4()),
                                           worker_name="prefect-worker-default-7d9f-abcde")
    secret = worker_env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"]["value"]
    key = worker_env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"]["value"]
    asyncio.run(KubernetesWorker._replace_env_variable_with_secret(  # the worker's own step (self is unused)
        None, "PREFECT_API_AUTH_STRING", configuration, secret, key))  # type: ignore[arg-type]
    job: dict[str, Any] = configuration.job_manifest
    # kubectl would create it with a name; the API server gives a generateName one.
    job["metadata"]["name"] = job["metadata"]["generateName"] + "x7k2p"
    return job


def schema_ready(job: dict[str, Any]) -> dict[str, Any]:
    """The Job without the two Job fields Prefect insists on in the pod spec, which the API server drops."""
    ready = copy.deepcopy(job)
    for field in workers.PREFECT_POD_SPEC_EXTRAS:
        ready["spec"]["template"]["spec"].pop(field)
    return ready


VARIABLE_CASES = {
    "defaults": {},
    "a deployment's overrides": {"cpu_request": "1", "cpu_limit": "2", "memory_limit": "4Gi",
                                 "env": {"MY_SETTING": "1"}, "labels": {"team": "data"},
                                 "annotations": {"example.com/owner": "data"}, "finished_job_ttl": 600},
}


class TestFlowRunJob:
    @pytest.mark.parametrize("case", sorted(VARIABLE_CASES))
    def test_validates_strictly(self, rendering: Rendering, case: str) -> None:
        job = flow_run_job(rendering, "default", VARIABLE_CASES[case])
        assert checks.validate_objects([schema_ready(job)], rendering.config.kubernetes.version) == []

    def test_the_template_keeps_prefects_placeholders(self, rendering: Rendering) -> None:
        [spec] = [p for p in workers.kubernetes_pools(rendering.config, IMAGE) if p.name == "default"]
        text = json.dumps(spec.base_job_template["job_configuration"]["job_manifest"])
        for placeholder in ("{{ image }}", "{{ command }}", "{{ namespace }}", "{{ labels }}", "{{ name }}-",
                            "{{ service_account_name }}", "{{ cpu_request }}", "{{ memory_limit }}",
                            "{{ backoff_limit }}", "{{ finished_job_ttl }}"):
            assert placeholder in text

    def test_restricted_pod_security_and_a_read_only_root(self, rendering: Rendering) -> None:
        job = flow_run_job(rendering, "default")
        pod = job["spec"]["template"]["spec"]
        assert [checks.container_problems(pod, c) for c in pod["containers"]] == [[]]

    def test_in_the_flow_run_namespace_as_the_tokenless_account(self, rendering: Rendering) -> None:
        job = flow_run_job(rendering, "default")
        assert job["metadata"]["namespace"] == _runs(rendering.config)
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-flow-run"
        account = _of(rendering, "ServiceAccount", "flow-run")[0]
        assert account["automountServiceAccountToken"] is False
        assert "automountServiceAccountToken" not in job["spec"]["template"]["spec"]  # the account decides

    def test_the_projects_image(self, rendering: Rendering) -> None:
        [container] = flow_run_job(rendering, "default")["spec"]["template"]["spec"]["containers"]
        assert container["image"] == IMAGE

    def test_credentials_from_a_secret_of_its_namespace_never_a_literal(self, rendering: Rendering) -> None:
        job = flow_run_job(rendering, "default")
        env = _env(job["spec"]["template"]["spec"]["containers"][0])
        expected = "prefect-stack-secrets" if not rendering.config.kubernetes.flow_run_namespace \
            else "prefect-flow-run-auth"
        assert env["PREFECT_API_AUTH_STRING"]["valueFrom"] == {"secretKeyRef": {"name": expected,
                                                                                "key": "prefect_auth"}}
        assert WORKER_AUTH not in json.dumps(job)
        assert checks.no_secret_values([job], [placeholder_secrets().get("prefect_auth")]) == []

    def test_the_secret_it_reads_exists_there(self, rendering: Rendering) -> None:
        config = rendering.config
        made = secret_objects(config, placeholder_secrets(), AWS)
        job = flow_run_job(rendering, "default")
        ref = _env(job["spec"]["template"]["spec"]["containers"][0])["PREFECT_API_AUTH_STRING"]["valueFrom"]
        found = [s for s in made if s["metadata"]["name"] == ref["secretKeyRef"]["name"]
                 and s["metadata"]["namespace"] == job["metadata"]["namespace"]]
        assert len(found) == 1
        value = base64.b64decode(found[0]["data"][ref["secretKeyRef"]["key"]]).decode()
        assert value == placeholder_secrets().get("prefect_auth")

    def test_api_in_the_cluster_and_the_heartbeat_set(self, rendering: Rendering) -> None:
        env = _env(flow_run_job(rendering, "default")["spec"]["template"]["spec"]["containers"][0])
        namespace = rendering.config.kubernetes.namespace
        assert env["PREFECT_API_URL"]["value"] == f"http://prefect-api.{namespace}.svc:4200/api"
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]["value"] == str(rendering.config.workers.flow_heartbeat_s)

    def test_requests_and_limits_from_the_variables(self, rendering: Rendering) -> None:
        job = flow_run_job(rendering, "default", {"cpu_limit": "2", "memory_request": "1Gi"})
        resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources == {"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}

    def test_the_models_job_variables_win(self) -> None:
        rendering = reference_rendering(_config("two-pools"))
        job = flow_run_job(rendering, "gpu")
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}
        assert _env(container)["CUDA_VISIBLE_DEVICES"]["value"] == "0"

    def test_pulls_with_the_stacks_registry_credentials(self) -> None:
        job = flow_run_job(reference_rendering(_config("flow-runs-elsewhere")), "default")
        assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]

    def test_a_bad_job_variable_is_refused_at_render(self) -> None:
        config = load_config(target="kubernetes", workers={"pools": [
            {"name": "default", "job_variables": {"cpu_requests": "1"}}]})
        with pytest.raises(UserError, match="cpu_requests"):
            reference_rendering(config)


# --- provisioning ------------------------------------------------------------------------------------------------


class TestProvisioning:
    def test_the_plan_is_the_models(self, rendering: Rendering) -> None:
        [config_map] = _of(rendering, "ConfigMap", "work-pools")
        document = json.loads(config_map["data"]["plan.json"])
        assert document == json.loads(json.dumps(workers.plan(rendering.config, IMAGE)))
        pools, automations = from_document(document)
        assert [p.name for p in pools] == [p.name for p in rendering.config.workers.pools]
        assert {p.type for p in pools} == {"kubernetes"} and automations

    def test_runs_the_provisioning_module_on_the_mounted_plan(self, rendering: Rendering) -> None:
        [job] = _of(rendering, "Job", "work-pools")
        pod = job["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["args"][1:] == ["-m", "infra.work_pools", "/var/lib/prefect-stack/plan/plan.json"]
        plan = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/prefect-stack/plan")
        volume = next(v for v in pod["volumes"] if v["name"] == plan["name"])
        assert volume["configMap"]["name"] == "prefect-work-pools" and plan.get("readOnly") is True

    def test_credentials_from_the_stacks_secret(self, rendering: Rendering) -> None:
        [job] = _of(rendering, "Job", "work-pools")
        env = _env(job["spec"]["template"]["spec"]["containers"][0])
        assert env["PREFECT_API_AUTH_STRING"]["valueFrom"] == {
            "secretKeyRef": {"name": "prefect-stack-secrets", "key": "prefect_auth"}}
        assert env["PREFECT_API_URL"]["value"].startswith("http://prefect-api.")

    def test_runs_at_every_deploy_between_the_apps_and_the_workers(self, rendering: Rendering) -> None:
        manifest = _manifest(rendering, "Job", "prefect-work-pools")
        assert manifest.rerun and manifest.phase == "pools"


# --- network policies ----------------------------------------------------------------------------------------------


def _flow_run_workload(rendering: Rendering) -> dict[str, Any]:
    return flow_run_job(rendering, "default")


def _named(rendering: Rendering, kind: str, name: str) -> dict[str, Any]:
    return _manifest(rendering, kind, name).obj


class TestNetworkPolicies:
    def test_flow_runs_reach_the_api(self, rendering: Rendering) -> None:
        job = _flow_run_workload(rendering)
        objects = [*rendering.objects(), job]
        assert checks.flow_problems(objects, job, _named(rendering, "Deployment", "prefect-api"), 4200) == []

    def test_workers_reach_the_api(self, rendering: Rendering) -> None:
        for worker in _of(rendering, "Deployment", "worker"):
            assert checks.flow_problems(rendering.objects(), worker, _named(rendering, "Deployment", "prefect-api"),
                                        4200) == []

    def test_provisioning_reaches_the_api(self, rendering: Rendering) -> None:
        [job] = _of(rendering, "Job", "work-pools")
        assert checks.flow_problems(rendering.objects(), job, _named(rendering, "Deployment", "prefect-api"),
                                    4200) == []

    @pytest.mark.parametrize("target, port", [("prefect-redis", 6379), ("prefect-services", 4200),
                                              ("prefect-worker-default", 8080)])
    def test_flow_runs_reach_nothing_else_of_the_stack(self, rendering: Rendering, target: str, port: int) -> None:
        job = _flow_run_workload(rendering)
        objects = [*rendering.objects(), job]
        destination = next(o for o in objects if o["metadata"]["name"] == target and checks.pod_labels(o))
        assert checks.flow_problems(objects, job, destination, port) != []

    def test_flow_runs_reach_not_the_database(self, rendering: Rendering) -> None:
        job = _flow_run_workload(rendering)
        objects = [*rendering.objects(), job]
        pooler = next(o for o in objects if o["kind"] == "Pooler")
        assert checks.flow_problems(objects, job, pooler, 5432) != []

    def test_the_flow_run_policy_allows_only_the_api_and_dns(self, rendering: Rendering) -> None:
        policy = _named(rendering, "NetworkPolicy", "prefect-flow-runs")
        ports = sorted((p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"])
        elsewhere = bool(rendering.config.kubernetes.flow_run_namespace)
        assert ports == sorted([("TCP", 4200), *([("TCP", 53), ("UDP", 53)] if elsewhere else [])])
        assert policy["spec"]["ingress"] == [] and policy["metadata"]["namespace"] == _runs(rendering.config)

    def test_workers_reach_the_kubernetes_api_server_by_port(self, rendering: Rendering) -> None:
        policy = _named(rendering, "NetworkPolicy", "prefect-workers")
        assert {"ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]} in \
            policy["spec"]["egress"]

    def test_workers_take_no_connection(self, rendering: Rendering) -> None:
        policy = _named(rendering, "NetworkPolicy", "prefect-workers")
        assert policy["spec"]["ingress"] == [] and "Ingress" in policy["spec"]["policyTypes"]


# --- a flow-run namespace of its own ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    """A rendering with objects in a namespace the operator creates (docs/workers.md), and that Namespace."""
    operators = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flows", "labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}}
    return [*reference_rendering(_config("flow-runs-elsewhere")).objects(), operators]


class TestFlowRunNamespace:
    """What the repository's rendering tests check for the stack's namespace, for the flow-run namespace too."""

    def test_schemas(self, objects: list[dict[str, Any]]) -> None:
        assert checks.validate_objects(objects, "1.32") == []

    @pytest.mark.parametrize("invariant", sorted(checks.INVARIANTS))
    def test_invariants(self, objects: list[dict[str, Any]], invariant: str) -> None:
        assert checks.INVARIANTS[invariant](objects) == []

    def test_only_flow_run_objects_there(self, objects: list[dict[str, Any]]) -> None:
        there = {(o["kind"], o["metadata"]["name"]) for o in objects if o["metadata"].get("namespace") == "flows"}
        assert there == {("Role", "prefect-worker-default"), ("RoleBinding", "prefect-worker-default"),
                         ("ServiceAccount", "prefect-flow-run"), ("NetworkPolicy", "prefect-flow-runs")}

    def test_the_credentials_copy_is_declared_and_holds_one_key(self) -> None:
        config = _config("flow-runs-elsewhere")
        rendering = reference_rendering(config)
        [copied] = [s for s in secret_objects(config, placeholder_secrets(), AWS)
                    if s["metadata"]["namespace"] == "flows"]
        assert copied["metadata"]["name"] in rendering.external_secrets
        assert list(copied["data"]) == ["prefect_auth"]
