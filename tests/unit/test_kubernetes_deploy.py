"""Deploy to Kubernetes against a stand-in kubectl (tests/fake_kubectl.py): phases, waits, secrets, failures, prune.

Each scenario deploys once (a class-scoped fixture) and its tests read the recorded kubectl calls. The rendering is
made by hand here, so these tests do not depend on the renderers.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.kubernetes.deploy import KubernetesDeployReport, deploy
from infra.kubernetes.kubectl import Kubectl, KubectlError, resource
from infra.kubernetes.objects import PHASES, Manifest, Names, flow_run_namespace, labels, metadata
from infra.kubernetes.render import Rendering
from infra.kubernetes.secret_hashes import ANNOTATION
from infra.progress import PlainProgress, QuietProgress
from tests.fake_kubectl import Call, StandIn

SECRET_VALUES = ("pg-superuser-Zq81xP", "redis-pass-Lm29Kd")
MIGRATE_JOB = "prefect-migrate-3-8-8-abc123"


def kubernetes_config(**kubernetes: Any) -> StackConfig:
    return load_config(target="kubernetes", kubernetes=kubernetes)


def _obj(config: StackConfig, api_version: str, kind: str, name: str, component: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata(config, name, component), "spec": {}}


def _in(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    obj["metadata"]["namespace"] = namespace
    return obj


def sample_rendering(config: StackConfig) -> Rendering:
    """One object of each kind the stack renders, in its phase."""
    n = Names.of(config)
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": config.kubernetes.namespace, "labels": labels(config, "namespace")}}
    manifests = [
        Manifest(namespace, "namespace"),
        Manifest(_obj(config, "networking.k8s.io/v1", "NetworkPolicy", n("default-deny"), "network"), "namespace",
                 "network-policies"),
        Manifest(_obj(config, "barmancloud.cnpg.io/v1", "ObjectStore", n("backups"), "database"), "data",
                 "physical-backups"),
        Manifest(_obj(config, "postgresql.cnpg.io/v1", "Cluster", n.database, "database"), "data"),
        Manifest(_obj(config, "postgresql.cnpg.io/v1", "Pooler", n.pooler_transaction, "pooler"), "data"),
        Manifest(_obj(config, "postgresql.cnpg.io/v1", "Pooler", n.pooler_session, "pooler"), "data"),
        Manifest(_obj(config, "apps/v1", "StatefulSet", n.redis, "redis"), "data"),
        Manifest(_obj(config, "v1", "Service", n.redis, "redis"), "data"),
        Manifest(_obj(config, "batch/v1", "Job", MIGRATE_JOB, "migrate"), "migrate"),
        Manifest(_obj(config, "apps/v1", "Deployment", n.api, "api"), "apps"),
        Manifest(_obj(config, "apps/v1", "Deployment", n.services, "services"), "apps"),
        Manifest(_obj(config, "v1", "Service", n.api, "api"), "apps"),
        Manifest(_obj(config, "batch/v1", "CronJob", n.backup, "backup"), "apps"),
        Manifest(_obj(config, "v1", "ConfigMap", n.work_pools, "work-pools"), "pools"),
        Manifest(_obj(config, "batch/v1", "Job", n.work_pools, "work-pools"), "pools", rerun=True),
        Manifest(_obj(config, "v1", "ServiceAccount", n.worker_account("default"), "worker"), "workers"),
        Manifest(_in(_obj(config, "rbac.authorization.k8s.io/v1", "Role", n.worker_account("default"), "worker"),
                     flow_run_namespace(config)), "workers"),
        Manifest(_obj(config, "apps/v1", "Deployment", n.worker("default"), "worker"), "workers"),
        Manifest(_obj(config, "monitoring.coreos.com/v1", "ServiceMonitor", n.api, "api"), "monitoring",
                 "monitoring"),
    ]
    return Rendering(config, manifests)


def sample_secrets(config: StackConfig) -> list[dict[str, Any]]:
    n = Names.of(config)
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": metadata(config, n.secret_db_superuser, "database"),
         "type": "kubernetes.io/basic-auth", "stringData": {"username": "postgres", "password": SECRET_VALUES[0]}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": metadata(config, n.secret_redis, "redis"),
         "data": {"password": base64.b64encode(SECRET_VALUES[1].encode()).decode()}},
    ]


def every_secret_form() -> list[str]:
    return [*SECRET_VALUES, *(base64.b64encode(v.encode()).decode() for v in SECRET_VALUES)]


# Ids, not the values: pytest puts the running test's id in PYTEST_CURRENT_TEST, which kubectl inherits, so an id
# holding a secret would "leak" into the very environment the tests inspect.
SECRET_FORM_IDS = [f"form-{i}" for i in range(len(every_secret_form()))]


def live(config: StackConfig, api_version: str, kind: str, name: str, *, manager: str = "prefect-stack",
         owner: str | None = None, instance: str | None = None) -> dict[str, Any]:
    """A live object as `kubectl get --show-managed-fields -o json` lists it."""
    obj = _obj(config, api_version, kind, name, "test")
    obj["metadata"]["managedFields"] = [{"manager": manager, "operation": "Apply"}]
    if owner:
        obj["metadata"]["ownerReferences"] = [{"kind": owner, "name": name, "controller": True}]
    if instance:
        obj["metadata"]["labels"]["app.kubernetes.io/instance"] = instance
    return obj


@dataclass
class Outcome:
    config: StackConfig
    rendering: Rendering
    standin: StandIn
    tmp: Path
    report: KubernetesDeployReport | None
    error: UserError | None
    lines: list[str]  # what the operator saw (plain progress)

    @property
    def calls(self) -> list[Call]:
        return self.standin.calls()

    def applies(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """(call index, objects) of every apply."""
        return [(i, list(yaml.safe_load_all(c.stdin))) for i, c in enumerate(self.calls) if c.verb == "apply"]

    def apply_index(self, phase: str) -> int | None:
        by_name = {(m.kind, m.name): m.phase for m in self.rendering.manifests}
        for index, objects in self.applies():
            if any(by_name.get((o["kind"], o["metadata"]["name"])) == phase for o in objects):
                return index
        return None

    def applied_names(self) -> set[str]:
        return {o["metadata"]["name"] for _, objects in self.applies() for o in objects}

    def deleted(self) -> set[tuple[str, str]]:
        """What prune deleted by name, after the last apply (before it: the Jobs run at every deploy, TestRerunJob;
        the retired Secrets are deleted by selector: TestRetiredSecrets)."""
        last = max((i for i, _ in self.applies()), default=-1)
        return {(c.args[1], c.args[2]) for i, c in enumerate(self.calls)
                if i > last and c.verb == "delete" and not c.args[2].startswith("-")}

    @property
    def message(self) -> str:
        assert self.error is not None, "deploy succeeded"
        return self.error.problem

    @property
    def fix(self) -> str:
        assert self.error is not None and self.error.fix is not None
        return self.error.fix


def run_deploy(tmp: Path, state: dict[str, Any], config: StackConfig | None = None) -> Outcome:
    config = config or kubernetes_config()
    rendering = sample_rendering(config)
    with pytest.MonkeyPatch.context() as patch:
        standin = StandIn.install(tmp, patch)
        (tmp / "tmp").mkdir()
        patch.setenv("TMPDIR", str(tmp / "tmp"))  # a temporary file kubectl were given would land here
        patch.setenv("KUBECONFIG", str(tmp / "no-kubeconfig"))  # never the operator's real cluster
        standin.script(**state)
        report, error, lines = None, None, []
        try:
            report = deploy(config, rendering, sample_secrets(config), PlainProgress(lines.append))
        except UserError as exc:
            error = exc
    return Outcome(config, rendering, standin, tmp, report, error, lines)


def prune_candidates(config: StackConfig) -> list[dict[str, Any]]:
    n = Names.of(config)
    return [
        live(config, "apps/v1", "Deployment", n.api),  # still rendered
        live(config, "apps/v1", "Deployment", n("old-worker")),  # ours, no longer rendered: pruned
        live(config, "monitoring.coreos.com/v1", "ServiceMonitor", n("old")),  # idem
        live(config, "apps/v1", "Deployment", n.pooler_transaction, owner="Pooler"),  # CloudNativePG's
        live(config, "v1", "ConfigMap", n("hand-made"), manager="kubectl-client-side-apply"),  # not applied by us
        live(config, "postgresql.cnpg.io/v1", "Cluster", n("db-old")),  # holds data: kept
        live(config, "v1", "Secret", n("old-secret")),
        live(config, "v1", "PersistentVolumeClaim", n("data-old")),
        live(config, "apps/v1", "Deployment", "other-api", instance="other"),  # another stack in the namespace
    ]


@pytest.fixture(scope="module")
def happy(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    config = kubernetes_config(context="staging")
    return run_deploy(tmp_path_factory.mktemp("happy"), {
        "objects": prune_candidates(config),
        "unknown_resources": ["httproute.gateway.networking.k8s.io"],
    }, config)


WAITS = [  # phase, kubectl verb, what it names
    ("data", "wait", "cluster.postgresql.cnpg.io/prefect-db"),
    ("data", "wait", "deployment.apps/prefect-pooler-transaction"),
    ("data", "rollout status", "deployment.apps/prefect-pooler-transaction"),
    ("data", "rollout status", "deployment.apps/prefect-pooler-session"),
    ("data", "rollout status", "statefulset.apps/prefect-redis"),
    ("migrate", "wait", f"job.batch/{MIGRATE_JOB}"),
    ("apps", "rollout status", "deployment.apps/prefect-api"),
    ("apps", "rollout status", "deployment.apps/prefect-services"),
    ("pools", "wait", "job.batch/prefect-work-pools"),
    ("workers", "rollout status", "deployment.apps/prefect-worker-default"),
]


class TestPhases:
    def test_deploy_succeeds(self, happy: Outcome) -> None:
        assert happy.error is None

    def test_phases_applied_in_order(self, happy: Outcome) -> None:
        indices = [happy.apply_index(phase) for phase in PHASES]
        assert indices == sorted(i for i in indices if i is not None)

    @pytest.mark.parametrize("phase", PHASES)
    def test_every_phase_applied(self, happy: Outcome, phase: str) -> None:
        assert happy.apply_index(phase) is not None

    def test_namespace_first_in_its_apply(self, happy: Outcome) -> None:
        _, objects = happy.applies()[0]
        assert objects[0]["kind"] == "Namespace"

    @pytest.mark.parametrize("phase, verb, target", WAITS, ids=[w[2] for w in WAITS])
    def test_wait_after_its_phase_applied(self, happy: Outcome, phase: str, verb: str, target: str) -> None:
        index = next(i for i, c in enumerate(happy.calls) if c.verb == verb and target in c.args)
        applied = happy.apply_index(phase)
        assert applied is not None and index > applied

    @pytest.mark.parametrize("phase, verb, target", WAITS, ids=[w[2] for w in WAITS])
    def test_wait_before_next_phase_applied(self, happy: Outcome, phase: str, verb: str, target: str) -> None:
        index = next(i for i, c in enumerate(happy.calls) if c.verb == verb and target in c.args)
        later = [happy.apply_index(p) for p in PHASES[PHASES.index(phase) + 1:]]
        assert all(index < i for i in later if i is not None)

    def test_cluster_waits_for_ready(self, happy: Outcome) -> None:
        call = next(c for c in happy.calls if "cluster.postgresql.cnpg.io/prefect-db" in c.args)
        assert "--for=condition=Ready" in call.args

    def test_migration_waits_for_complete_or_failed(self, happy: Outcome) -> None:
        # Both waits start together and the one still running is killed once the other answers: on a busy machine
        # the "failed" one can be killed before the stand-in records it, so only "complete" must have been seen
        # (test_wait_any_names_the_condition_that_held covers a failed Job).
        fors = {a for c in happy.calls if f"job.batch/{MIGRATE_JOB}" in c.args for a in c.args
                if a.startswith("--for=")}
        assert "--for=condition=complete" in fors
        assert fors <= {"--for=condition=complete", "--for=condition=failed"}

    def test_waits_bounded_by_wait_timeout(self, happy: Outcome) -> None:
        timeouts = [int(a.removeprefix("--timeout=").removesuffix("s")) for c in happy.calls
                    if c.verb in ("wait", "rollout status") for a in c.args if a.startswith("--timeout=")]
        assert timeouts and max(timeouts) <= happy.config.kubernetes.wait_timeout_s

    @pytest.mark.parametrize("flag", ["--server-side", "--field-manager=prefect-stack", "--force-conflicts",
                                      "--filename=-"])
    def test_every_apply_is_server_side_from_stdin(self, happy: Outcome, flag: str) -> None:
        assert all(flag in c.args for c in happy.calls if c.verb == "apply")

    def test_every_call_uses_the_configured_context(self, happy: Outcome) -> None:
        assert all("--context=staging" in c.argv for c in happy.calls)

    def test_every_namespaced_call_names_the_namespace(self, happy: Outcome) -> None:
        assert all("--namespace=prefect" in c.argv for c in happy.calls if c.verb != "version")

    @pytest.mark.parametrize("phase", PHASES)
    def test_progress_line_per_phase(self, happy: Outcome, phase: str) -> None:
        assert any(line.split("] ", 1)[-1].startswith(f"{phase}: ") and "applied" in line for line in happy.lines)

    def test_report_lists_applied_objects_by_phase(self, happy: Outcome) -> None:
        assert happy.report is not None
        assert happy.report.applied["apps"] == ["Deployment/prefect-api", "Deployment/prefect-services",
                                                "Service/prefect-api", "CronJob/prefect-backup"]


class TestSecrets:
    def test_secrets_applied_in_their_own_apply(self, happy: Outcome) -> None:
        kinds = [{o["kind"] for o in objects} for _, objects in happy.applies()]
        assert {"Secret"} in kinds

    def test_secrets_applied_after_namespace_before_data(self, happy: Outcome) -> None:
        secret_index = next(i for i, objects in happy.applies() if objects[0]["kind"] == "Secret")
        namespace_index, data_index = happy.apply_index("namespace"), happy.apply_index("data")
        assert namespace_index is not None and data_index is not None
        assert namespace_index < secret_index < data_index

    def test_no_other_apply_holds_a_secret(self, happy: Outcome) -> None:
        assert all(o["kind"] != "Secret" for _, objects in happy.applies() if len(objects) > 2 for o in objects)

    @pytest.mark.parametrize("value", every_secret_form(), ids=SECRET_FORM_IDS)
    def test_secret_never_on_argv(self, happy: Outcome, value: str) -> None:
        assert not any(value in arg for c in happy.calls for arg in c.argv)

    @pytest.mark.parametrize("value", every_secret_form(), ids=SECRET_FORM_IDS)
    def test_secret_never_in_environment(self, happy: Outcome, value: str) -> None:
        assert not any(value in json.dumps(c.env) for c in happy.calls)

    @pytest.mark.parametrize("value", every_secret_form(), ids=SECRET_FORM_IDS)
    def test_secret_in_no_file(self, happy: Outcome, value: str) -> None:
        recording = happy.standin.directory / "calls.jsonl"  # the stand-in's own log of what it read on stdin
        files = [p for p in happy.tmp.rglob("*") if p.is_file() and p != recording]
        assert not any(value in p.read_text(errors="replace") for p in files)

    def test_kubectl_reads_no_file(self, happy: Outcome) -> None:
        assert not any(Path(arg.split("=", 1)[-1]).is_file() for c in happy.calls for arg in c.argv[1:])

    def test_secret_values_redacted_from_apply_errors(self, tmp_path: Path) -> None:
        echoed = f'The Secret "prefect-db-superuser" is invalid: data: Invalid value: "{SECRET_VALUES[0]}"'
        outcome = run_deploy(tmp_path, {"apply_errors": {"kind: Secret": echoed}})
        assert SECRET_VALUES[0] not in str(outcome.error) and "***" in outcome.message


@pytest.fixture(scope="class")
def cluster_never_ready(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    return run_deploy(tmp_path_factory.mktemp("cluster"),
                      {"conditions": {"cluster.postgresql.cnpg.io/prefect-db": {"condition=Ready": False}}})


def test_applied_pod_templates_carry_the_hash_of_the_secrets_they_read(tmp_path: Path) -> None:
    """A rotated secret changes the template of the pods that read it, so deploy rolls them (secret_hashes)."""
    config = kubernetes_config()
    rendering = sample_rendering(config)
    n = Names.of(config)
    redis = next(m.obj for m in rendering.manifests if m.kind == "StatefulSet")
    redis["spec"]["template"] = {"spec": {"volumes": [{"name": "auth", "secret": {"secretName": n.secret_redis}}]}}
    with pytest.MonkeyPatch.context() as patch:
        standin = StandIn.install(tmp_path, patch)
        patch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
        standin.script()
        deploy(config, rendering, sample_secrets(config), PlainProgress(lambda line: None))
    applied = [o for c in standin.calls() if c.verb == "apply" for o in yaml.safe_load_all(c.stdin)
               if o["kind"] == "StatefulSet"]
    annotations = applied[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[ANNOTATION].startswith("sha256:")
    assert SECRET_VALUES[1] not in annotations[ANNOTATION]


class TestClusterNeverReady:
    def test_names_the_data_phase(self, cluster_never_ready: Outcome) -> None:
        assert "phase data" in cluster_never_ready.message

    def test_names_the_cluster(self, cluster_never_ready: Outcome) -> None:
        assert "Cluster prefect-db is not ready" in cluster_never_ready.message

    def test_fix_describes_the_cluster(self, cluster_never_ready: Outcome) -> None:
        assert "kubectl -n prefect describe cluster.postgresql.cnpg.io/prefect-db" in cluster_never_ready.fix

    def test_fix_names_the_timeout_setting(self, cluster_never_ready: Outcome) -> None:
        assert "kubernetes.wait_timeout_s" in cluster_never_ready.fix

    @pytest.mark.parametrize("phase", ["migrate", "apps", "monitoring"])
    def test_later_phase_not_applied(self, cluster_never_ready: Outcome, phase: str) -> None:
        assert cluster_never_ready.apply_index(phase) is None

    def test_nothing_waited_for_after_the_cluster(self, cluster_never_ready: Outcome) -> None:
        assert cluster_never_ready.calls[-1].verb == "wait"

    def test_nothing_pruned(self, cluster_never_ready: Outcome) -> None:
        assert not any(c.verb in ("get", "delete") for c in cluster_never_ready.calls)


@pytest.fixture(scope="class")
def migration_failed(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    target = f"job.batch/{MIGRATE_JOB}"
    return run_deploy(tmp_path_factory.mktemp("migration"), {
        "conditions": {target: {"condition=complete": False, "condition=failed": True}},
        "logs": {f"job/{MIGRATE_JOB}": 'INFO running upgrade 3b2e\nERROR relation "flow_run_state" already exists\n'},
    })


class TestMigrationFailed:
    def test_names_the_migrate_phase(self, migration_failed: Outcome) -> None:
        assert "phase migrate" in migration_failed.message

    def test_names_the_job(self, migration_failed: Outcome) -> None:
        assert f"Job {MIGRATE_JOB} failed" in migration_failed.message

    @pytest.mark.parametrize("line", ["INFO running upgrade 3b2e", 'ERROR relation "flow_run_state" already exists'])
    def test_shows_the_job_log(self, migration_failed: Outcome, line: str) -> None:
        assert line in migration_failed.message

    def test_reads_the_log_tail(self, migration_failed: Outcome) -> None:
        logs = next(c for c in migration_failed.calls if c.verb == "logs")
        assert logs.args[:3] == ["logs", f"job/{MIGRATE_JOB}", "--tail=30"]

    def test_fix_deletes_the_failed_job(self, migration_failed: Outcome) -> None:
        assert f"kubectl -n prefect delete job {MIGRATE_JOB}" in migration_failed.fix

    @pytest.mark.parametrize("phase", ["apps", "monitoring"])
    def test_later_phase_not_applied(self, migration_failed: Outcome, phase: str) -> None:
        assert migration_failed.apply_index(phase) is None


MISSING_CRDS = [  # kind, the phase that applies it, what the message must name
    ("Cluster", "data", "CloudNativePG"),
    ("ObjectStore", "data", "Barman Cloud plugin"),
    ("ServiceMonitor", "monitoring", "kube-prometheus-stack"),
]


@pytest.fixture(scope="class", params=MISSING_CRDS, ids=[m[0] for m in MISSING_CRDS])
def missing_crd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) \
        -> tuple[Outcome, str, str]:
    kind, phase, operator = request.param
    return run_deploy(tmp_path_factory.mktemp(kind), {"missing_kinds": [kind]}), phase, operator


class TestMissingCrd:
    def test_names_the_phase(self, missing_crd: tuple[Outcome, str, str]) -> None:
        outcome, phase, _ = missing_crd
        assert f"phase {phase}" in outcome.message

    def test_names_the_operator(self, missing_crd: tuple[Outcome, str, str]) -> None:
        outcome, _, operator = missing_crd
        assert operator in outcome.message + outcome.fix

    def test_fix_installs_it(self, missing_crd: tuple[Outcome, str, str]) -> None:
        outcome, _, _ = missing_crd
        assert "helm upgrade --install" in outcome.fix

    def test_nothing_waited_for_in_that_phase(self, missing_crd: tuple[Outcome, str, str]) -> None:
        outcome, _, _ = missing_crd
        assert outcome.calls[-1].verb == "apply"


@pytest.fixture(scope="class")
def rollout_stuck(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    return run_deploy(tmp_path_factory.mktemp("rollout"), {"rollouts": {"deployment.apps/prefect-api": False}})


class TestRolloutStuck:
    def test_names_the_apps_phase(self, rollout_stuck: Outcome) -> None:
        assert "phase apps" in rollout_stuck.message

    def test_names_the_deployment(self, rollout_stuck: Outcome) -> None:
        assert "Deployment prefect-api is not ready" in rollout_stuck.message

    def test_fix_describes_it_and_reads_its_logs(self, rollout_stuck: Outcome) -> None:
        assert ("kubectl -n prefect describe deployment.apps/prefect-api" in rollout_stuck.fix
                and "logs deployment.apps/prefect-api" in rollout_stuck.fix)

    def test_monitoring_not_applied(self, rollout_stuck: Outcome) -> None:
        assert rollout_stuck.apply_index("monitoring") is None


class TestPrune:
    def test_deletes_exactly_what_is_no_longer_rendered(self, happy: Outcome) -> None:
        assert happy.deleted() == {("deployment.apps", "prefect-old-worker"),
                                   ("servicemonitor.monitoring.coreos.com", "prefect-old")}

    def test_reports_what_it_pruned(self, happy: Outcome) -> None:
        assert happy.report is not None
        assert happy.report.pruned == ["ServiceMonitor/prefect-old", "Deployment/prefect-old-worker"]

    def test_keeps_a_database_cluster_and_says_so(self, happy: Outcome) -> None:
        assert happy.report is not None and happy.report.kept == ["cluster.postgresql.cnpg.io/prefect-db-old"]

    @pytest.mark.parametrize("resource", ["secret", "persistentvolumeclaim", "namespace"])
    def test_never_lists_or_prunes(self, happy: Outcome, resource: str) -> None:
        touched = [c for c in happy.calls if c.verb in ("get", "delete")
                   and resource in c.args[1].split(",") and c not in retired_secret_deletes(happy)]
        assert touched == []

    def test_never_reads_a_secret(self, happy: Outcome) -> None:
        assert [c for c in happy.calls if c.verb == "get" and "secret" in c.args[1].split(",")] == []


def retired_secret_deletes(outcome: Outcome) -> list[Call]:
    return [c for c in outcome.calls if c.verb == "delete" and c.args[1] == "secret"]


class TestRetiredSecrets:
    """The Secret that held the API admin's password for Prometheus (api-metrics-auth) is deleted; prune never
    deletes Secrets, so deploy names it."""

    def test_deleted_by_name(self, happy: Outcome) -> None:
        [call] = retired_secret_deletes(happy)
        assert "--field-selector=metadata.name=prefect-api-metrics-auth" in call.args

    def test_only_if_it_is_the_stacks(self, happy: Outcome) -> None:
        [call] = retired_secret_deletes(happy)
        assert "--selector=app.kubernetes.io/managed-by=prefect-stack,app.kubernetes.io/instance=prefect" in call.args
        assert "--ignore-not-found" in call.args

    def test_after_prune(self, happy: Outcome) -> None:
        calls = happy.calls
        last_get = max(i for i, c in enumerate(calls) if c.verb == "get")
        assert calls.index(retired_secret_deletes(happy)[0]) > last_get

    @pytest.mark.parametrize(("instance", "deleted"), [(None, True), ("other", False)], ids=["ours", "another-stack"])
    def test_reported_when_deleted(self, tmp_path: Path, instance: str | None, deleted: bool) -> None:
        config = kubernetes_config()
        secret = live(config, "v1", "Secret", "prefect-api-metrics-auth", instance=instance)
        outcome = run_deploy(tmp_path, {"objects": [secret]}, config)
        assert outcome.report is not None
        assert ("Secret/prefect-api-metrics-auth" in outcome.report.pruned) is deleted

    def test_not_reported_when_absent(self, happy: Outcome) -> None:
        assert happy.report is not None and not any(p.startswith("Secret/") for p in happy.report.pruned)

    def test_lists_by_the_stack_selector(self, happy: Outcome) -> None:
        gets = [c for c in happy.calls if c.verb == "get"]
        selector = "--selector=app.kubernetes.io/managed-by=prefect-stack,app.kubernetes.io/instance=prefect"
        assert gets and all(selector in c.args for c in gets)

    def test_tells_how_to_delete_the_kept_cluster(self, happy: Outcome) -> None:
        assert any("kubectl --context=staging -n prefect delete cluster.postgresql.cnpg.io prefect-db-old" in line
                   for line in happy.lines)

    def test_prunes_after_the_last_phase(self, happy: Outcome) -> None:
        first_get = next(i for i, c in enumerate(happy.calls) if c.verb == "get")
        monitoring = happy.apply_index("monitoring")
        assert monitoring is not None and first_get > monitoring


class TestPreconditions:
    def test_unreachable_cluster_names_kubeconfig(self, tmp_path: Path) -> None:
        outcome = run_deploy(tmp_path, {"unreachable": True})
        assert "KUBECONFIG" in outcome.message and "kubernetes.context" in outcome.fix

    def test_unreachable_cluster_applies_nothing(self, tmp_path: Path) -> None:
        outcome = run_deploy(tmp_path, {"unreachable": True})
        assert outcome.applies() == []

    def test_missing_kubectl(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        config = kubernetes_config()
        with pytest.raises(UserError, match="kubectl is not on PATH") as raised:
            deploy(config, sample_rendering(config), [], QuietProgress())
        assert raised.value.fix is not None and "install kubectl" in raised.value.fix

    def test_secret_of_another_namespace_refused(self) -> None:
        config = kubernetes_config()
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "elsewhere"}}
        with pytest.raises(ValueError, match="namespace elsewhere"):
            deploy(config, sample_rendering(config), [secret], QuietProgress())



@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    return StandIn.install(tmp_path, monkeypatch)


class TestKubectl:
    @pytest.mark.parametrize("api_version, kind, expected", [
        ("apps/v1", "Deployment", "deployment.apps"),
        ("v1", "Service", "service"),
        ("postgresql.cnpg.io/v1", "Cluster", "cluster.postgresql.cnpg.io"),
        ("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitor.monitoring.coreos.com"),
    ])
    def test_resource_is_fully_qualified(self, api_version: str, kind: str, expected: str) -> None:
        assert resource(api_version, kind) == expected

    def test_error_carries_stderr(self, standin: StandIn) -> None:
        standin.script(conditions={"job.batch/x": {"condition=complete": False}})
        with pytest.raises(KubectlError) as raised:
            Kubectl("prefect").wait("job.batch/x", "condition=complete", 30)
        assert "timed out waiting for the condition on job.batch/x" in raised.value.stderr

    def test_apply_sends_objects_on_stdin_only(self, standin: StandIn) -> None:
        objects = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "marker-7q"}}]
        Kubectl("prefect").apply(objects)
        call = standin.calls()[-1]
        assert list(yaml.safe_load_all(call.stdin)) == objects and not any("marker-7q" in a for a in call.argv)

    def test_wait_any_names_the_condition_that_held(self, standin: StandIn) -> None:
        standin.script(conditions={"job.batch/x": {"condition=complete": False, "condition=failed": True}})
        held = Kubectl("prefect").wait_any("job.batch/x", ("condition=complete", "condition=failed"), 30)
        assert held == "condition=failed"

    def test_wait_any_none_when_nothing_held(self, standin: StandIn) -> None:
        standin.script(conditions={"job.batch/x": {"condition=complete": False}})
        assert Kubectl("prefect").wait_any("job.batch/x", ("condition=complete", "condition=failed"), 30) is None

    def test_old_kubectl_refused(self, standin: StandIn) -> None:
        standin.script(client_version="v1.29.3")
        with pytest.raises(UserError, match="too old"):
            Kubectl("prefect").ensure_reachable()

    def test_context_on_every_call(self, standin: StandIn) -> None:
        Kubectl("prefect", context="prod-eu").get("pod")
        assert standin.calls()[-1].argv[:2] == ["--context=prod-eu", "--namespace=prefect"]


class TestApplyErrors:
    def test_immutable_job_names_the_phase(self, tmp_path: Path) -> None:
        outcome = run_deploy(tmp_path, {"apply_errors": {f"name: {MIGRATE_JOB}": (
            f'The Job "{MIGRATE_JOB}" is invalid: spec.template: Invalid value: "...": field is immutable')}})
        assert "phase migrate" in outcome.message and "delete" in outcome.fix

    def test_webhook_down_points_at_the_operator(self, tmp_path: Path) -> None:
        outcome = run_deploy(tmp_path, {"apply_errors": {"kind: Cluster": (
            'Internal error occurred: failed calling webhook "mcluster.cnpg.io": connection refused')}})
        assert "kubectl -n cnpg-system get pods" in outcome.fix


class TestRerunJob:
    """The work pools' provisioning Job runs at every deploy: its last run is deleted, then it is applied again."""

    def _delete_index(self, outcome: Outcome) -> int:
        return next(i for i, c in enumerate(outcome.calls)
                    if c.verb == "delete" and c.args[1:3] == ["job.batch", "prefect-work-pools"])

    def test_its_last_run_is_deleted_before_its_phase_applies(self, happy: Outcome) -> None:
        applied = happy.apply_index("pools")
        assert applied is not None and self._delete_index(happy) < applied

    def test_deleted_only_once_the_api_is_up(self, happy: Outcome) -> None:
        api_ready = next(i for i, c in enumerate(happy.calls)
                         if c.verb == "rollout status" and "deployment.apps/prefect-api" in c.args)
        assert api_ready < self._delete_index(happy)

    def test_the_migration_job_is_never_deleted(self, happy: Outcome) -> None:
        assert not [c for c in happy.calls if c.verb == "delete" and MIGRATE_JOB in c.args]

    def test_what_it_said_is_in_the_report(self, tmp_path: Path) -> None:
        outcome = run_deploy(tmp_path, {"logs": {"job/prefect-work-pools": (
            "[pod/prefect-work-pools-x/provision] work pool default: created\n")}})
        assert outcome.report is not None
        assert outcome.report.job_reports == {"prefect-work-pools": ["work pool default: created"]}

    def test_a_failed_run_stops_before_the_workers(self, tmp_path: Path) -> None:
        outcome = run_deploy(tmp_path, {
            "conditions": {"job.batch/prefect-work-pools": {"condition=complete": False, "condition=failed": True}},
            "logs": {"job/prefect-work-pools": "error: work pool default exists with type process\n"}})
        assert "phase pools" in outcome.message and "exists with type process" in outcome.message
        assert outcome.apply_index("workers") is None


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """Flow runs in a namespace of their own: its objects, and the Secret copy deploy makes there."""
    config = load_config(target="kubernetes", kubernetes={"flow_run_namespace": "flows"})
    stale = live(config, "rbac.authorization.k8s.io/v1", "Role", "prefect-worker-gone")
    stale["metadata"]["namespace"] = "flows"
    copy = {"apiVersion": "v1", "kind": "Secret",
            "metadata": {**metadata(config, Names.of(config).secret_flow_run_auth, "secrets"), "namespace": "flows"},
            "stringData": {"prefect_auth": "admin:flow-pass-Qa71"}}
    rendering = sample_rendering(config)
    tmp = tmp_path_factory.mktemp("elsewhere")
    with pytest.MonkeyPatch.context() as patch:
        standin = StandIn.install(tmp, patch)
        patch.setenv("KUBECONFIG", str(tmp / "no-kubeconfig"))
        standin.script(objects=[stale])
        lines: list[str] = []
        report = deploy(config, rendering, [*sample_secrets(config), copy], PlainProgress(lines.append))
    return Outcome(config, rendering, standin, tmp, report, None, lines)


