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
    DOCKER_SOCKET,
    FRONTEND,
    TMPFS_SIZE,
    WORKER_PIDS_LIMIT,
    ComposeProject,
    DockerSocket,
    compose_memory,
    docker_pool_variables,
    placeholder_tls,
    reference_rendering,
    render_project,
    write_project,
)
from infra.config import REPO_ROOT, StackConfig, load_config
from infra.containers.images import DOCKERFILES, INIT_ENTRYPOINT
from infra.render.workers import CONTAINER_FLOW_CODE_DIR
from infra.secrets import SECRET_NAMES, Secrets, ensure_secrets
from infra.tls import LoadBalancerTls, load_balancer_tls
from infra.work_pools.templates import desired_pools

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
        # Workers reach only the load balancer (and the outside world their flows may need), not the back end.
        assert definition["networks"] == ([FRONTEND] if service.startswith("worker-") else [BACKEND])


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
        # Jaeger keeps spans, not logs: log records go only to a collector the configuration names.
        assert services[name]["environment"]["OTEL_LOGS_EXPORTER"] == "none"
    collector = _services(_project(secrets, tracing={"enabled": True, "otlp_endpoint": "http://collector:4318"}))
    assert collector["api-1"]["environment"]["OTEL_LOGS_EXPORTER"] == "otlp"
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


# --- Workers ------------------------------------------------------------------------------------------------------

TWO_POOLS = {"pools": [{"name": "default"}, {"name": "gpu", "queues": [{"name": "high"}, {"name": "low"}]}],
             "workers": [{"pool": "default", "count": 2},
                         {"pool": "gpu", "queues": ["high"], "limit": 3,
                          "resources": {"memory_limit": "512Mi", "cpu_limit": "1500m"}}]}


def test_one_worker_service_per_numbered_worker(secrets: Secrets) -> None:
    services = _services(_project(secrets, workers=TWO_POOLS))
    assert sorted(s for s in services if s.startswith("worker-")) == [
        "worker-default-1", "worker-default-2", "worker-gpu-1"]
    command = services["worker-gpu-1"]["command"]
    start = command[command.index("--") + 1:]
    assert start[1:4] == ["worker", "start", "--pool"]
    assert {"--no-create-pool-if-not-found", "--with-healthcheck"} <= set(start)
    assert start[start.index("--work-queue") + 1] == "high" and start[start.index("--limit") + 1] == "3"
    assert start[start.index("--type") + 1] == "process"


def test_no_worker_when_workers_are_disabled(secrets: Secrets) -> None:
    assert not [s for s in _services(_project(secrets, workers={"enabled": False})) if s.startswith("worker-")]


@pytest.mark.parametrize(("quantity", "spelt"), [("1Gi", "1g"), ("512Mi", "512m"), ("300Ki", "300k")])
def test_worker_memory_limits_are_spelt_for_docker(quantity: str, spelt: str) -> None:
    assert compose_memory(quantity) == spelt


def test_a_workers_limits_come_from_its_resources(secrets: Secrets) -> None:
    services = _services(_project(secrets, workers=TWO_POOLS))
    assert services["worker-gpu-1"]["deploy"]["resources"]["limits"] == {"cpus": "1.5", "memory": "512m",
                                                                         "pids": WORKER_PIDS_LIMIT}
    assert services["worker-default-1"]["deploy"]["resources"]["limits"]["memory"] == "1g"


def test_a_worker_starts_after_the_load_balancer_and_reports_its_polling_health(secrets: Secrets) -> None:
    config = StackConfig(target="compose")
    worker = _services(_project(secrets))["worker-default-1"]
    assert worker["depends_on"] == {"haproxy": {"condition": "service_healthy"}}
    port = str(config.workers.health_base_port)
    assert worker["environment"]["PREFECT_WORKER_WEBSERVER_HOST"] == "127.0.0.1"
    assert worker["environment"]["PREFECT_WORKER_WEBSERVER_PORT"] == port
    assert worker["healthcheck"]["test"][-1] == f"http://127.0.0.1:{port}/health"
    assert worker["restart"] == "unless-stopped"


def _worker_env(project: ComposeProject) -> dict[str, str]:
    env_file = next(f for f in project.files if f.path.name == "worker.env.json")
    return dict(json.loads(env_file.content))


def test_a_worker_calls_the_api_through_the_load_balancer_trusting_the_stacks_ca(secrets: Secrets) -> None:
    config = StackConfig(target="compose")
    project = _project(secrets)
    env = _worker_env(project)
    assert env["PREFECT_API_URL"] == f"https://haproxy:{config.load_balancer.port}/api"
    assert env["PREFECT_API_AUTH_STRING"] == secrets.get("prefect_auth")
    ca = env["PREFECT_API_SSL_CERT_FILE"]
    assert ca in {m["target"] for m in _services(project)["worker-default-1"]["configs"]}


def test_a_worker_gets_no_database_or_redis_credential_and_no_secret_in_its_environment(secrets: Secrets) -> None:
    project = _project(secrets)
    worker = _services(project)["worker-default-1"]
    visible = json.dumps(worker)
    for name in SECRET_NAMES:
        value = secrets.get(name)
        assert (value.partition(":")[2] or value) not in visible, name
    given = json.dumps(_worker_env(project))
    for name in ("postgres_prefect", "postgres_superuser", "redis", "postgres_monitor"):
        assert secrets.get(name) not in given, name
    assert not [k for k in _worker_env(project) if "DATABASE" in k or "REDIS" in k or "DOCKET" in k]
    assert [m["source"] for m in worker["secrets"]] == ["worker_env_json"]


