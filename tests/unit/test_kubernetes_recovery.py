"""Point-in-time recovery on Kubernetes: the Cluster rendered to bootstrap from its archive, and the recovery run
against the stand-in kubectl (the order that keeps it safe, the refusals that keep data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.backup.storage import BackupStore
from infra.compose.project import placeholder_secrets
from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.kubernetes.database import cluster, database_endpoints, database_manifests, on_demand_backup
from infra.kubernetes.recovery import RecoveryReport, cleanup, recover, refuse_deploy_before_recovery
from infra.kubernetes.render import PlaceholderImages, render
from infra.kubernetes.secrets import secret_objects
from infra.progress import PlainProgress
from tests import kubernetes_checks as checks
from tests.fake_kubectl import StandIn

AWS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-example-secret"}
TARGET = "2026-11-27 02:15:00+00:00"


def _config(**recovery: Any) -> StackConfig:
    settings = {"enabled": True, "target_time": TARGET, "server_name": "prefect-db-r1", **recovery}
    return load_config(target="kubernetes", backups={"physical": {"enabled": True}},
                       kubernetes={"postgres": {"recovery": settings}, "wait_timeout_s": 30})


class TestRecoveryCluster:
    def test_bootstraps_from_the_archive_up_to_the_target(self) -> None:
        bootstrap = cluster(_config())["spec"]["bootstrap"]["recovery"]
        assert (bootstrap["source"], bootstrap["recoveryTarget"]) == ("archive", {"targetTime": TARGET})

    def test_keeps_database_owner_and_secret(self) -> None:
        bootstrap = cluster(_config())["spec"]["bootstrap"]["recovery"]
        assert (bootstrap["database"], bootstrap["owner"], bootstrap["secret"]) == (
            "prefect", "prefect", {"name": "prefect-db-app"})

    def test_keeps_the_managed_roles(self) -> None:
        """The recovered data holds both roles; managed roles give them the passwords of today's Secrets."""
        roles = cluster(_config())["spec"]["managed"]["roles"]
        assert [(r["name"], r["passwordSecret"]["name"]) for r in roles] == [("prefect", "prefect-db-app"),
                                                                             ("prefect_monitor", "prefect-db-monitor")]

    def test_reads_the_clusters_own_archive_by_default(self) -> None:
        (source,) = cluster(_config())["spec"]["externalClusters"]
        assert source["plugin"]["parameters"] == {"barmanObjectName": "prefect-db-backups", "serverName": "prefect-db"}

    def test_is_a_new_cluster_named_after_its_archive(self) -> None:
        assert cluster(_config())["metadata"]["name"] == "prefect-db-r1"

    def test_a_second_recovery_reads_the_first_ones_archive(self) -> None:
        second = cluster(_config(source_server="prefect-db-r1", server_name="prefect-db-r2"))
        (source,) = second["spec"]["externalClusters"]
        assert (second["metadata"]["name"], source["plugin"]["parameters"]["serverName"]) == (
            "prefect-db-r2", "prefect-db-r1")

    def test_archives_its_new_timeline_elsewhere(self) -> None:
        (plugin,) = cluster(_config())["spec"]["plugins"]
        assert plugin["parameters"]["serverName"] == "prefect-db-r1"

    def test_without_a_target_replays_everything(self) -> None:
        assert "recoveryTarget" not in cluster(_config(target_time=None))["spec"]["bootstrap"]["recovery"]

    def test_validates_against_the_crd(self) -> None:
        assert checks.schema_problems(cluster(_config()), "1.32") == []

    def test_needs_a_new_archive_name(self) -> None:
        with pytest.raises(UserError, match="server_name"):
            _config(server_name=None)

    def test_refuses_to_archive_into_its_source(self) -> None:
        with pytest.raises(UserError, match="must differ"):
            _config(source_server="prefect-db-r1")

    def test_needs_physical_backups(self) -> None:
        config = load_config(target="kubernetes", kubernetes={"postgres": {"recovery": {
            "enabled": True, "server_name": "prefect-db-r1"}}})
        with pytest.raises(UserError, match=r"backups\.physical\.enabled"):
            database_manifests(config, PlaceholderImages())




