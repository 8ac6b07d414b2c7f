"""Operating the Kubernetes stack against a stand-in kubectl (tests/fake_kubectl.py): status, logs, restart, destroy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.kubernetes import operate
from infra.kubernetes.objects import LABEL_INSTANCE, metadata
from infra.logs.read import LogQuery
from infra.status import ComponentStatus
from tests.fake_kubectl import Call, StandIn

POOLER_TX, POOLER_SESSION = "prefect-pooler-transaction", "prefect-pooler-session"


def kubernetes_config(**kubernetes: Any) -> StackConfig:
    return load_config(target="kubernetes", kubernetes=kubernetes)


def obj(config: StackConfig, api_version: str, kind: str, name: str, component: str, *, spec: Any = None,
        status: Any = None, labels: dict[str, str] | None = None, owner: str | None = None,
        applied: bool = True) -> dict[str, Any]:
    """A live object as kubectl lists it; ``labels`` replaces the stack's (objects CloudNativePG makes)."""
    meta = metadata(config, name, component)
    if labels is not None:
        meta["labels"] = labels
    meta["generation"] = 1
    if applied:
        meta["managedFields"] = [{"manager": "prefect-stack", "operation": "Apply"}]
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x", "controller": True}]
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": spec or {}, "status": status or {}}


def rollout(ready: int, desired: int, message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"readyReplicas": ready, "updatedReplicas": ready, "observedGeneration": 1}
    if message:
        status["conditions"] = [{"type": "Progressing", "status": "False", "message": message}]
    return status


def ready(value: str) -> list[dict[str, str]]:
    return [{"type": "Ready", "status": value}]


def pod(config: StackConfig, name: str, component: str, *, phase: str = "Running", is_ready: bool = True,
        labels: dict[str, str] | None = None, owner: str | None = None, waiting: str | None = None) -> dict[str, Any]:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return obj(config, "v1", "Pod", name, component, labels=labels, owner=owner, applied=False,
               spec={"containers": [{"name": "main", "image": "prefect-stack/prefect:0f3a9c"}]},
               status={"phase": phase, "startTime": "2026-11-27T09:00:00Z",
                       "conditions": ready("True" if is_ready else "False"),
                       "containerStatuses": [{"name": "main", "restartCount": 0, "state": state}]})


def cluster_state(config: StackConfig) -> list[dict[str, Any]]:
    """A deployed stack: one of everything, some of it unhealthy."""
    cnpg_tx, cnpg_session = {"cnpg.io/poolerName": POOLER_TX}, {"cnpg.io/poolerName": POOLER_SESSION}
    return [
        obj(config, "postgresql.cnpg.io/v1", "Cluster", "prefect-db", "database", spec={"instances": 3},
            status={"phase": "Cluster in healthy state", "currentPrimary": "prefect-db-1", "readyInstances": 3,
                    "conditions": ready("True")}),
        obj(config, "postgresql.cnpg.io/v1", "Pooler", POOLER_TX, "pooler",
            spec={"pgbouncer": {"poolMode": "transaction"}}),
        obj(config, "postgresql.cnpg.io/v1", "Pooler", POOLER_SESSION, "pooler"),
        obj(config, "apps/v1", "Deployment", POOLER_TX, "pooler", labels=cnpg_tx, owner="Pooler", applied=False,
            spec={"replicas": 2}, status=rollout(2, 2)),
        obj(config, "apps/v1", "Deployment", POOLER_SESSION, "pooler", labels=cnpg_session, owner="Pooler",
            applied=False, spec={"replicas": 2}, status=rollout(1, 2)),
        obj(config, "apps/v1", "StatefulSet", "prefect-redis", "redis", spec={"replicas": 3}, status=rollout(3, 3)),
        obj(config, "apps/v1", "Deployment", "prefect-api", "api", spec={"replicas": 3}, status=rollout(3, 3)),
        obj(config, "apps/v1", "Deployment", "prefect-services", "services", spec={"replicas": 1},
            status=rollout(0, 1, 'ReplicaSet "prefect-services-7d" has timed out progressing.')),
        obj(config, "batch/v1", "Job", "prefect-migrate-abc", "migrate",
            status={"conditions": [{"type": "Complete", "status": "True"}]}),
        obj(config, "batch/v1", "Job", "prefect-backup-29001", "backup", owner="CronJob",
            status={"conditions": [{"type": "Failed", "status": "True"}]}),
        obj(config, "batch/v1", "CronJob", "prefect-backup", "backup", spec={"schedule": "0 2 * * *"},
            status={"lastScheduleTime": "2026-11-27T02:00:00Z", "lastSuccessfulTime": "2026-11-26T02:00:10Z"}),
        obj(config, "v1", "Secret", "prefect-redis", "redis"),
        obj(config, "v1", "ConfigMap", "prefect-hand-made", "api", applied=False),
        obj(config, "v1", "PersistentVolumeClaim", "data-prefect-redis-0", "redis", applied=False),
        obj(config, "v1", "PersistentVolumeClaim", "prefect-db-1", "database", applied=False,
            labels={"cnpg.io/cluster": "prefect-db"}),
        pod(config, "prefect-api-5f-abc", "api"),
        pod(config, "prefect-db-1", "database", labels={"cnpg.io/cluster": "prefect-db"}),
        pod(config, "prefect-pooler-session-6c-x", "pooler", labels=cnpg_session, phase="Pending",
            is_ready=False, waiting="ContainerCreating"),
        pod(config, "prefect-backup-29001-q", "backup", owner="Job", phase="Failed", is_ready=False),
        pod(config, "other-api-1", "api", labels={LABEL_INSTANCE: "other", "app.kubernetes.io/name": "api"}),
    ]


