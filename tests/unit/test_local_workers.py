"""The local target's workers in the plan: one supervised program per worker, on its own loopback health port, in the
flow code directory, with a client's environment only; a workers.python that cannot run them is refused."""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.executables import venv_bin
from infra.layout import StateLayout
from infra.local import deploy as local_deploy
from infra.local.plan import LocalPlan, build_plan
from infra.local.workers import check_worker_python, flow_code_dir, prefect_version
from infra.render.supervisor import priority
from infra.secrets import Secrets, ensure_secrets

WORKERS = {"pools": [{"name": "etl"}, {"name": "ml", "queues": [{"name": "gpu"}, {"name": "cpu"}]}],
           "workers": [{"pool": "etl", "count": 2}, {"pool": "ml", "queues": ["gpu"], "limit": 3}],
           "health_base_port": 28100}
NAMES = ["worker-etl-1", "worker-etl-2", "worker-ml-1"]
SERVER_ONLY = ["PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DOCKET_URL",
               "PREFECT_REDIS_MESSAGING_PASSWORD", "PREFECT_SERVER_API_AUTH_STRING"]


@pytest.fixture
def make(state_dir: Path) -> Callable[..., StackConfig]:
    def make(**workers: Any) -> StackConfig:
        return load_config(local={"state_dir": str(state_dir)}, workers={**WORKERS, **workers})

    return make


@pytest.fixture
def secrets(layout: StateLayout) -> Secrets:
    return ensure_secrets(layout.secrets)


@pytest.fixture
def plan(make: Callable[..., StackConfig], secrets: Secrets) -> LocalPlan:
    return build_plan(make(), secrets)


def test_one_program_per_worker_of_the_model(plan: LocalPlan) -> None:
    assert [p.name for p in plan.by_component("worker")] == NAMES


def test_workers_start_after_the_load_balancer(plan: LocalPlan) -> None:
    names = [p.name for p in plan.programs]
    assert min(names.index(name) for name in NAMES) > names.index("haproxy")


def test_each_worker_has_its_own_health_port(plan: LocalPlan) -> None:
    assert [p.port for p in plan.by_component("worker")] == [28100, 28101, 28102]


@pytest.mark.parametrize(("name", "port"), list(zip(NAMES, [28100, 28101, 28102], strict=True)))
def test_health_endpoint_on_loopback_at_its_port(plan: LocalPlan, name: str, port: int) -> None:
    env = plan.program(name).environment
    assert (env["PREFECT_WORKER_WEBSERVER_HOST"], env["PREFECT_WORKER_WEBSERVER_PORT"]) == ("127.0.0.1", str(port))


def test_command_names_pool_queues_limit_and_the_stacks_prefect(plan: LocalPlan) -> None:
    command = plan.program("worker-ml-1").command
    assert command[:3] == (str(venv_bin() / "prefect"), "worker", "start")
    assert command[command.index("--pool") + 1] == "ml"
    assert command[command.index("--type") + 1] == "process"
    assert command[command.index("--name") + 1] == "ml-1"
    assert command[command.index("--work-queue") + 1] == "gpu"
    assert command[command.index("--limit") + 1] == "3"
    assert "--no-create-pool-if-not-found" in command


def test_command_uses_the_configured_python_environment(make: Callable[..., StackConfig], secrets: Secrets,
                                                        tmp_path: Path) -> None:
    plan = build_plan(make(python=str(tmp_path / "flows-venv")), secrets)
    assert plan.program("worker-etl-1").command[0] == str(tmp_path / "flows-venv" / "bin" / "prefect")


@pytest.mark.parametrize("name", NAMES)
def test_environment_reaches_the_api_through_the_load_balancer(plan: LocalPlan, secrets: Secrets, name: str) -> None:
    env = plan.program(name).environment
    assert env["PREFECT_API_URL"] == plan.config.api_url
    assert env["PREFECT_API_AUTH_STRING"] == secrets.get("prefect_auth")
    assert env["PREFECT_HOME"] == env["HOME"] == str(plan.layout.prefect_home)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("key", SERVER_ONLY)
def test_environment_holds_no_server_setting(plan: LocalPlan, name: str, key: str) -> None:
    assert key not in plan.program(name).environment


@pytest.mark.parametrize("secret", ["redis", "postgres_prefect", "postgres_superuser", "postgres_monitor"])
def test_environment_holds_no_server_secret(plan: LocalPlan, secrets: Secrets, secret: str) -> None:
    values = [value for p in plan.by_component("worker") for value in p.environment.values()]
    assert not [value for value in values if secrets.get(secret) in value]


def test_temporary_files_stay_in_the_state_directory(plan: LocalPlan) -> None:
    """Not the shared /tmp, where Prefect's runner storage belongs to whoever created it first."""
    assert plan.program("worker-etl-1").environment["TMPDIR"] == str(plan.layout.prefect_home / "tmp")


def test_flow_runs_inherit_the_heartbeat(plan: LocalPlan) -> None:
    assert plan.program("worker-etl-1").environment["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(
        plan.config.workers.flow_heartbeat_s)


def test_trusts_the_load_balancers_certificate_when_tls_is_on(state_dir: Path, secrets: Secrets) -> None:
    config = load_config(local={"state_dir": str(state_dir)}, load_balancer={"tls": {"mode": "on"}})
    env = build_plan(config, secrets).program("worker-default-1").environment
    assert env["PREFECT_API_SSL_CERT_FILE"] == str(StateLayout(state_dir).etc / "lb-ca.crt")