class TestFlowRunNamespace:
    def test_its_objects_applied_with_its_namespace(self, elsewhere: Outcome) -> None:
        calls = [c for c in elsewhere.calls if c.verb == "apply" and "kind: Role" in c.stdin]
        assert [c.argv for c in calls if "--namespace=flows" in c.argv] and len(calls) == 1

    def test_no_apply_mixes_namespaces(self, elsewhere: Outcome) -> None:
        for call in (c for c in elsewhere.calls if c.verb == "apply"):
            namespace = next(a for a in call.argv if a.startswith("--namespace=")).removeprefix("--namespace=")
            found = {o["metadata"].get("namespace") or namespace for o in yaml.safe_load_all(call.stdin)
                     if o["kind"] != "Namespace"}
            assert found <= {namespace}

    def test_the_secret_copy_applied_there(self, elsewhere: Outcome) -> None:
        assert [c for c in elsewhere.calls if c.verb == "apply" and "--namespace=flows" in c.argv
                and "prefect-flow-run-auth" in c.stdin]

    def test_pruned_there(self, elsewhere: Outcome) -> None:
        assert elsewhere.report is not None and "Role/prefect-worker-gone" in elsewhere.report.pruned
        assert [c for c in elsewhere.calls if c.verb == "delete" and "--namespace=flows" in c.argv
                and "prefect-worker-gone" in c.args]

    def test_a_missing_namespace_says_how_to_create_it(self, tmp_path: Path) -> None:
        config = load_config(target="kubernetes", kubernetes={"flow_run_namespace": "flows"})
        outcome = run_deploy(tmp_path, {"apply_errors": {"kind: Role": 'namespaces "flows" not found'}}, config)
        assert "kubectl create namespace flows" in outcome.fix and "restricted" in outcome.fix
