"""Workers and work pools on the real stack: a flow deployed from the flow code directory runs through the provisioned
worker; a run whose worker and process are killed turns Crashed and runs again; a redeploy updates the model's pool
in place, puts back what was edited behind its back and leaves other pools alone."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.api_client import load_balancer_environment
from infra.local.workers import flow_code_dir
from tests.integration.conftest import Stack

WORKER = "worker-default-1"
# A run's way through a worker: pickup within the 2 s poll, a Python process started, the flow imported.
RUN_TIMEOUT_S = 180
# Killed run: the zombie automation waits 2 heartbeats of 30 s after the last one, the triggers service evaluates
# proactive triggers every few seconds, then the retry is picked up and runs: bounded well above the 60 s.
CRASH_RETRY_TIMEOUT_S = 300

FLOW = """
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger


@flow(name="workers-test")
def work(marker: str = "") -> str:
    get_run_logger().info("flow code ran in %s as uid %s", os.getcwd(), os.getuid())
    # Waits while the test's marker exists (bounded, so that nothing outlives a failed test for long).
    deadline = time.monotonic() + 600
    while marker and Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(1)
    return "done"
"""

DEPLOY = """
import sys

from prefect import flow

source, entrypoint, name = sys.argv[1:4]
deployment_id = flow.from_source(source=source, entrypoint=entrypoint).deploy(
    name=name, work_pool_name="default", print_next_steps=False)
print(f"DEPLOYMENT_ID={deployment_id}")
"""


@pytest.fixture(scope="module")
def deployment(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test flow, written into the flow code directory and deployed to the provisioned pool; its id."""
    code_dir = flow_code_dir(stack.config)
    module = f"workers_test_{uuid.uuid4().hex[:8]}.py"
    (code_dir / module).write_text(FLOW)
    (code_dir / module).chmod(0o644)
    env = {**os.environ, **load_balancer_environment(stack.current_config()),
           "PREFECT_HOME": str(tmp_path_factory.mktemp("client-home")), "PREFECT_LOGGING_LEVEL": "WARNING"}
    result = subprocess.run([sys.executable, "-c", DEPLOY, str(code_dir), f"{module}:work", "workers-test"],
                            env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    yield result.stdout.rsplit("DEPLOYMENT_ID=", 1)[1].strip()
    (code_dir / module).unlink(missing_ok=True)


def _create_run(stack: Stack, deployment: str, **parameters: str) -> tuple[str, str]:
    """A run of the deployment, tagged uniquely: (run id, tag)."""
    tag = f"workers-test-{uuid.uuid4().hex[:8]}"
    with stack.client() as client:
        created = client.post(f"/deployments/{deployment}/create_flow_run",
                              json={"parameters": parameters, "tags": [tag]})
    assert created.status_code in (200, 201), created.text
    return created.json()["id"], tag


def _run(stack: Stack, run_id: str) -> dict[str, Any]:
    with stack.client() as client:
        response = client.get(f"/flow_runs/{run_id}")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def _wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy, for at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(interval_s)


def _wait_completed(stack: Stack, run_id: str, timeout_s: float) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        run = _run(stack, run_id)
        # CRASHED is not final here: the crashed-run automation schedules it again.
        assert run["state_type"] not in ("FAILED", "CANCELLED"), run["state"]
        return run if run["state_type"] == "COMPLETED" else None

    run: dict[str, Any] = _wait_for(f"flow run {run_id} COMPLETED", final, timeout_s)
    return run


def _states(stack: Stack, run_id: str) -> list[tuple[str, str]]:
    with stack.client() as client:
        states = client.get("/flow_run_states/", params={"flow_run_id": run_id}).json()
    ordered = sorted(states, key=lambda state: state["timestamp"])
    return [(state["type"], state["name"]) for state in ordered]


def test_status_shows_the_worker_healthy_with_its_prefect_version(stack: Stack) -> None:
    import prefect

    worker = next(c for c in stack.status()["components"] if c["name"] == WORKER)  # type: ignore[union-attr, index]
    assert (worker["healthy"], worker["version"], worker["port"]) == (True, prefect.__version__,
                                                                       stack.config.worker_health_port(1))


@pytest.fixture(scope="module")
def completed_run(stack: Stack, deployment: str) -> dict[str, Any]:
    """A run of the deployment, through the provisioned worker to COMPLETED."""
    run_id, _ = _create_run(stack, deployment)
    return _wait_completed(stack, run_id, RUN_TIMEOUT_S)


def _service_uid(stack: Stack) -> int:
    """Who flows run as: the service user as root, else whoever deployed."""
    return pwd.getpwnam(stack.config.local.run_as).pw_uid if os.geteuid() == 0 else os.geteuid()


def test_a_flow_from_the_flow_code_directory_runs_through_the_provisioned_worker(
        stack: Stack, completed_run: dict[str, Any]) -> None:
    assert completed_run["work_pool_name"] == "default"

    def flow_logs() -> list[str]:
        with stack.client() as client:
            logs = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [completed_run["id"]]}},
                                                     "limit": 200})
        return [log["message"] for log in logs.json() if "flow code ran in" in log["message"]]

    # The flow process sends its logs in batches (the last at exit) and the server persists them a moment later.
    messages = _wait_for("the flow's log line in the API", flow_logs, 60)
    assert f"as uid {_service_uid(stack)}" in messages[0]


