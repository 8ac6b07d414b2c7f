"""A deploy that must take the API away does it inside a planned maintenance window: HAProxy answers every request
503 with ``Prefect-Maintenance: true`` and ``Retry-After``, which Prefect's own client waits out without limit, so
clients under load see no error while PostgreSQL restarts and the schema migrates.

The situation is made real: the database is downgraded one revision with Prefect's own command and the recorded
revision cleared (deploy migrates only when Prefect's version or the recorded revision changed), and a PostgreSQL
setting changes (deploy restarts PostgreSQL for it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from infra.api_client import load_balancer_verify
from infra.console import wait_until
from infra.database.admin import admin_connect
from infra.faults.load import PrefectClientLoad
from infra.local.deploy import load_deployed
from infra.local.plan import build_plan
from infra.secrets import load_secrets
from tests.integration.conftest import Stack

CLIENTS = 8
WARMUP = 40


def _alembic_revision(stack: Stack) -> str:
    config = stack.current_config()
    with admin_connect(config, stack.layout, config.postgres.database) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row is not None
    return str(row[0])


def test_a_deploy_that_restarts_postgres_and_migrates_makes_clients_wait_not_fail(stack: Stack) -> None:
    head = load_deployed(stack.layout)["versions"]["alembic_revision"]
    env = build_plan(stack.current_config(), load_secrets(stack.layout.secrets)).migration_env
    downgrade = subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "downgrade", "-y", "--revision", "-1"],
        env={**env, "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=300)
    assert downgrade.returncode == 0, downgrade.stdout[-2000:] + downgrade.stderr[-2000:]
    assert _alembic_revision(stack) != head
    state = load_deployed(stack.layout)
    del state["versions"]["alembic_revision"]
    stack.layout.deployed_state.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    stack.env["PREFECT_STACK_POSTGRES__SHARED_BUFFERS"] = "192MB"  # a setting PostgreSQL restarts for

    load = PrefectClientLoad(stack.url, stack.auth, load_balancer_verify(stack.config), CLIENTS)
    load.start()
    try:
        wait_until(lambda: load.record.operations >= WARMUP, 120, "the clients' first requests", fix="invoke status")
        result = stack.invoke("deploy")
    finally:
        record = load.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "maintenance window open (PostgreSQL restarts and the schema migrates)" in result.stderr
    assert "maintenance window closed after" in result.stderr
    assert "postgres" in result.stderr and "migrating the database schema" in result.stderr
    assert record.errors == []
    assert record.maintenance_answers > 0  # the clients did meet the window, and waited it out
    with stack.client() as client:
        verification = load.verify(client)
    assert (verification.runs_lost, verification.runs_doubled, verification.states_lost,
            verification.states_doubled) == (0, 0, 0, 0)
    assert _alembic_revision(stack) == head
    assert load_deployed(stack.layout)["versions"]["alembic_revision"] == head
