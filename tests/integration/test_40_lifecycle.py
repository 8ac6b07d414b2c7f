"""invoke deploy as an operator re-runs it: idempotent, surgical on change, refusing bad input. Runs last."""

from __future__ import annotations

import socket
import threading
import uuid

import httpx
import pytest

from infra.secrets import load_secrets
from tests.integration.conftest import Stack

INFRASTRUCTURE = ["postgres", "pgbouncer", "redis", "haproxy"]


def test_second_deploy_with_nothing_changed_restarts_nothing(stack: Stack) -> None:
    before = stack.pids()
    result = stack.invoke("deploy")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing changed" in result.stderr
    assert stack.pids() == before


def test_deploy_output_shows_no_secret(stack: Stack) -> None:
    result = stack.invoke("deploy")
    secrets = load_secrets(stack.layout.secrets)
    output = result.stdout + result.stderr
    assert [n for n in ("postgres_prefect", "redis", "prefect_auth") if secrets.get(n).split(":")[-1] in output] == []


class _Load(threading.Thread):
    """Creates flow runs through the load balancer until stopped; remembers every failure."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack, self.stop, self.ok, self.failures = stack, threading.Event(), 0, []  # type: ignore[var-annotated]

    def run(self) -> None:
        with self.stack.client() as client:
            flow_id = client.post("/flows/", json={"name": "rolling"}).json()["id"]
            while not self.stop.is_set():
                try:
                    r = client.post("/flow_runs/", json={"flow_id": flow_id, "idempotency_key": str(uuid.uuid4())})
                    if r.status_code in (200, 201):
                        self.ok += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> _Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=60)


def test_api_setting_change_rolls_only_the_prefect_processes_without_client_errors(stack: Stack) -> None:
    before = stack.pids()
    # Later tests share this stack: WARNING keeps the lines they read (postgres, workers) and only quiets Prefect.
    stack.env["PREFECT_STACK_LOGS__LEVELS__API"] = "WARNING"
    stack.env["PREFECT_STACK_LOGS__LEVELS__SERVICES"] = "WARNING"
    with _Load(stack) as load:
        result = stack.invoke("deploy")
    assert result.returncode == 0, result.stderr[-3000:]
    after = stack.pids()
    assert {n: after[n] for n in INFRASTRUCTURE} == {n: before[n] for n in INFRASTRUCTURE}
    assert all(after[n] != before[n] for n in before if n.startswith(("api-", "services-")))
    assert load.ok > 0
    assert load.failures == []


def test_rotating_the_redis_password_under_load_fails_no_request_and_keeps_redis(stack: Stack) -> None:
    """Two phases: Redis accepts old and new (ACL SETUSER, no restart) while the clients roll to the new one."""
    before, old = stack.pids(), load_secrets(stack.layout.secrets).get("redis")
    with _Load(stack) as load:
        result = stack.invoke("secrets.rotate", "redis")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gave redis its new passwords" in result.stderr
    new = load_secrets(stack.layout.secrets).get("redis")
    assert new != old and old not in result.stdout + result.stderr and new not in result.stdout + result.stderr
    assert not (stack.layout.secrets / "redis.previous").exists()
    after = stack.pids()
    assert after["redis"] == before["redis"]
    assert all(after[n] != before[n] for n in before if n.startswith(("api-", "services-")))
    assert load.ok > 0
    assert load.failures == []
    assert stack.invoke("deploy").returncode == 0 and stack.pids() == after  # settled: a deploy changes nothing


def test_a_port_taken_by_another_process_stops_the_deploy_before_anything_changes(stack: Stack) -> None:
    before = stack.pids()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        result = _deploy_with(stack, PREFECT_STACK_REDIS__PORT=str(taken))
    assert result.returncode == 1
    assert "redis.port" in result.stderr and str(taken) in result.stderr
    assert "Traceback" not in result.stderr
    assert stack.pids() == before


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("PREFECT_STACK_API__REPLICAS", "abc", "api.replicas"),
        ("PREFECT_STACK_API__REPLICAS", "0", "api.replicas"),
        ("PREFECT_STACK_LOAD_BALANCER__PORT", "70000", "load_balancer.port"),
    ],
)
def test_bad_configuration_is_refused_with_the_field_and_fix(
    stack: Stack, variable: str, value: str, field: str
) -> None:
    result = _deploy_with(stack, **{variable: value})
    assert result.returncode == 1
    assert field in result.stderr
    assert "fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_exits_non_zero_when_a_component_is_down(stack: Stack) -> None:
    from infra.local.supervisor import Supervisor

    Supervisor(stack.layout).stop("services-1")
    result = stack.invoke("status", "--json")
    assert result.returncode == 1
    down = [c["name"] for c in stack.status()["components"] if not c["healthy"]]  # type: ignore[union-attr, index]
    assert down == ["services-1"]
    assert stack.invoke("deploy").returncode == 0  # deploy starts what is not running
    assert stack.invoke("status").returncode == 0


def test_restart_of_a_replica_under_load_fails_no_request(stack: Stack) -> None:
    before = stack.pids()
    with _Load(stack) as load:
        result = stack.invoke("restart", "api-1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert stack.pids()["api-1"] != before["api-1"]
    assert load.ok > 0
    assert load.failures == []


def test_restarting_redis_restarts_the_services_with_it(stack: Stack) -> None:
    before = stack.pids()
    assert stack.invoke("restart", "redis").returncode == 0
    after = stack.pids()
    assert after["redis"] != before["redis"]
    assert after["services-1"] != before["services-1"]
    assert after["postgres"] == before["postgres"]


def test_logs_of_an_unknown_component_names_the_valid_ones(stack: Stack) -> None:
    result = stack.invoke("logs", "nosuch")
    assert result.returncode == 1
    assert "api-1" in result.stderr and "Traceback" not in result.stderr


def test_logs_show_a_component_log(stack: Stack) -> None:
    result = stack.invoke("logs", "postgres", "--lines", "5")
    assert result.returncode == 0
    assert result.stdout.strip()


def test_destroy_refuses_without_yes(stack: Stack) -> None:
    result = stack.invoke("destroy")
    assert result.returncode == 1
    assert "--yes" in result.stderr
    assert stack.layout.postgres_data.exists()


def test_scaling_down_removes_a_replica_and_keeps_serving(stack: Stack) -> None:
    stack.env["PREFECT_STACK_API__REPLICAS"] = "2"
    result = stack.invoke("deploy")
    assert result.returncode == 0, result.stderr[-3000:]
    names = {c["name"] for c in stack.status()["components"]}  # type: ignore[union-attr, index]
    assert "api-3" not in names
    with stack.client() as client:
        assert client.post("/flows/filter", json={}).status_code == 200


def test_stop_then_deploy_brings_the_stack_back_with_its_data(stack: Stack) -> None:
    with stack.client() as client:
        flow_id = client.post("/flows/", json={"name": f"persist-{uuid.uuid4().hex[:6]}"}).json()["id"]
    assert stack.invoke("stop").returncode == 0
    assert stack.invoke("status").returncode == 1
    result = stack.invoke("deploy")
    assert result.returncode == 0, result.stderr[-3000:]
    with stack.client() as client:
        assert client.get(f"/flows/{flow_id}").status_code == 200


def _deploy_with(stack: Stack, **overrides: str):  # type: ignore[no-untyped-def]
    saved = dict(stack.env)
    stack.env.update(overrides)
    try:
        return stack.invoke("deploy")
    finally:
        stack.env.clear()
        stack.env.update(saved)