def test_flow_code_is_mounted_read_only_at_the_hosts_path_and_the_container_path(tmp_path: Path,
                                                                                 secrets: Secrets) -> None:
    code = tmp_path / "flows"
    worker = _services(_project(secrets, workers={"flow_code_dir": str(code)}))["worker-default-1"]
    mounts = {m["target"]: m for m in worker["volumes"]}
    assert set(mounts) == {str(code), CONTAINER_FLOW_CODE_DIR}
    for mount in mounts.values():
        assert mount["source"] == str(code) and mount["read_only"] is True
        assert mount["bind"] == {"create_host_path": False}  # deploy checks it; Docker never makes a root-owned one
    assert worker["working_dir"] == CONTAINER_FLOW_CODE_DIR


def test_without_a_flow_code_dir_the_state_dirs_flows_is_mounted(tmp_path: Path, secrets: Secrets) -> None:
    worker = _services(_project(secrets, local={"state_dir": str(tmp_path)}))["worker-default-1"]
    assert {m["source"] for m in worker["volumes"]} == {str(tmp_path / "flows")}


DOCKER_POOLS = {"docker_socket": True, "pools": [{"name": "default"}, {"name": "boxed", "type": "docker"}],
                "workers": [{"pool": "default"}, {"pool": "boxed"}]}


def test_only_docker_pool_workers_get_the_docker_socket(secrets: Secrets) -> None:
    project = render_project(StackConfig(target="compose", workers=DOCKER_POOLS), secrets, Images(),
                             placeholder_tls(), DockerSocket(Path("/run/engine.sock"), 998))
    services = _services(project)
    boxed, plain = services["worker-boxed-1"], services["worker-default-1"]
    assert {"source": "/run/engine.sock", "target": str(DOCKER_SOCKET), "type": "bind",
            "bind": {"create_host_path": False}} in boxed["volumes"]
    assert boxed["group_add"] == ["998"] and boxed["user"] == f"{CONTAINER_UID}:{CONTAINER_UID}"
    assert boxed["command"][boxed["command"].index("--type") + 1] == "docker"
    assert boxed["environment"]["DOCKER_HOST"] == f"unix://{DOCKER_SOCKET}"
    for name, service in services.items():
        if name != "worker-boxed-1":
            assert str(DOCKER_SOCKET) not in json.dumps(service.get("volumes", [])), name
            assert "group_add" not in service, name
    assert "DOCKER_HOST" not in plain["environment"]


def test_the_default_model_mounts_no_docker_socket(secrets: Secrets) -> None:
    assert "docker.sock" not in _project(secrets).compose_yaml


def test_docker_pools_run_flows_in_the_projects_image_next_to_the_load_balancer(tmp_path: Path) -> None:
    config = StackConfig(target="compose", local={"state_dir": str(tmp_path)}, workers=DOCKER_POOLS)
    variables = docker_pool_variables(config, Images.prefect)
    assert variables["image"] == Images.prefect and variables["image_pull_policy"] == "Never"
    assert variables["networks"] == [f"{config.compose.project}_{FRONTEND}"]
    assert f"{tmp_path / 'flows'}:{tmp_path / 'flows'}:ro" in variables["volumes"]
    assert any(v.endswith("/lb-ca.crt:ro") for v in variables["volumes"])
    assert variables["auto_remove"] is True  # Compose does not know these containers: none may be left behind
    hardening = variables["container_create_kwargs"]
    assert hardening["cap_drop"] == ["ALL"] and hardening["read_only"] is True
    assert "no-new-privileges:true" in hardening["security_opt"]
    pools = {pool.name: pool for pool in desired_pools(config, {"docker": variables})}  # valid for the type
    defaults = pools["boxed"].base_job_template["variables"]["properties"]
    assert defaults["image"]["default"] == Images.prefect
    assert "image" not in pools["default"].base_job_template["variables"]["properties"]


def test_workers_with_docker_pools_render_valid_compose_spec(tmp_path: Path, secrets: Secrets) -> None:
    project = render_project(StackConfig(target="compose", workers=DOCKER_POOLS), secrets, Images(),
                             placeholder_tls(), DockerSocket(Path("/run/engine.sock"), 998))
    write_project(project, tmp_path / "project", None)
    result = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec",
                             str(tmp_path / "project" / "compose.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_changing_a_workers_setting_changes_only_the_workers(secrets: Secrets) -> None:
    before = _services(_project(secrets))
    after = _services(_project(secrets, workers={"flow_heartbeat_s": 30, "query_interval_s": 5}))
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["worker-default-1"]


def test_every_container_log_is_rotated_by_size_and_count_from_the_model(secrets: Secrets) -> None:
    services = _services(_project(secrets, logs={"rotation": {"max_size_mb": 20, "keep": 4}}))
    for name, service in services.items():
        assert service["logging"] == {"driver": "json-file", "options": {"max-size": "20m", "max-file": "4"}}, name
