"""The compose project rendered from the model: valid compose-spec, the repository's copy up to date, secrets only
as files, and every service hardened (health check, restart policy, limits, non-root, internal back end; no
capability, no privilege gain, a read-only root filesystem and exactly one init, as on Kubernetes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.compose.project import (
    BACKEND,
    CONTAINER_UID,
    TMPFS_SIZE,
    ComposeProject,
    placeholder_tls,
    reference_rendering,
    render_project,
    write_project,
)
from infra.config import REPO_ROOT, StackConfig, load_config
from infra.containers.images import DOCKERFILES, INIT_ENTRYPOINT
from infra.secrets import SECRET_NAMES, Secrets, ensure_secrets
from infra.tls import LoadBalancerTls, load_balancer_tls

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
UPSTREAM = {"grafana", "jaeger"}  # upstream images with users of their own
PUBLISHED = {"haproxy", "prometheus", "alertmanager", "grafana", "jaeger"}


@dataclass(frozen=True)
class Images:
    system: str = "prefect-stack/system:0123456789ab"
    prefect: str = "prefect-stack/prefect:0123456789ab"


@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    return ensure_secrets(tmp_path / "secrets")


def _project(secrets: Secrets, tls: LoadBalancerTls | None = None, **overrides: Any) -> ComposeProject:
    return render_project(StackConfig(target="compose", **overrides), secrets, Images(), tls or placeholder_tls())


def _services(project: ComposeProject) -> dict[str, dict[str, Any]]:
    return dict(project.document["services"])


def test_the_repository_copy_is_the_rendering_of_the_default_configuration() -> None:
    """compose/ shows what deploy writes for infra/stack.yaml; `invoke render` refreshes it."""
    project = reference_rendering(load_config(target="compose"))
    directory = REPO_ROOT / "compose"
    assert (directory / "compose.yaml").read_text() == project.compose_yaml, "run: invoke render --target compose"
    for rendered in project.files:
        assert (directory / rendered.path).read_text() == rendered.content, f"stale {rendered.path}: invoke render"
    shipped = {p.relative_to(directory) for p in (directory / "config").iterdir()}
    assert shipped == {f.path for f in project.files}, "compose/config holds a file the model does not render"


@pytest.mark.parametrize("overrides", [{}, {"api": {"replicas": 4}, "services": {"replicas": 2}},
                                       {"monitoring": {"enabled": False}},
                                       {"backups": {"s3": {"endpoint_url": "https://s3.eu-west-1.amazonaws.com"}}}],
                         ids=["default", "scaled", "no-monitoring", "real-s3"])
def test_compose_file_is_valid_compose_spec(tmp_path: Path, secrets: Secrets, overrides: dict[str, Any]) -> None:
    write_project(_project(secrets, **overrides), tmp_path / "project", None)
    result = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec",
                             str(tmp_path / "project" / "compose.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_secret_value_in_the_compose_file_configs_or_environment(tmp_path: Path, secrets: Secrets) -> None:
    config = StackConfig(target="compose")
    tls = load_balancer_tls(config, tmp_path / "secrets", names=("haproxy",))
    project = _project(secrets, tls)
    public = [project.compose_yaml] + [f.content for f in project.files if not f.secret]
    values = {name: secrets.get(name).partition(":")[2] or secrets.get(name) for name in SECRET_NAMES}
    values["load balancer private key"] = tls.private_key.strip().splitlines()[1]
    for name, value in values.items():
        for text in public:
            assert value not in text, f"secret {name} appears in a file that is not a compose secret"
    assert tls.trusted in [f.content for f in project.files if not f.secret]  # the CA is public: a config


def test_secret_files_are_private_and_owned_by_the_containers_user(tmp_path: Path, secrets: Secrets) -> None:
    project = _project(secrets)
    write_project(project, tmp_path / "project", CONTAINER_UID if os.geteuid() == 0 else None)
    secret_files = [tmp_path / "project" / f.path for f in project.files if f.secret]
    assert secret_files
    for path in secret_files:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert (tmp_path / "project").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("service", sorted(_services(reference_rendering(StackConfig(target="compose")))))
def test_every_service_is_hardened(service: str, secrets: Secrets) -> None:
    definition = _services(_project(secrets))[service]
    assert definition["restart"] in ("unless-stopped", "no")
    limits = definition["deploy"]["resources"]["limits"]
    assert limits["memory"] and float(limits["cpus"]) > 0
    if service not in UPSTREAM:
        assert definition["user"] == f"{CONTAINER_UID}:{CONTAINER_UID}"
        assert "healthcheck" in definition or service == "migrate"
    if service not in PUBLISHED:
        assert "ports" not in definition
        assert definition["networks"] == [BACKEND]


SERVICES = sorted(_services(reference_rendering(StackConfig(target="compose"))))


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_drops_every_capability(service: str, secrets: Secrets) -> None:
    definition = _services(_project(secrets))[service]
    assert definition["cap_drop"] == ["ALL"]
    assert "cap_add" not in definition  # none proved it needs one: every process runs unprivileged
    assert "privileged" not in definition


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_can_gain_privileges(service: str, secrets: Secrets) -> None:
    assert "no-new-privileges:true" in _services(_project(secrets))[service]["security_opt"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_root_filesystem_is_read_only_with_bounded_tmpfs_scratch(service: str, secrets: Secrets) -> None:
    definition = _services(_project(secrets))[service]
    assert definition["read_only"] is True
    tmpfs = {entry.partition(":")[0]: entry.partition(":")[2].split(",") for entry in definition["tmpfs"]}
    assert "/tmp" in tmpfs
    for path, options in tmpfs.items():
        assert f"size={TMPFS_SIZE}" in options, f"{service}: tmpfs {path} is unbounded"
        if path != "/tmp":  # the containers' user's own directories, as the image creates them
            assert {f"uid={CONTAINER_UID}", f"gid={CONTAINER_UID}", "mode=0755"} <= set(options), path


def _entrypoint(dockerfile: Path) -> list[str] | None:
    """The last ENTRYPOINT of a Dockerfile (exec form), None when it declares none (it inherits its base's)."""
    found = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile.read_text(), flags=re.MULTILINE)
    return json.loads(found[-1]) if found else None