class TestCurrentCluster:
    """Everything that leads to the database follows the recovered Cluster: one name decides (Names)."""

    @pytest.mark.parametrize("kind", ["Pooler", "ScheduledBackup"])
    def test_follows_the_recovered_cluster(self, kind: str) -> None:
        objects = [m.obj for m in database_manifests(_config(), PlaceholderImages()) if m.kind == kind]
        assert objects and {o["spec"]["cluster"]["name"] for o in objects} == {"prefect-db-r1"}

    def test_the_apps_connect_to_its_primary(self) -> None:
        assert database_endpoints(_config()).direct == ("prefect-db-r1-rw", 5432)

    def test_its_instances_are_the_ones_monitored_and_guarded(self) -> None:
        config = load_config(target="kubernetes", backups={"physical": {"enabled": True}},
                             monitoring={"enabled": True}, kubernetes={"network_policies": True, "postgres": {
                                 "recovery": {"enabled": True, "server_name": "prefect-db-r1"}}})
        selected = [str(m.obj["spec"]) for m in database_manifests(config, PlaceholderImages())
                    if m.kind in ("PodMonitor", "NetworkPolicy") and m.name.startswith("prefect-db")]
        assert selected and all("prefect-db-r1" in spec for spec in selected)

    def test_the_old_clusters_pods_keep_a_policy(self) -> None:
        config = load_config(target="kubernetes", backups={"physical": {"enabled": True}},
                             kubernetes={"network_policies": True, "postgres": {
                                 "recovery": {"enabled": True, "server_name": "prefect-db-r1"}}})
        [policy] = [m.obj for m in database_manifests(config, PlaceholderImages())
                    if m.kind == "NetworkPolicy" and m.name == "prefect-db-r1"]
        [clusters, _] = policy["spec"]["podSelector"]["matchExpressions"]
        assert clusters["values"] == ["prefect-db", "prefect-db-r1"]

    def test_without_recovery_it_is_the_original(self) -> None:
        assert database_endpoints(load_config(target="kubernetes")).direct == ("prefect-db-rw", 5432)


class TestOnDemandBackup:
    def test_backs_up_the_current_cluster_through_the_plugin(self) -> None:
        spec = on_demand_backup(_config(), "prefect-db-r1-20261127030000")["spec"]
        assert (spec["cluster"], spec["method"], spec["pluginConfiguration"]) == (
            {"name": "prefect-db-r1"}, "plugin", {"name": "barman-cloud.cloudnative-pg.io"})

    def test_validates_against_the_crd(self) -> None:
        assert checks.schema_problems(on_demand_backup(_config(), "prefect-db-r1-20261127030000"), "1.32") == []


def archive(store: BackupStore, server: str, *ended: str, status: str = "DONE", wal: bool = True) -> None:
    """Barman Cloud's layout: one backup.info per base backup, and a WAL segment."""
    client, root = store._client, store.key("cnpg", server)
    for number, end in enumerate(ended):
        info = f"backup_label=None\nbegin_time=2026-11-26 02:00:00+00:00\nend_time={end}\nstatus={status}\n"
        client.put_object(Bucket=store.bucket, Key=f"{root}/base/2026112{number}T020000/backup.info", Body=info)
    if wal:
        client.put_object(Bucket=store.bucket, Key=f"{root}/wals/0000000100000000/000000010000000000000001.zst",
                          Body=b"wal")


def _cluster(name: str) -> dict[str, Any]:
    return {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
            "metadata": {"name": name, "namespace": "prefect", "labels": {
                "app.kubernetes.io/component": "database", "app.kubernetes.io/instance": "prefect",
                "app.kubernetes.io/managed-by": "prefect-stack", "app.kubernetes.io/part-of": "prefect-stack"}}}


def _recover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: BackupStore, objects: list[dict[str, Any]],
             config: StackConfig | None = None) -> tuple[StandIn, RecoveryReport | UserError]:
    standin = StandIn.install(tmp_path, monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    standin.script(objects=objects)
    config = config or _config()
    rendering = render(config, PlaceholderImages())
    try:
        return standin, recover(config, rendering, secret_objects(config, placeholder_secrets(), AWS),
                                PlainProgress(lambda s: None), store)
    except UserError as exc:
        return standin, exc


def _applied(call: Any) -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(call.stdin) if o] if call.verb == "apply" else []


def _changes(standin: StandIn) -> list[Any]:
    return [c for c in standin.calls() if c.verb in ("scale", "delete", "apply")]


BEFORE, AFTER = "2026-11-27 02:05:00.123456+00:00", "2026-11-27 02:20:00+00:00"