def test_the_worker_log_shows_the_run(stack: Stack, completed_run: dict[str, Any]) -> None:
    result = stack.invoke("logs", WORKER, "--lines", "1000")
    assert result.returncode == 0, result.stderr
    assert f"submitting flow run '{completed_run['id']}'" in result.stdout, result.stdout[-3000:]


def _flow_processes(run_id: str) -> list[int]:
    """Processes started for the flow run: the engine's environment names it (PREFECT__FLOW_RUN_ID)."""
    wanted = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def _kill_group(pid: int) -> None:
    """SIGKILL the process group of ``pid`` (never the test's own)."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    assert group != os.getpgid(0)
    os.killpg(group, signal.SIGKILL)


def _heartbeat_seen(stack: Stack, run_id: str) -> bool:
    with stack.client() as client:
        page = client.post("/events/filter", json={"filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 1})
    return page.status_code == 200 and bool(page.json()["events"])


def test_a_run_whose_worker_and_process_are_killed_turns_crashed_and_runs_again_once(
        stack: Stack, deployment: str) -> None:
    marker = flow_code_dir(stack.config) / f"hold-{uuid.uuid4().hex[:8]}"
    marker.write_text("the flow waits while this file exists\n")
    marker.chmod(0o644)
    try:
        run_id, tag = _create_run(stack, deployment, marker=str(marker))
        _wait_for("the run RUNNING", lambda: _run(stack, run_id)["state_type"] == "RUNNING", RUN_TIMEOUT_S)
        # The zombie automation watches runs that have sent a heartbeat: the first goes out when the flow starts.
        _wait_for("the run's first heartbeat", lambda: _heartbeat_seen(stack, run_id), 60)
        flows = _wait_for("the flow's process", lambda: _flow_processes(run_id), 30)
        _kill_group(stack.pids()[WORKER])
        for pid in flows:  # Prefect starts a flow in its own session: the worker's group does not reach it
            _kill_group(pid)
        # SIGKILL is delivered asynchronously: the processes are gone a moment later.
        _wait_for("the flow's processes gone", lambda: not _flow_processes(run_id), 10, interval_s=0.2)
    finally:
        marker.unlink(missing_ok=True)  # the second attempt runs straight through
    run = _wait_completed(stack, run_id, CRASH_RETRY_TIMEOUT_S)
    states = [kind for kind, _ in _states(stack, run_id)]
    assert "CRASHED" in states and states.index("CRASHED") < len(states) - 1, states
    assert ("SCHEDULED", "AwaitingRetry") in _states(stack, run_id)
    assert run["run_count"] == 2
    with stack.client() as client:
        runs = client.post("/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [tag]}}}).json()
    assert [r["id"] for r in runs] == [run_id]


def _pool(stack: Stack, name: str) -> dict[str, Any] | None:
    with stack.client() as client:
        response = client.get(f"/work_pools/{name}")
    return response.json() if response.status_code == 200 else None


@pytest.fixture
def unmanaged_pool(stack: Stack) -> Iterator[str]:
    name = f"hand-made-{uuid.uuid4().hex[:6]}"
    with stack.client() as client:
        assert client.post("/work_pools/", json={"name": name, "type": "process",
                                                 "description": "made in the UI"}).status_code == 201
    yield name
    with stack.client() as client:
        client.delete(f"/work_pools/{name}")


def test_a_redeploy_updates_the_pool_in_place_puts_back_drift_and_leaves_other_pools(
        stack: Stack, unmanaged_pool: str) -> None:
    before, pids = _pool(stack, "default"), stack.pids()
    assert before is not None
    with stack.client() as client:  # edited behind the model's back, as in the UI
        assert client.patch("/work_pools/default", json={"description": "edited in the UI"}).status_code == 204
    # The model changes too: a pool limit and a new queue.
    stack.env["PREFECT_STACK_WORKERS__POOLS"] = json.dumps([{
        "name": "default", "concurrency_limit": 7,
        "queues": [{"name": "default"}, {"name": "urgent", "priority": 2}]}])
    result = stack.invoke("deploy")
    assert result.returncode == 0, result.stderr[-3000:]
    after = _pool(stack, "default")
    assert after is not None
    assert after["id"] == before["id"]
    assert (after["concurrency_limit"], after["description"]) == (7, "")
    with stack.client() as client:
        pools = client.post("/work_pools/filter", json={}).json()
        queues = client.post("/work_pools/default/queues/filter", json={}).json()
    assert [pool["name"] for pool in pools].count("default") == 1
    assert {queue["name"]: queue["priority"] for queue in queues} == {"default": 1, "urgent": 2}
    output = " ".join(result.stderr.split())  # the console wraps long notes
    assert "work pool default: put back to the model (description, concurrency_limit" in output
    assert f"work pools not in the model, left alone: {unmanaged_pool}" in output
    assert _pool(stack, unmanaged_pool)["description"] == "made in the UI"  # type: ignore[index]
    assert stack.pids()[WORKER] == pids[WORKER]  # a pool change restarts no worker
