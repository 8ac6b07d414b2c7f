"""The backup family's target-aware parts: where the code finds PostgreSQL and the bucket, the compose target's backup
container as rendered, the host handing tasks to it, and the one order of a restore around its downtime."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from invoke import MockContext
from invoke.exceptions import Exit

from infra.backup.database import database_access
from infra.backup.restore import Swapped, restore_with_downtime
from infra.compose import backups as compose_backups
from infra.compose.project import BACKUP_SCHEDULER, CONTAINER, ComposeProject, placeholder_tls, render_project
from infra.config import CONFIG_FILE_ENV, IN_CONTAINER_ENV, StackConfig
from infra.progress import QuietProgress
from infra.secrets import BACKUP_SECRETS, Secrets, ensure_secrets
from infra.tasks import backup as backup_tasks


class Images:
    system = "prefect-stack/system:test"
    prefect = "prefect-stack/prefect:test"


@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    return ensure_secrets(tmp_path / "secrets")


def _project(secrets: Secrets, **overrides: Any) -> ComposeProject:
    return render_project(StackConfig(target="compose", **overrides), secrets, Images(), placeholder_tls())


def _scheduler(project: ComposeProject) -> dict[str, Any]:
    service: dict[str, Any] = project.document["services"][BACKUP_SCHEDULER]
    return service


# --- where the backup code finds the bucket and the database ----------------------------------------------------


@pytest.mark.parametrize(("target", "endpoint"), [("local", "http://127.0.0.1:19000"), ("compose", "http://s3:19000")])
def test_the_stacks_own_s3_endpoint_per_target(target: str, endpoint: str) -> None:
    assert StackConfig(target=target).s3_endpoint_url == endpoint


@pytest.mark.parametrize("target", ["local", "compose"])
def test_a_configured_s3_endpoint_wins_on_every_target(target: str) -> None:
    config = StackConfig(target=target, backups={"s3": {"endpoint_url": "https://s3.example.com"}})
    assert config.s3_endpoint_url == "https://s3.example.com"


def test_local_database_access_is_the_unix_socket_without_a_password(secrets: Secrets, tmp_path: Path) -> None:
    access = database_access(StackConfig(local={"state_dir": tmp_path}), secrets)
    assert access.host == str(tmp_path / "run")
    assert access.user == "postgres" and access.password is None


def test_compose_database_access_is_the_postgres_service_as_superuser(secrets: Secrets) -> None:
    access = database_access(StackConfig(target="compose"), secrets)
    assert (access.host, access.port, access.user) == ("postgres", 15432, "postgres")
    assert access.password == secrets.get("postgres_superuser")
    assert access.env()["PGPASSWORD"] == secrets.get("postgres_superuser")


# --- the backup container, as rendered ----------------------------------------------------------------------------


def test_the_backup_container_runs_the_scheduler_of_the_local_target(secrets: Secrets) -> None:
    service = _scheduler(_project(secrets))
    assert service["command"][-2:] == ["-m", "infra.backup.scheduler"]
    assert service["image"] == Images.prefect
    assert service["user"] == "10001:10001"


def test_the_backup_container_reads_the_effective_configuration_of_the_compose_target(secrets: Secrets) -> None:
    project = _project(secrets, backups={"scratch_dir": "/host/scratch"})
    service = _scheduler(project)
    path = service["environment"][CONFIG_FILE_ENV]
    assert service["environment"][IN_CONTAINER_ENV] == "1"
    assert {"source": "stack_effective_yaml", "target": path} in service["configs"]
    effective = yaml.safe_load(next(f.content for f in project.files if f.path.name == "stack.effective.yaml"))
    assert effective["target"] == "compose"
    assert effective["local"]["state_dir"] == str(CONTAINER.root)
    assert effective["backups"]["scratch_dir"] is None  # a host's path means nothing in the container


def test_the_backup_container_finds_the_secrets_where_the_code_looks(secrets: Secrets) -> None:
    mounted = {m["source"]: m["target"] for m in _scheduler(_project(secrets))["secrets"]}
    assert mounted == {name: str(CONTAINER.secrets / name) for name in BACKUP_SECRETS}


def test_the_backup_metrics_are_in_the_volume_node_exporter_reads(secrets: Secrets) -> None:
    services = _project(secrets).document["services"]
    shared = f"metrics:{CONTAINER.metrics}"
    assert shared in services[BACKUP_SCHEDULER]["volumes"]
    assert shared in services["node-exporter"]["volumes"]


@pytest.mark.parametrize(("endpoint", "networks"), [(None, ["backend"]),
                                                    ("https://s3.example.com", ["backend", "frontend"])])
def test_the_backup_container_leaves_the_internal_network_only_for_a_real_bucket(
        secrets: Secrets, endpoint: str | None, networks: list[str]) -> None:
    service = _scheduler(_project(secrets, backups={"s3": {"endpoint_url": endpoint}}))
    assert service["networks"] == networks


def test_the_backup_container_gets_the_prefect_memory_limit(secrets: Secrets) -> None:
    service = _scheduler(_project(secrets, compose={"api_memory": "3g"}))
    assert service["deploy"]["resources"]["limits"]["memory"] == "3g"


def test_verifications_temporary_server_keeps_its_copy_on_the_scratch_volume(secrets: Secrets) -> None:
    """The restored copy on a named volume at the code's scratch_dir (on disk: a tmpfs would count against the
    memory limit), the server's socket in the container's /tmp tmpfs; the root filesystem stays read-only."""
    project = _project(secrets)
    service = _scheduler(project)
    effective = yaml.safe_load(next(f.content for f in project.files if f.path.name == "stack.effective.yaml"))
    scratch = StackConfig(**effective).scratch_dir
    assert f"backup-scratch:{scratch}" in service["volumes"]
    assert "backup-scratch" in project.document["volumes"]
    assert any(mount.startswith("/tmp:") for mount in service["tmpfs"])
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


# --- the host hands the tasks to the container -------------------------------------------------------------------


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def run_task(config: StackConfig, argv: list[str]) -> int:
        calls.append(argv)
        return 3

    monkeypatch.setattr(compose_backups, "run_task", run_task)
    return calls


@pytest.mark.parametrize(("task", "kwargs", "argv"), [
    (backup_tasks.backup, {"json_": True}, ["backup", "--method", "logical", "--type", "incr", "--json"]),
    (backup_tasks.list_, {"json_": True}, ["backup.list", "--json"]),
    (backup_tasks.verify, {"id": "20260101T000000Z"}, ["backup.verify", "--id", "20260101T000000Z"]),
    (backup_tasks.prune, {"apply": True}, ["backup.prune", "--apply"]),
], ids=["backup", "list", "verify", "prune"])
def test_on_the_compose_host_a_task_runs_in_the_backup_container_with_its_exit_status(
        handed: list[list[str]], task: Any, kwargs: dict[str, Any], argv: list[str]) -> None:
    with pytest.raises(Exit) as exited:
        task(MockContext(), target="compose", **kwargs)
    assert exited.value.code == 3
    assert handed == [argv]


def test_in_the_container_the_task_does_the_work_itself(handed: list[list[str]], monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv(IN_CONTAINER_ENV, "1")
    monkeypatch.setenv("PREFECT_STACK_LOCAL__STATE_DIR", str(tmp_path))
    with pytest.raises(Exit) as exited:  # no secrets there: the task's own error, not a hand-over
        backup_tasks.list_(MockContext(), target="compose")
    assert handed == [] and "no secrets" in str(exited.value.message)


@pytest.mark.parametrize("kwargs", [{"method": "physical"}, {"to_time": "2026-11-23 20:15:00+00", "yes": True}],
                         ids=["backup", "restore"])
def test_physical_backups_are_refused_on_compose_naming_the_fix(handed: list[list[str]],
                                                                kwargs: dict[str, Any]) -> None:
    task = backup_tasks.backup if "method" in kwargs else backup_tasks.restore
    with pytest.raises(Exit) as exited:
        task(MockContext(), target="compose", **kwargs)
    message = str(exited.value.message)
    assert "not supported on the compose target" in message and "--method logical" in message
    assert handed == []


# --- one order of a restore, whatever the target -----------------------------------------------------------------


class _Recorder:
    def __init__(self, replaced_revision: str | None = "abc") -> None:
        self.calls: list[str] = []
        self.replaced_revision = replaced_revision

    # RestoreData
    def check(self) -> int:
        self.calls.append("check")
        return 3

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.calls.append("lock")
        yield
        self.calls.append("unlock")

    def safety_backup(self) -> str | None:
        self.calls.append("safety")
        return "SAFETY"

    def restore_beside(self) -> str:
        self.calls.append("beside")
        return "prefect_restore_x"

    def swap(self, side: str, previous: str) -> Swapped:
        self.calls.append(f"swap {side} {previous}")
        return Swapped(previous, "abc", self.replaced_revision)

    def finish(self, previous: str, keep_previous: bool) -> dict[str, int]:
        self.calls.append(f"finish keep={keep_previous}")
        return {"flow": 1}

    # Downtime
    def stop(self) -> None:
        self.calls.append("stop")

    def migrate_if_needed(self, swapped: Swapped) -> bool:
        self.calls.append("migrate?")
        return swapped.replaced_revision != swapped.restored_revision

    def start(self) -> None:
        self.calls.append("start")


def test_a_restore_proves_the_copy_before_the_downtime_and_ends_once_prefect_serves() -> None:
    recorder = _Recorder()
    report = restore_with_downtime("ID", 3, recorder, recorder, QuietProgress(), "prefect_before_x")
    assert recorder.calls == ["check", "lock", "safety", "beside", "stop", "swap prefect_restore_x prefect_before_x",
                              "migrate?", "start", "finish keep=False", "unlock"]
    assert (report.backup_id, report.safety_backup_id, report.migrated, report.row_counts) == \
        ("ID", "SAFETY", False, {"flow": 1})


def test_the_compose_restore_migrates_when_nothing_was_replaced() -> None:
    downtime = compose_backups.ComposeDowntime.__new__(compose_backups.ComposeDowntime)
    downtime.config, downtime.progress = StackConfig(target="compose"), QuietProgress()
    ran: list[tuple[str, ...]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compose_backups, "run_compose", lambda config, *args, **kw: ran.append(args))
        assert downtime.migrate_if_needed(Swapped("p", "abc", "abc")) is False
        assert downtime.migrate_if_needed(Swapped("p", "abc", None)) is True
        assert downtime.migrate_if_needed(Swapped("p", "old", "new")) is True
    assert ran == [("up", "--no-deps", "--exit-code-from", "migrate", "migrate")] * 2