class TestRecover:
    def test_refused_without_a_base_backup_before_the_target(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             store: BackupStore) -> None:
        archive(store, "prefect-db", AFTER)
        standin, outcome = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db")])
        assert isinstance(outcome, UserError) and "ended before 2026-11-27 02:15:00+00:00" in outcome.problem
        assert _changes(standin) == []

    def test_refused_with_an_empty_archive(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           store: BackupStore) -> None:
        standin, outcome = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db")])
        assert isinstance(outcome, UserError) and "no completed base backup" in outcome.problem
        assert _changes(standin) == []

    def test_refused_when_the_new_cluster_exists(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 store: BackupStore) -> None:
        archive(store, "prefect-db", BEFORE)
        standin, outcome = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db"), _cluster("prefect-db-r1")])
        assert isinstance(outcome, UserError) and "exists already" in outcome.problem
        assert "source_server: prefect-db-r1" in (outcome.fix or "")
        assert _changes(standin) == []

    def test_the_live_cluster_is_never_deleted(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               store: BackupStore) -> None:
        archive(store, "prefect-db", BEFORE)
        standin, outcome = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db")])
        assert isinstance(outcome, RecoveryReport) and outcome.old_clusters == ["prefect-db"]
        assert not [c for c in standin.calls() if c.verb == "delete" and "cluster.postgresql.cnpg.io" in c.args]

    def test_in_order(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: BackupStore) -> None:
        """Writers stop; the new Cluster alone, then ready; the migration Job goes; the Poolers follow; a backup."""
        archive(store, "prefect-db", BEFORE)
        standin, _ = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db")])
        calls = standin.calls()
        scaled = max(i for i, c in enumerate(calls) if c.verb == "scale")
        cluster_applied = next(i for i, c in enumerate(calls) if [o["kind"] for o in _applied(c)] == ["Cluster"])
        ready = next(i for i, c in enumerate(calls) if c.verb == "wait"
                     and "cluster.postgresql.cnpg.io/prefect-db-r1" in c.args)
        job_deleted = next(i for i, c in enumerate(calls) if c.verb == "delete" and "job.batch" in c.args)
        poolers = next(i for i, c in enumerate(calls) if any(o["kind"] == "Pooler" for o in _applied(c)))
        backup = next(i for i, c in enumerate(calls) if any(o["kind"] == "Backup" for o in _applied(c)))
        assert scaled < cluster_applied < ready < job_deleted < poolers < backup

    def test_recovers_from_the_archive_beside_the_old_cluster(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             store: BackupStore) -> None:
        archive(store, "prefect-db", BEFORE, AFTER)
        standin, outcome = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db")])
        [new] = [o for c in standin.calls() for o in _applied(c) if o["kind"] == "Cluster"][:1]
        assert (new["metadata"]["name"], new["spec"]["bootstrap"]["recovery"]["recoveryTarget"]) == (
            "prefect-db-r1", {"targetTime": TARGET})
        assert isinstance(outcome, RecoveryReport) and outcome.base_backup == "20261120T020000"

    def test_the_poolers_follow_the_new_cluster(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                store: BackupStore) -> None:
        archive(store, "prefect-db", BEFORE)
        standin, _ = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db")])
        poolers = [o for c in standin.calls() for o in _applied(c) if o["kind"] == "Pooler"]
        assert poolers and {p["spec"]["cluster"]["name"] for p in poolers} == {"prefect-db-r1"}

    def test_takes_a_valid_on_demand_backup(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            store: BackupStore) -> None:
        archive(store, "prefect-db", BEFORE)
        standin, outcome = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db")])
        [backup] = [o for c in standin.calls() for o in _applied(c) if o["kind"] == "Backup"]
        assert backup["spec"]["cluster"] == {"name": "prefect-db-r1"}
        assert checks.schema_problems(backup, "1.32") == []
        assert isinstance(outcome, RecoveryReport) and (outcome.backup, outcome.backup_completed) == (
            backup["metadata"]["name"], True)
        assert any(c.verb == "wait" and f"backup.postgresql.cnpg.io/{outcome.backup}" in c.args
                   for c in standin.calls())

    def test_the_migration_runs_again_on_the_recovered_database(self, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                store: BackupStore) -> None:
        archive(store, "prefect-db", BEFORE)
        standin, _ = _recover(tmp_path, monkeypatch, store, [_cluster("prefect-db")])
        calls = standin.calls()
        deleted_job = next(i for i, c in enumerate(calls) if c.verb == "delete" and "job.batch" in c.args)
        reapplied = next(i for i, c in enumerate(calls) if c.verb == "apply" and "kind: Job" in c.stdin)
        assert deleted_job < reapplied
        assert "--selector=app.kubernetes.io/component=migrate,app.kubernetes.io/instance=prefect" in calls[
            deleted_job].args

    def test_a_second_recovery_needs_no_backup_objects(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       store: BackupStore) -> None:
        """From the first recovery's archive, with both Clusters live and no Backup object left."""
        archive(store, "prefect-db-r1", BEFORE)
        config = _config(source_server="prefect-db-r1", server_name="prefect-db-r2")
        standin, outcome = _recover(tmp_path, monkeypatch, store,
                                    [_cluster("prefect-db"), _cluster("prefect-db-r1")], config)
        assert isinstance(outcome, RecoveryReport)
        assert (outcome.cluster, outcome.old_clusters) == ("prefect-db-r2", ["prefect-db", "prefect-db-r1"])
        [new] = [o for c in standin.calls() for o in _applied(c) if o["kind"] == "Cluster"][:1]
        assert new["spec"]["externalClusters"][0]["plugin"]["parameters"]["serverName"] == "prefect-db-r1"

    def test_refused_when_it_would_archive_into_its_source(self, store: BackupStore) -> None:
        config = _config(server_name="prefect-db")
        with pytest.raises(UserError, match="archive it would recover from"):
            recover(config, render(config, PlaceholderImages()), [], PlainProgress(lambda s: None), store)

    def test_not_configured_names_the_settings(self, store: BackupStore) -> None:
        config = load_config(target="kubernetes")
        with pytest.raises(UserError, match=r"recovery\.enabled") as caught:
            recover(config, render(config, PlaceholderImages()), [], PlainProgress(lambda s: None), store)
        assert "server_name" in (caught.value.fix or "")


