"""The compose target's workers on the shared stack: a flow deployed from the flow-code directory runs in the worker
container with its logs in the API; a worker container killed mid-run leaves a run that the provisioned automations
mark Crashed and schedule again, and it completes, once, when the operator brings the worker back; a redeploy puts
back a pool edited behind the model's back, applies the model's change to it, and recreates only the worker."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.compose.deploy import containers
from infra.compose.project import flow_code_dir
from tests.compose.conftest import ComposeStack

pytestmark = pytest.mark.compose

WORKER = "worker-default-1"
POOL = "default"
RUN_TIMEOUT_S = 120
# The zombie automation needs flow_heartbeat_s x missed_heartbeats (60 s here) of silence after the last beat.
CRASH_TIMEOUT_S = 150


def _poll(what: str, probe: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float) -> Any:
    """``probe()`` until ``done`` says so, bounded; the failure shows the last value seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout_s:.0f} s; last seen: {value}")
        time.sleep(1)


def _write_flow(stack: ComposeStack, name: str, body: str) -> Path:
    """A flow file in the flow-code directory the workers mount (the default: <state_dir>/flows)."""
    path = flow_code_dir(stack.config) / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    path.chmod(0o644)  # the workers' user reads it
    return path


def _deploy(stack: ComposeStack, path: Path, function: str, tmp_path: Path) -> str:
    """Deploy the flow from its directory to the provisioned pool, from the host as a platform engineer does
    (the credentials `invoke env` prints); returns the deployment's id."""
    exports = stack.invoke("env")
    assert exports.returncode == 0, exports.stderr
    code = textwrap.dedent(f"""
        from prefect import flow
        deployment = flow.from_source(source={str(path.parent)!r}, entrypoint={f'{path.name}:{function}'!r})
        print(deployment.deploy(name={path.stem!r}, work_pool_name={POOL!r}, print_next_steps=False))
    """)
    script = tmp_path / f"deploy_{path.stem}.py"
    script.write_text(code)
    shell = f"{exports.stdout}\nexport PREFECT_HOME={tmp_path}\nexec {sys.executable} {script}"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def _start_run(stack: ComposeStack, deployment_id: str) -> str:
    with stack.client() as client:
        response = client.post(f"/deployments/{deployment_id}/create_flow_run", json={})
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def _run(stack: ComposeStack, run_id: str) -> dict[str, Any]:
    with stack.client() as client:
        return dict(client.get(f"/flow_runs/{run_id}").json())


def _states(stack: ComposeStack, run_id: str) -> list[str]:
    with stack.client() as client:
        return [s["type"] for s in client.get("/flow_run_states/", params={"flow_run_id": run_id}).json()]


def _worker_health(stack: ComposeStack) -> bool:
    status = json.loads(stack.invoke("status", "--json").stdout)
    return bool({c["name"]: c["healthy"] for c in status["components"]}[WORKER])


def test_a_flow_from_the_flow_code_directory_runs_in_the_worker_container(compose_stack: ComposeStack,
                                                                          tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    path = _write_flow(compose_stack, f"hello_{marker}", f"""
        import socket
        from prefect import flow, get_run_logger

        @flow
        def hello() -> None:
            get_run_logger().info("hello {marker} from %s", socket.gethostname())
    """)
    run_id = _start_run(compose_stack, _deploy(compose_stack, path, "hello", tmp_path))
    run = _poll("COMPLETED", lambda: _run(compose_stack, run_id), lambda r: r["state_type"] in (
        "COMPLETED", "FAILED", "CRASHED"), RUN_TIMEOUT_S)
    assert run["state_type"] == "COMPLETED", run["state"]
    worker = containers(compose_stack.docker, compose_stack.config.compose.project)[WORKER]

    def messages() -> list[str]:  # logs are shipped in batches and stored asynchronously: bounded wait
        with compose_stack.client() as client:
            logs = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}).json()
        return [entry["message"] for entry in logs]

    # Its logs are in the API (the UI shows them), written in the worker's container.
    line = f"hello {marker} from {worker.attrs['Config']['Hostname']}"
    _poll("the flow's log line in the API", messages, lambda found: line in found, 30)
    worker_log = compose_stack.invoke("logs", WORKER, "--lines", "200")
    assert worker_log.returncode == 0, worker_log.stderr
    assert run_id in worker_log.stdout  # "submitting flow run <id>"
    assert _worker_health(compose_stack)