@dataclass
class Stand:
    config: StackConfig
    standin: StandIn

    @property
    def calls(self) -> list[Call]:
        return self.standin.calls()

    def after_version(self) -> list[list[str]]:
        return [c.args for c in self.calls if c.verb != "version"]


@pytest.fixture
def stand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stand:
    config = kubernetes_config()
    standin = StandIn.install(tmp_path, monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    standin.script(objects=cluster_state(config))
    return Stand(config, standin)


@pytest.fixture(scope="module")
def statuses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ComponentStatus]:
    tmp = tmp_path_factory.mktemp("status")
    config = kubernetes_config()
    with pytest.MonkeyPatch.context() as patch:
        standin = StandIn.install(tmp, patch)
        patch.setenv("KUBECONFIG", str(tmp / "no-kubeconfig"))
        standin.script(objects=cluster_state(config))
        return {s.name: s for s in operate.status(config)}


HEALTH = [
    ("cluster/prefect-db", True),
    (f"pooler/{POOLER_TX}", True),
    (f"pooler/{POOLER_SESSION}", False),
    ("statefulset/prefect-redis", True),
    ("deployment/prefect-api", True),
    ("deployment/prefect-services", False),
    ("job/prefect-migrate-abc", True),
    ("cronjob/prefect-backup", False),
    ("pod/prefect-api-5f-abc", True),
    ("pod/prefect-db-1", True),
    ("pod/prefect-pooler-session-6c-x", False),
]


class TestStatus:
    def test_one_row_per_workload_and_pod(self, statuses: dict[str, ComponentStatus]) -> None:
        assert set(statuses) == {name for name, _ in HEALTH}

    @pytest.mark.parametrize("name, healthy", HEALTH, ids=[h[0] for h in HEALTH])
    def test_healthy(self, statuses: dict[str, ComponentStatus], name: str, healthy: bool) -> None:
        assert statuses[name].healthy is healthy

    def test_cluster_names_its_primary(self, statuses: dict[str, ComponentStatus]) -> None:
        assert "primary prefect-db-1, 3/3 instances ready" in statuses["cluster/prefect-db"].detail

    def test_cluster_state_is_the_operators_phase(self, statuses: dict[str, ComponentStatus]) -> None:
        assert statuses["cluster/prefect-db"].state == "Cluster in healthy state"

    def test_pooler_shows_its_mode(self, statuses: dict[str, ComponentStatus]) -> None:
        assert "pool mode transaction" in statuses[f"pooler/{POOLER_TX}"].detail

    def test_deployment_state_counts_ready_replicas(self, statuses: dict[str, ComponentStatus]) -> None:
        assert statuses["deployment/prefect-api"].state == "3/3 ready"

    def test_stuck_rollout_says_why(self, statuses: dict[str, ComponentStatus]) -> None:
        assert "timed out progressing" in statuses["deployment/prefect-services"].detail

    def test_failed_backup_run_named(self, statuses: dict[str, ComponentStatus]) -> None:
        assert "2026-11-27T02:00:00Z did not succeed" in statuses["cronjob/prefect-backup"].detail

    def test_waiting_pod_shows_the_reason(self, statuses: dict[str, ComponentStatus]) -> None:
        assert statuses["pod/prefect-pooler-session-6c-x"].state == "ContainerCreating"

    def test_pod_version_is_its_image_tag(self, statuses: dict[str, ComponentStatus]) -> None:
        assert statuses["pod/prefect-api-5f-abc"].version == "0f3a9c"

    def test_nothing_deployed(self, stand: Stand) -> None:
        stand.standin.script(objects=[])
        with pytest.raises(UserError, match="no object of stack 'prefect'"):
            operate.status(stand.config)

    def test_unreachable_cluster(self, stand: Stand) -> None:
        stand.standin.script(unreachable=True)
        with pytest.raises(UserError, match="KUBECONFIG"):
            operate.status(stand.config)

    def test_external_postgres_has_no_cnpg_rows(self, stand: Stand) -> None:
        stand.standin.script(unknown_resources=["cluster.postgresql.cnpg.io", "pooler.postgresql.cnpg.io"])
        names = {s.name for s in operate.status(stand.config)}
        assert not any(n.startswith(("cluster/", "pooler/")) for n in names)