def test_the_project_images_entrypoint_is_their_init() -> None:
    """What the compose file relies on to leave Docker's init off: the system image's ENTRYPOINT is tini, and the
    Prefect image (FROM the system image) does not replace it."""
    assert _entrypoint(DOCKERFILES / "system" / "Dockerfile") == list(INIT_ENTRYPOINT)
    assert _entrypoint(DOCKERFILES / "prefect" / "Dockerfile") is None


@pytest.mark.parametrize("service", SERVICES)
def test_every_container_has_exactly_one_init(service: str, secrets: Secrets) -> None:
    """The project's images bring tini (their entrypoint): Docker's init is off, explicitly (a daemon may default
    to it), or tini would run under docker-init. Upstream images start their program directly: Docker adds one."""
    definition = _services(_project(secrets))[service]
    if service in UPSTREAM:
        assert definition["init"] is True
        assert "entrypoint" not in definition
    else:
        assert definition["image"] in (Images.system, Images.prefect)
        assert definition["init"] is False
        assert "entrypoint" not in definition  # the image's, tini


def test_back_end_network_is_internal_and_only_the_load_balancer_publishes_beyond_loopback(secrets: Secrets) -> None:
    project = _project(secrets, load_balancer={"bind_address": "10.0.0.5"})
    assert project.document["networks"][BACKEND] == {"internal": True}
    for name, definition in _services(project).items():
        for port in definition.get("ports", []):
            host = port.split(":")[0]
            assert host == ("10.0.0.5" if name == "haproxy" else "127.0.0.1"), f"{name} publishes {port}"


def test_api_replicas_start_only_after_the_migration_completed(secrets: Secrets) -> None:
    services = _services(_project(secrets, api={"replicas": 3}))
    for i in (1, 2, 3):
        depends = services[f"api-{i}"]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["pgbouncer"] == {"condition": "service_healthy"}
    assert services["migrate"]["restart"] == "no"
    assert set(services["migrate"]["secrets"][1]) == {"source", "target"}