def _cleanup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objects: list[dict[str, Any]],
             **script: Any) -> tuple[StandIn, list[str] | UserError]:
    standin = StandIn.install(tmp_path, monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    standin.script(objects=objects, **script)
    try:
        return standin, cleanup(_config(), PlainProgress(lambda s: None))
    except UserError as exc:
        return standin, exc


class TestCleanup:
    def test_deletes_the_old_cluster_in_the_foreground(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        standin, deleted = _cleanup(tmp_path, monkeypatch, [_cluster("prefect-db"), _cluster("prefect-db-r1")])
        assert deleted == ["prefect-db"]
        [call] = [c for c in standin.calls() if c.verb == "delete"]
        assert call.args[1:3] == ["cluster.postgresql.cnpg.io", "prefect-db"]
        assert {"--cascade=foreground", "--wait=true"} <= set(call.args)

    def test_keeps_everything_without_the_current_cluster(self, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        standin, outcome = _cleanup(tmp_path, monkeypatch, [_cluster("prefect-db")])
        assert isinstance(outcome, UserError) and "prefect-db-r1 does not exist" in outcome.problem
        assert _changes(standin) == []

    def test_keeps_everything_while_the_current_cluster_is_not_ready(self, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        standin, outcome = _cleanup(
            tmp_path, monkeypatch, [_cluster("prefect-db"), _cluster("prefect-db-r1")],
            conditions={"cluster.postgresql.cnpg.io/prefect-db-r1": {"condition=Ready": False}})
        assert isinstance(outcome, UserError) and "not ready" in outcome.problem
        assert _changes(standin) == []


class TestDeployAfterRecovery:
    def test_a_deploy_does_not_create_the_recovered_cluster(self, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        standin = StandIn.install(tmp_path, monkeypatch)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
        standin.script(objects=[_cluster("prefect-db")])
        with pytest.raises(UserError, match="prefect-db-r1 does not exist yet") as caught:
            refuse_deploy_before_recovery(_config())
        assert "invoke restore --target kubernetes --yes" in (caught.value.fix or "")

    def test_a_deploy_keeps_the_recovered_cluster(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        standin = StandIn.install(tmp_path, monkeypatch)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
        standin.script(objects=[_cluster("prefect-db"), _cluster("prefect-db-r1")])
        refuse_deploy_before_recovery(_config())