LOG_SELECTORS = [
    ("api", "app.kubernetes.io/name=api,app.kubernetes.io/instance=prefect"),
    ("prefect-api", "app.kubernetes.io/name=api,app.kubernetes.io/instance=prefect"),
    ("db", "cnpg.io/cluster=prefect-db"),
    ("pooler-session", f"cnpg.io/poolerName={POOLER_SESSION}"),
]


class TestLogs:
    @pytest.mark.parametrize("component, chosen", LOG_SELECTORS, ids=[s[0] for s in LOG_SELECTORS])
    def test_argv(self, stand: Stand, component: str, chosen: str) -> None:
        operate.logs(stand.config, component, tail=50)
        assert stand.calls[-1].args == ["logs", f"--selector={chosen}", "--all-containers", "--prefix",
                                        "--tail=50", "--max-log-requests=20"]

    def test_follow(self, stand: Stand) -> None:
        operate.logs(stand.config, "api", follow=True)
        assert "--follow" in stand.calls[-1].args

    def test_returns_kubectls_status(self, stand: Stand) -> None:
        assert operate.logs(stand.config, "api") == 0

    def test_unknown_component_lists_the_choices(self, stand: Stand) -> None:
        with pytest.raises(UserError) as raised:
            operate.logs(stand.config, "nope")
        assert raised.value.fix is not None and "api" in raised.value.fix and "prefect-db" in raised.value.fix


API_SELECTOR = LOG_SELECTORS[0][1]
API_LINES = ("[pod/prefect-api-1/api] 2026-12-06T19:00:03.000000001Z 19:00:03.000 | INFO    | prefect.x - third\n"
             "[pod/prefect-api-2/api] 2026-12-06T19:00:01Z 19:00:01.000 | ERROR   | prefect.x - first\n")
DB_LINES = ('[pod/prefect-db-1/postgres] 2026-12-06T19:00:02Z {"timestamp": "2026-12-06 19:00:02.000 GMT", '
            '"error_severity": "LOG", "message": "second"}\n')


class TestReadLogs:
    """invoke logs through kubectl logs --timestamps: one component's pods, or every component's merged."""

    @pytest.fixture
    def scripted(self, stand: Stand) -> Stand:
        stand.standin.script(logs={API_SELECTOR: API_LINES, "cnpg.io/cluster=prefect-db": DB_LINES})
        return stand

    def test_asks_for_timestamps_and_the_time_range(self, scripted: Stand) -> None:
        since = datetime(2026, 12, 6, 19, 0, tzinfo=UTC)
        operate.read_logs(scripted.config, LogQuery(component="api", since=since))
        args = [c.args for c in scripted.calls if c.verb == "logs"][-1]
        assert "--timestamps" in args and "--since-time=2026-12-06T19:00:00.000Z" in args

    def test_one_component_in_time_order(self, scripted: Stand, capsys: pytest.CaptureFixture[str]) -> None:
        operate.read_logs(scripted.config, LogQuery(component="api", json=True))
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["message"] for line in lines] == ["first", "third"]

    def test_every_component_merged(self, scripted: Stand, capsys: pytest.CaptureFixture[str]) -> None:
        operate.read_logs(scripted.config, LogQuery(json=True))
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(line["component"], line["message"]) for line in lines] == [
            ("api", "first"), ("prefect-db", "second"), ("api", "third")]

    def test_level_filter(self, scripted: Stand, capsys: pytest.CaptureFixture[str]) -> None:
        operate.read_logs(scripted.config, LogQuery(component="api", json=True, level="ERROR"))
        assert [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines()] == ["first"]


RESTARTS = [  # component, the call that restarts it, the call that waits for it
    ("api", ["rollout", "restart", "deployment.apps/prefect-api"],
     ["rollout", "status", "deployment.apps/prefect-api", "--timeout=600s"]),
    ("redis", ["rollout", "restart", "statefulset.apps/prefect-redis"],
     ["rollout", "status", "statefulset.apps/prefect-redis", "--timeout=600s"]),
    ("pooler-transaction", ["rollout", "restart", f"deployment.apps/{POOLER_TX}"],
     ["rollout", "status", f"deployment.apps/{POOLER_TX}", "--timeout=600s"]),
]