def test_a_run_of_a_killed_worker_is_crashed_then_run_again_once_the_worker_is_back(compose_stack: ComposeStack,
                                                                                    tmp_path: Path) -> None:
    """`docker kill` of the worker's container (its flow runs die with it) is a manual stop to Docker: the
    run turns Crashed (zombie automation), is scheduled again (crash-retry automation), waits for a worker, and
    completes once the operator restarts it. The flow waits only while its hold file exists: its second attempt
    runs straight through."""
    name = f"hold_{uuid.uuid4().hex[:8]}"
    hold = flow_code_dir(compose_stack.config) / f"{name}.hold"
    path = _write_flow(compose_stack, name, f"""
        import time
        from pathlib import Path
        from prefect import flow

        @flow
        def hold() -> None:
            deadline = time.monotonic() + 600
            while (Path(__file__).parent / {hold.name!r}).exists() and time.monotonic() < deadline:
                time.sleep(1)
    """)
    hold.touch()
    try:
        _kill_the_worker_mid_run(compose_stack, path, hold, tmp_path)
    finally:
        hold.unlink(missing_ok=True)


def _kill_the_worker_mid_run(compose_stack: ComposeStack, path: Path, hold: Path, tmp_path: Path) -> None:
    deployment_id = _deploy(compose_stack, path, "hold", tmp_path)
    run_id = _start_run(compose_stack, deployment_id)
    _poll("RUNNING", lambda: _run(compose_stack, run_id)["state_type"], lambda s: s == "RUNNING", RUN_TIMEOUT_S)

    def beats() -> int:  # the zombie automation starts watching a run at its first heartbeat
        with compose_stack.client() as client:
            found = client.post("/events/filter", json={"filter": {
                "event": {"name": ["prefect.flow-run.heartbeat"]},
                "resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 5}).json()
        return len(found["events"])

    _poll("a heartbeat of the run", beats, lambda n: n > 0, 60)
    containers(compose_stack.docker, compose_stack.config.compose.project)[WORKER].kill()
    hold.unlink()
    _poll("the dead worker in status", lambda: _worker_health(compose_stack), lambda healthy: not healthy, 30)
    _poll("Crashed, then scheduled again", lambda: _states(compose_stack, run_id),
          lambda states: "CRASHED" in states and states[-1] == "SCHEDULED", CRASH_TIMEOUT_S)
    restarted = compose_stack.invoke("restart", WORKER)
    assert restarted.returncode == 0, restarted.stdout[-2000:] + restarted.stderr[-2000:]
    run = _poll("COMPLETED", lambda: _run(compose_stack, run_id), lambda r: r["state_type"] in (
        "COMPLETED", "FAILED", "CRASHED"), RUN_TIMEOUT_S)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["run_count"] == 2
    with compose_stack.client() as client:
        runs = client.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}}).json()
    assert [r["id"] for r in runs] == [run_id]  # the same run again: no duplicate


def test_a_redeploy_puts_back_an_edited_pool_and_recreates_only_the_worker(compose_stack: ComposeStack) -> None:
    """The pool edited in the UI is put back; the model's change to the pool is applied to the same pool; a changed
    worker setting recreates the worker alone (provisioning's cases are unit-tested with the local target's)."""
    with compose_stack.client() as client:
        edited = client.patch(f"/work_pools/{POOL}", json={"description": "edited in the UI"})
        assert edited.status_code == 204, edited.text
    before = compose_stack.containers()
    changed = {"PREFECT_STACK_WORKERS__POOLS": json.dumps([{"name": POOL, "concurrency_limit": 7}]),
               "PREFECT_STACK_WORKERS__QUERY_INTERVAL_S": "3"}
    result = compose_stack.invoke("deploy", changed=changed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"work pool {POOL}: put back" in result.stdout + result.stderr
    after = compose_stack.containers()
    assert sorted(name for name in before if after.get(name) != before[name]) == [WORKER]
    with compose_stack.client() as client:
        pools = client.post("/work_pools/filter", json={"work_pools": {"name": {"any_": [POOL]}}}).json()
    assert [(p["name"], p["description"] or "", p["concurrency_limit"]) for p in pools] == [(POOL, "", 7)]
