"""Work pools as code against a real Prefect server (SQLite, its own port and PREFECT_HOME): templates computed and
refused before any change, provisioning idempotent, drift put back, other pools left alone, automations valid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.server.events.schemas.automations import AutomationCreate

from infra.config import StackConfig
from infra.errors import UserError
from infra.work_pools.automations import RETRY_CRASHED, ZOMBIE, desired_automations
from infra.work_pools.provision import PrefectApi, api_session, from_document, plan_document, provision
from infra.work_pools.templates import desired_pools
from tests.conftest import free_ports

AUTH = "admin:unit-test-password"
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_ports(1)[0]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_AUTH_STRING": AUTH,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"}
    log = (home / "server.log").open("w")
    process = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                "127.0.0.1", "--port", str(port), "--no-services"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, (home / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.fixture
def api(server: str) -> PrefectApi:
    return api_session(server, AUTH, True)


def _config(**workers: Any) -> StackConfig:
    return StackConfig(workers=workers)  # type: ignore[arg-type]


def _apply(api: PrefectApi, config: StackConfig) -> list[str]:
    return provision(api, desired_pools(config), desired_automations(config)).lines()


def test_a_pool_is_created_once_and_a_second_deploy_changes_nothing(api: PrefectApi) -> None:
    config = _config(pools=[{"name": "once", "concurrency_limit": 4,
                             "queues": [{"name": "default"}, {"name": "fast", "priority": 2}]}], workers=[])
    first = _apply(api, config)
    assert "work pool once: created" in first and "work queue once/fast: created" in first
    assert _apply(api, config)[-1].startswith("work pools as in the model, unchanged: once")
    pools = [pool for pool in api.call("POST", "/work_pools/filter", {}) if pool["name"] == "once"]
    assert len(pools) == 1 and pools[0]["concurrency_limit"] == 4
    queues = {q["name"]: q["priority"] for q in api.call("POST", "/work_pools/once/queues/filter", {})}
    assert queues == {"default": 1, "fast": 2}


def test_a_pool_edited_behind_the_models_back_is_put_back_and_others_are_left_alone(api: PrefectApi) -> None:
    config = _config(pools=[{"name": "kept", "job_variables": {"env": {"TEAM": "data"}},
                             "queues": [{"name": "default"}, {"name": "slow", "priority": 5}]}], workers=[])
    _apply(api, config)
    api.call("PATCH", "/work_pools/kept", {"concurrency_limit": 1, "description": "edited in the UI",
                                           "base_job_template": {}})
    api.call("PATCH", "/work_pools/kept/queues/slow", {"priority": 1})
    api.call("POST", "/work_pools/", {"name": "hand-made", "type": "process"})
    lines = _apply(api, config)
    assert ("work pool kept: put back to the model (description, concurrency_limit, base_job_template differed: "
            "changed in the model, or edited outside it)") in lines
    assert "work queue kept/slow: put back (priority)" in lines
    assert any(line.startswith("work pools not in the model, left alone:") and "hand-made" in line for line in lines)
    pool = api.call("GET", "/work_pools/kept")
    assert pool["concurrency_limit"] is None and pool["description"] == ""
    assert pool["base_job_template"]["variables"]["properties"]["env"]["default"] == {"TEAM": "data"}
    assert api.call("GET", "/work_pools/hand-made")["name"] == "hand-made"


def test_a_pool_of_another_type_stops_provisioning_before_any_change(api: PrefectApi) -> None:
    api.call("POST", "/work_pools/", {"name": "typed", "type": "kubernetes"})
    config = _config(pools=[{"name": "typed"}, {"name": "never-created"}], workers=[])
    with pytest.raises(UserError) as refused:
        _apply(api, config)
    assert "exists with type kubernetes, the model says process" in str(refused.value)
    assert api.call("GET", "/work_pools/never-created", missing_ok=True) is None


@pytest.mark.parametrize(
    ("pool", "named"),
    [
        ({"name": "p", "job_variables": {"stream_output": "yes"}},
         "workers.pools[0] (p).job_variables.stream_output = 'yes' is refused"),
        ({"name": "p", "job_variables": {"image": "x"}}, "sets job variable 'image', which a process pool"),
        ({"name": "p", "job_configuration": {"job_manifest": {}}}, "job_configuration.job_manifest is not part"),
    ],
)
def test_a_bad_template_is_refused_naming_the_field(pool: dict[str, Any], named: str) -> None:
    with pytest.raises(UserError) as refused:
        desired_pools(_config(pools=[pool], workers=[]))
    assert named in str(refused.value)


def test_the_automations_are_valid_for_prefect_and_bounded_by_the_run_count(api: PrefectApi) -> None:
    config = _config(flow_heartbeat_s=40, missed_heartbeats=3, crashed_run_retries=2)
    automations = {a["name"]: AutomationCreate.model_validate(a) for a in desired_automations(config)}
    assert automations[ZOMBIE].trigger.within.total_seconds() == 120  # type: ignore[union-attr]
    retry = automations[RETRY_CRASHED].trigger
    assert retry.match.root["prefect.run-count"] == ["1", "2"]  # type: ignore[union-attr]
    lines = _apply(api, config)  # created, or put back from an earlier test's defaults: the window changed
    assert {line for line in lines if line.startswith("automation ")} <= {
        f"automation {name!r}: {verb}" for name in (ZOMBIE, RETRY_CRASHED) for verb in ("created", "put back")}
    assert any(line.startswith(f"automation {ZOMBIE!r}") for line in lines)
    assert not any("automation" in line for line in _apply(api, config))  # as in the model: untouched
    lines = _apply(api, _config(flow_heartbeat_s=40, missed_heartbeats=3, crashed_run_retries=0))
    assert f"automation {RETRY_CRASHED!r}: removed" in lines
    names = [a["name"] for a in api.call("POST", "/automations/filter", {})]
    assert names.count(ZOMBIE) == 1 and RETRY_CRASHED not in names


def test_the_plan_survives_its_json_round_trip() -> None:
    config = _config(pools=[{"name": "a", "queues": [{"name": "default"}, {"name": "b", "concurrency_limit": 2}]}],
                     workers=[])
    pools, automations = desired_pools(config), desired_automations(config)
    assert from_document(plan_document(pools, automations)) == (pools, automations)