def test_changed_file_content_changes_the_service_definition(secrets: Secrets) -> None:
    """Compose compares service definitions only: the files' hash label makes a config change recreate."""
    before = _services(_project(secrets))
    after = _services(_project(secrets, pgbouncer={"default_pool_size": 77}))
    assert before["pgbouncer"]["labels"] != after["pgbouncer"]["labels"]
    assert before["redis"]["labels"] == after["redis"]["labels"]


def test_without_a_real_s3_endpoint_the_stack_runs_its_own(secrets: Secrets) -> None:
    assert "s3" in _services(_project(secrets))
    assert "s3" not in _services(_project(secrets, backups={"s3": {"endpoint_url": "https://s3.example.com"}}))


@pytest.mark.parametrize(("s3", "given"), [
    ({}, {"postgres_superuser", "postgres_prefect", "backup_encryption", "s3_local"}),
    ({"endpoint_url": "https://s3.example.com"}, {"postgres_superuser", "postgres_prefect", "backup_encryption"}),
])
def test_the_backup_container_gets_only_the_secrets_the_backup_reads(secrets: Secrets, s3: dict[str, Any],
                                                                      given: set[str]) -> None:
    """Least privilege: not the API admin's, Redis', HAProxy's or Grafana's credentials."""
    service = _services(_project(secrets, backups={"s3": s3}))["backup-scheduler"]
    assert {mount["source"] for mount in service["secrets"]} == given


def test_grafana_and_jaeger_can_be_turned_off(secrets: Secrets) -> None:
    services = _services(_project(secrets, compose={"grafana": False, "jaeger": False}))
    assert not UPSTREAM & set(services)


def test_rendered_compose_yaml_parses_back(secrets: Secrets) -> None:
    project = _project(secrets)
    assert yaml.safe_load(project.compose_yaml) == project.document


def test_with_the_stacks_jaeger_the_prefect_processes_send_it_their_spans(secrets: Secrets) -> None:
    services = _services(_project(secrets))
    for name in ("api-1", "services-1"):
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert "opentelemetry-instrument" in " ".join(services[name]["command"])
    quiet = _services(_project(secrets, compose={"jaeger": False}))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in quiet["api-1"].get("environment", {})


def test_jaeger_receives_otlp_and_keeps_spans_on_a_volume(secrets: Secrets) -> None:
    project = _project(secrets)
    jaeger = yaml.safe_load(next(f.content for f in project.files if f.path.name == "jaeger.yaml"))
    assert jaeger["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    assert jaeger["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
    badger = jaeger["extensions"]["jaeger_storage"]["backends"]["main"]["badger"]
    assert badger["ttl"]["spans"] and not badger["ephemeral"]
    assert "jaeger-data:/var/lib/jaeger" in _services(project)["jaeger"]["volumes"]


def test_jaeger_in_memory_keeps_max_traces_and_needs_no_volume(secrets: Secrets) -> None:
    project = _project(secrets, tracing={"jaeger_storage": {"backend": "memory", "max_traces": 5000}})
    jaeger = yaml.safe_load(next(f.content for f in project.files if f.path.name == "jaeger.yaml"))
    assert jaeger["extensions"]["jaeger_storage"]["backends"] == {"main": {"memory": {"max_traces": 5000}}}
    assert "volumes" not in _services(project)["jaeger"]
    assert "jaeger-data" not in project.document.get("volumes", {})


def test_grafana_is_provisioned_with_prometheus_jaeger_and_every_dashboard(secrets: Secrets) -> None:
    project = _project(secrets)
    grafana = _services(project)["grafana"]
    targets = {m["target"] for m in grafana["configs"]}
    assert {t for t in targets if t.startswith("/etc/grafana/dashboards/")}
    datasources = yaml.safe_load(next(f.content for f in project.files
                                      if f.path.name.endswith("provisioning-datasources-prefect-stack.yaml")))
    urls = {d["type"]: d["url"] for d in datasources["datasources"]}
    assert urls == {"prometheus": "http://prometheus:19090", "jaeger": "http://jaeger:16686"}
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin"
