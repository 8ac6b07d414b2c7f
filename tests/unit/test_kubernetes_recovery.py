"""Point-in-time recovery on Kubernetes: the Cluster rendered to bootstrap from its archive, and the recovery run
against the stand-in kubectl (the order that keeps it safe, the refusals that keep data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.compose.project import placeholder_secrets
from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.kubernetes.database import cluster, database_manifests
from infra.kubernetes.recovery import recover
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


def _backup(phase: str, name: str = "prefect-db-20261127020000") -> dict[str, Any]:
    return {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
            "metadata": {"name": name, "namespace": "prefect", "labels": {"cnpg.io/cluster": "prefect-db"}},
            "status": {"phase": phase, "stoppedAt": "2026-11-27T02:05:00Z"}}


def _recover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objects: list[dict[str, Any]]) \
        -> tuple[StandIn, UserError | None]:
    standin = StandIn.install(tmp_path, monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    standin.script(objects=objects)
    config = _config()
    rendering = render(config, PlaceholderImages())
    try:
        recover(config, rendering, secret_objects(config, placeholder_secrets(), AWS), PlainProgress(lambda s: None))
    except UserError as exc:
        return standin, exc
    return standin, None


class TestRecover:
    def test_without_a_base_backup_nothing_is_touched(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        standin, error = _recover(tmp_path, monkeypatch, [_backup("failed")])
        assert error is not None and "no completed base backup" in error.problem
        assert "kubectl cnpg backup" in (error.fix or "")
        assert not [c for c in standin.calls() if c.verb in ("scale", "delete", "apply")]

    def test_writers_stop_before_the_cluster_goes(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        standin, error = _recover(tmp_path, monkeypatch, [_backup("completed")])
        assert error is None
        verbs = [(c.verb, " ".join(c.args[1:3])) for c in standin.calls()]
        scaled = [i for i, (verb, _) in enumerate(verbs) if verb == "scale"]
        deleted = verbs.index(("delete", "cluster.postgresql.cnpg.io prefect-db"))
        assert len(scaled) == 2 and max(scaled) < deleted

    def test_the_migration_runs_again_on_the_recovered_database(self, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
        standin, _ = _recover(tmp_path, monkeypatch, [_backup("completed")])
        calls = standin.calls()
        deleted_job = next(i for i, c in enumerate(calls) if c.verb == "delete" and "job.batch" in c.args)
        reapplied = next(i for i, c in enumerate(calls) if c.verb == "apply" and "kind: Job" in c.stdin)
        assert deleted_job < reapplied
        assert "--selector=app.kubernetes.io/component=migrate,app.kubernetes.io/instance=prefect" in calls[
            deleted_job].args

    def test_the_cluster_is_recreated_from_the_archive(self, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        standin, _ = _recover(tmp_path, monkeypatch, [_backup("completed")])
        calls = standin.calls()
        deleted = next(i for i, c in enumerate(calls) if c.verb == "delete")
        applied = [yaml.safe_load_all(c.stdin) for c in calls[deleted:] if c.verb == "apply"]
        clusters = [o for objects in applied for o in objects if o["kind"] == "Cluster"]
        assert clusters[0]["spec"]["bootstrap"]["recovery"]["recoveryTarget"] == {"targetTime": TARGET}

    def test_not_configured_names_the_settings(self) -> None:
        config = load_config(target="kubernetes")
        with pytest.raises(UserError, match=r"recovery\.enabled") as caught:
            recover(config, render(config, PlaceholderImages()), [], PlainProgress(lambda s: None))
        assert "server_name" in (caught.value.fix or "")