def test_no_certificate_setting_when_tls_is_off(plan: LocalPlan) -> None:
    assert "PREFECT_API_SSL_CERT_FILE" not in plan.program("worker-etl-1").environment


@pytest.fixture
def sections(plan: LocalPlan) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(plan.supervisor_conf.content)
    return parser


@pytest.mark.parametrize("name", NAMES)
def test_works_in_the_flow_code_directory(sections: configparser.RawConfigParser, plan: LocalPlan,
                                         name: str) -> None:
    assert sections[f"program:{name}"]["directory"] == str(plan.config.state_dir / "flows")


def test_configured_flow_code_directory(make: Callable[..., StackConfig], secrets: Secrets, tmp_path: Path) -> None:
    config = make(flow_code_dir=str(tmp_path / "code"))
    assert build_plan(config, secrets).program("worker-etl-1").directory == tmp_path / "code" == flow_code_dir(config)


def test_other_programs_work_in_the_state_directory(sections: configparser.RawConfigParser, plan: LocalPlan) -> None:
    assert sections["program:api-1"]["directory"] == str(plan.layout.root)


@pytest.mark.parametrize(("key", "value"), [("stopsignal", "TERM"), ("stopwaitsecs", "30"), ("stopasgroup", "true"),
                                            ("killasgroup", "true"), ("autorestart", "true")])
def test_stop_and_restart(sections: configparser.RawConfigParser, key: str, value: str) -> None:
    assert sections["program:worker-etl-1"][key] == value


def test_runs_as_the_service_user_as_root(sections: configparser.RawConfigParser, plan: LocalPlan) -> None:
    assert sections["program:worker-etl-1"].get("user") == (plan.config.local.run_as if os.geteuid() == 0 else None)


def test_workers_stop_before_the_api_and_the_services() -> None:
    assert priority("worker") > priority("services") > priority("api")


def test_changing_the_directory_restarts_the_worker(make: Callable[..., StackConfig], secrets: Secrets,
                                                   tmp_path: Path) -> None:
    before = build_plan(make(), secrets).program("worker-etl-1")
    after = build_plan(make(flow_code_dir=str(tmp_path / "elsewhere")), secrets).program("worker-etl-1")
    assert before.fingerprint() != after.fingerprint()


def test_a_pool_change_restarts_no_worker(make: Callable[..., StackConfig], secrets: Secrets) -> None:
    before = build_plan(make(), secrets)
    after = build_plan(make(pools=[{"name": "etl", "concurrency_limit": 4}, *WORKERS["pools"][1:]]), secrets)
    assert [p.fingerprint() for p in before.by_component("worker")] == [
        p.fingerprint() for p in after.by_component("worker")]


def test_disabled_workers_run_no_program(state_dir: Path, secrets: Secrets) -> None:
    config = load_config(local={"state_dir": str(state_dir)}, workers={"enabled": False})
    assert build_plan(config, secrets).by_component("worker") == []


# workers.python


def _environment(root: Path, version: str | None) -> Path:
    """A stand-in virtualenv: bin/prefect, and a bin/python that reports ``version`` (None: no bin/prefect)."""
    (root / "bin").mkdir(parents=True)
    if version is not None:
        (root / "bin" / "prefect").write_text("#!/bin/sh\n")
    python = root / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho {version}\n")
    python.chmod(0o755)
    return root


def test_an_environment_without_prefect_is_refused(make: Callable[..., StackConfig], tmp_path: Path) -> None:
    config = make(python=str(_environment(tmp_path / "venv", None)))
    with pytest.raises(UserError, match="has no bin/prefect") as refused:
        check_worker_python(config)
    assert "workers.python" in str(refused.value)


def test_an_environment_with_another_prefect_is_refused(make: Callable[..., StackConfig], tmp_path: Path) -> None:
    config = make(python=str(_environment(tmp_path / "venv", "2.20.0")))
    with pytest.raises(UserError, match=r"has prefect 2\.20\.0, the stack runs"):
        check_worker_python(config)


def test_an_environment_with_the_stacks_prefect_is_accepted(make: Callable[..., StackConfig],
                                                            tmp_path: Path) -> None:
    import prefect

    check_worker_python(make(python=str(_environment(tmp_path / "venv", prefect.__version__))))


def test_the_stacks_own_environment_reports_its_prefect() -> None:
    import prefect

    assert prefect_version(Path(sys.executable)) == prefect.__version__


def test_deploy_refuses_a_bad_environment_before_changing_anything(make: Callable[..., StackConfig],
                                                                   tmp_path: Path) -> None:
    config = make(python=str(_environment(tmp_path / "venv", "2.20.0")))
    with pytest.raises(UserError, match=r"workers\.python"):
        local_deploy.deploy(config)
    assert not config.state_dir.exists()


def test_deploy_refuses_a_bad_job_variable_before_changing_anything(make: Callable[..., StackConfig]) -> None:
    config = make(pools=[{"name": "etl", "job_variables": {"no_such_variable": 1}}, *WORKERS["pools"][1:]])
    with pytest.raises(UserError, match="no_such_variable"):
        local_deploy.deploy(config)
    assert not config.state_dir.exists()