class TestRestart:
    @pytest.mark.parametrize("component, restart, wait", RESTARTS, ids=[r[0] for r in RESTARTS])
    def test_rollout_restart(self, stand: Stand, component: str, restart: list[str], wait: list[str]) -> None:
        operate.restart(stand.config, component)
        assert stand.calls[-2].args == restart

    @pytest.mark.parametrize("component, restart, wait", RESTARTS, ids=[r[0] for r in RESTARTS])
    def test_waits_for_the_rollout(self, stand: Stand, component: str, restart: list[str], wait: list[str]) -> None:
        operate.restart(stand.config, component)
        assert stand.calls[-1].args == wait

    def test_database_through_the_operators_annotation(self, stand: Stand) -> None:
        operate.restart(stand.config, "db")
        annotate = stand.calls[-2].args
        assert annotate[:2] == ["annotate", "cluster.postgresql.cnpg.io/prefect-db"] \
            and annotate[2].startswith("kubectl.kubernetes.io/restartedAt=")

    def test_database_waits_for_ready(self, stand: Stand) -> None:
        operate.restart(stand.config, "db")
        assert stand.calls[-1].args[:3] == ["wait", "--for=condition=Ready", "cluster.postgresql.cnpg.io/prefect-db"]

    def test_stuck_rollout_names_the_fix(self, stand: Stand) -> None:
        stand.standin.script(rollouts={"deployment.apps/prefect-api": False})
        with pytest.raises(UserError) as raised:
            operate.restart(stand.config, "api")
        assert raised.value.fix is not None and "describe deployment.apps/prefect-api" in raised.value.fix

    def test_unknown_component(self, stand: Stand) -> None:
        with pytest.raises(UserError, match="no Deployment or StatefulSet of component 'nope'"):
            operate.restart(stand.config, "nope")


@dataclass
class Destroyed:
    delete_volumes: bool
    calls: list[Call]
    report: operate.KubernetesDestroyReport

    def deleted(self) -> set[tuple[str, str]]:
        return {(c.args[1], name) for c in self.calls if c.verb == "delete"
                for name in c.args[2:] if not name.startswith("--")}


@pytest.fixture(scope="class", params=[False, True], ids=["keep-volumes", "delete-volumes"])
def destroyed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Destroyed:
    tmp = tmp_path_factory.mktemp("destroy")
    config = kubernetes_config()
    with pytest.MonkeyPatch.context() as patch:
        standin = StandIn.install(tmp, patch)
        patch.setenv("KUBECONFIG", str(tmp / "no-kubeconfig"))
        standin.script(objects=cluster_state(config))
        report = operate.destroy(config, delete_volumes=request.param)
    return Destroyed(request.param, standin.calls(), report)


STACK_OBJECTS = {
    ("deployment.apps", "prefect-api"), ("deployment.apps", "prefect-services"),
    ("statefulset.apps", "prefect-redis"), ("job.batch", "prefect-migrate-abc"),
    ("cronjob.batch", "prefect-backup"), ("pooler.postgresql.cnpg.io", POOLER_TX),
    ("pooler.postgresql.cnpg.io", POOLER_SESSION), ("configmap", "prefect-hand-made"), ("secret", "prefect-redis")}
DATA = {("cluster.postgresql.cnpg.io", "prefect-db"), ("persistentvolumeclaim", "data-prefect-redis-0"),
        ("persistentvolumeclaim", "prefect-db-1")}


class TestDestroy:
    def test_deletes_the_stacks_objects_and_secrets(self, destroyed: Destroyed) -> None:
        assert destroyed.deleted() - DATA == STACK_OBJECTS

    def test_deletes_data_only_when_asked(self, destroyed: Destroyed) -> None:
        assert destroyed.deleted() & DATA == (DATA if destroyed.delete_volumes else set())

    def test_reports_the_kept_database(self, destroyed: Destroyed) -> None:
        assert destroyed.report.kept == ([] if destroyed.delete_volumes else ["Cluster/prefect-db"])

    def test_never_deletes_the_namespace(self, destroyed: Destroyed) -> None:
        assert not any(c.verb == "delete" and c.args[1] == "namespace" for c in destroyed.calls)

    def test_never_deletes_what_a_controller_owns(self, destroyed: Destroyed) -> None:
        assert ("job.batch", "prefect-backup-29001") not in destroyed.deleted()

    def test_reports_what_it_removed(self, destroyed: Destroyed) -> None:
        assert "Secret/prefect-redis" in destroyed.report.removed
