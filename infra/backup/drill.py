"""The disaster drill on a running stack, with proof and the two numbers that matter; the same on every target.

Write known data through the API, back up, verify, destroy the database, restore, prove every written row
is back, and report the recovery time (destruction to a healthy API) and the data-loss window (what a real
disaster at that moment would have lost: everything written after the backup's snapshot). What differs per target
(where the backup job runs, how the database is destroyed and restored) is a ``DrillTarget``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from infra.api_client import load_balancer_client
from infra.backup.restore import RestoreReport
from infra.config import StackConfig
from infra.errors import UserError
from infra.progress import Progress
from infra.secrets import Secrets

RUNS = 20


@dataclass
class DrillReport:
    backup_id: str
    verified: bool
    flow_runs_written: int
    flow_runs_recovered: int
    logs_written: int
    logs_recovered: int
    identical: bool
    recovery_time_s: float
    data_loss_window_s: float
    row_counts_match: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _client(config: StackConfig, secrets: Secrets) -> httpx.Client:
    user, _, password = secrets.get("prefect_auth").partition(":")
    return load_balancer_client(config, auth=(user, password), timeout=30)


def _write_known_data(client: httpx.Client, label: str) -> dict[str, str]:
    flow_id = client.post("/flows/", json={"name": label}).raise_for_status().json()["id"]
    runs = {}
    for i in range(RUNS):
        run = client.post("/flow_runs/", json={"flow_id": flow_id, "name": f"{label}-{i}", "tags": ["drill"]})
        runs[run.raise_for_status().json()["id"]] = f"{label}-{i}"
    now = datetime.now(UTC).isoformat()
    logs = [{"name": "drill", "level": 20, "message": f"drill log for {name}", "timestamp": now, "flow_run_id": run_id}
            for run_id, name in runs.items()]
    client.post("/logs/", json=logs).raise_for_status()
    return runs


def _read_back(client: httpx.Client, runs: dict[str, str]) -> tuple[int, int]:
    found = sum(1 for run_id, name in runs.items()
                if (r := client.get(f"/flow_runs/{run_id}")).status_code == 200 and r.json()["name"] == name)
    logs = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": list(runs)}}, "limit": 200})
    return found, len(logs.raise_for_status().json())


@dataclass(frozen=True)
class DrillBackup:
    """The drill's backup, taken and verified."""

    id: str
    started_at: datetime
    row_counts: dict[str, int]
    verified: bool
    detail: str


class DrillTarget(Protocol):
    """What the drill does to a target: back up and verify, destroy the database, restore."""

    def backup_and_verify(self, progress: Progress) -> DrillBackup: ...

    def destroy_database(self, progress: Progress) -> None: ...

    def restore(self, backup_id: str, progress: Progress) -> RestoreReport: ...


def run_drill(config: StackConfig, secrets: Secrets, progress: Progress, target: DrillTarget) -> DrillReport:
    label = f"drill-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:4]}"
    with _client(config, secrets) as client:
        progress(f"writing {RUNS} flow runs and their logs through the API ({label})")
        runs = _write_known_data(client, label)
        written = _read_back(client, runs)
    manifest = target.backup_and_verify(progress)
    if not manifest.verified:
        raise UserError(f"the drill's backup {manifest.id} failed verification: {manifest.detail}",
                        fix="the database was NOT destroyed; investigate the backup pipeline first")
    # The disaster: the Prefect processes lose their database.
    destroyed_at = time.monotonic()
    destroyed_wall = datetime.now(UTC)
    target.destroy_database(progress)
    progress(f"database {config.postgres.database} destroyed")
    report = target.restore(manifest.id, progress)
    recovery = time.monotonic() - destroyed_at
    with _client(config, secrets) as client:
        recovered = _read_back(client, runs)
    counts_ok = all(report.row_counts.get(t, 0) >= n for t, n in manifest.row_counts.items())
    return DrillReport(
        backup_id=manifest.id, verified=manifest.verified,
        flow_runs_written=written[0], flow_runs_recovered=recovered[0],
        logs_written=written[1], logs_recovered=recovered[1],
        identical=recovered == written and written == (RUNS, RUNS),
        recovery_time_s=round(recovery, 2),
        data_loss_window_s=round((destroyed_wall - manifest.started_at).total_seconds(), 2),
        row_counts_match=counts_ok,
    )
