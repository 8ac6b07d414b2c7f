"""The exporter's flow-run and work-pool queries (infra/exporter/flow_runs.py) against Prefect 3.8's own schema:
online workers, backlog, pickup delays and run outcomes per work pool, read from a scene of known runs.

The schema is Prefect's ORM metadata created on a throwaway PostgreSQL 15 (tests/throwaway_postgres.py) without
its trigram indexes (they need pg_trgm's operator classes, which only Prefect's migrations name, and no query here
uses them). Every test sets the scene afresh, with times relative to now and margins of a minute or more, so a slow
machine cannot move a run across a boundary.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prefect.server.database import orm_models
from prefect.server.schemas.states import StateDetails, StateType

from infra.exporter.flow_runs import collect_flow_runs, collect_work_pools
from infra.render.postgres import MONITOR_ROLE
from tests.throwaway_postgres import SUPERUSER, Server, throwaway_postgres

DATABASE = "prefect"
WINDOW_S = 3600
Samples = dict[tuple[str, ...], float]


def _prefect_schema() -> sa.MetaData:
    """Prefect's tables as its ORM declares them, less the trigram (GIN) indexes."""
    metadata = sa.MetaData()
    for table in orm_models.Base.metadata.sorted_tables:
        copy = table.to_metadata(metadata)
        for index in list(copy.indexes):
            if index.dialect_options["postgresql"].get("using") == "gin":
                copy.indexes.discard(index)
    return metadata


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with throwaway_postgres("pg-exporter-") as running:
        with running.connect(SUPERUSER) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
            # The exporter's role as deploy grants it: read-only on Prefect's tables.
            conn.execute(f"CREATE ROLE {MONITOR_ROLE} LOGIN IN ROLE pg_monitor")
        server = dataclasses.replace(running, database=DATABASE)
        engine = sa.create_engine(server.url(SUPERUSER))
        _prefect_schema().create_all(engine)
        engine.dispose()
        with server.connect(SUPERUSER) as conn:
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {MONITOR_ROLE}")
        yield server


class Scene:
    """Inserts Prefect's rows through its own table definitions (their Python-side defaults included)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.now = datetime.now(UTC)
        self.flow = self._insert("flow", name="etl-flow")

    def ago(self, seconds: float) -> datetime:
        return self.now - timedelta(seconds=seconds)

    def _insert(self, table: str, **values: Any) -> uuid.UUID:
        identifier = uuid.uuid4()
        self.conn.execute(orm_models.Base.metadata.tables[table].insert().values(id=identifier, **values))
        return identifier

    def pool(self, name: str, queues: tuple[str, ...] = ("default",)) -> dict[str, uuid.UUID]:
        pool = self._insert("work_pool", name=name, type="process")
        return {queue: self._insert("work_queue", name=queue, work_pool_id=pool, priority=i + 1)
                for i, queue in enumerate(queues)} | {"": pool}

    def worker(self, pool: uuid.UUID, name: str, beat_s_ago: float, interval_s: int | None,
               status: str = "ONLINE") -> None:
        self._insert("worker", work_pool_id=pool, name=name, last_heartbeat_time=self.ago(beat_s_ago),
                     heartbeat_interval_seconds=interval_s, status=status)

    def run(self, queue: uuid.UUID | None, states: list[tuple[StateType, float, float | None]],
            name: str | None = None) -> None:
        """A flow run and its states, oldest first: (type, seconds ago, for a SCHEDULED state its scheduled start
        in seconds ago). ``name`` names the last state (Late, AwaitingRetry). The run's columns are what Prefect's
        orchestration sets: the first schedule is the expected start, the current one the next scheduled start."""
        run = self._insert("flow_run", flow_id=self.flow, work_queue_id=queue)
        for i, (kind, at, scheduled_ago) in enumerate(states):
            details = StateDetails(scheduled_time=None if scheduled_ago is None else self.ago(scheduled_ago))
            last = i == len(states) - 1
            self._insert("flow_run_state", flow_run_id=run, type=kind, timestamp=self.ago(at),
                         name=(name if last and name else kind.value.title()), state_details=details)
        schedules = [ago for kind, _, ago in states if kind == StateType.SCHEDULED and ago is not None]
        last_type, last_at, last_schedule = states[-1]
        finished = last_type in (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
        flow_run = orm_models.Base.metadata.tables["flow_run"]
        self.conn.execute(flow_run.update().where(flow_run.c.id == run).values(
            state_type=last_type, state_name=name or last_type.value.title(),
            expected_start_time=self.ago(schedules[0] if schedules else states[0][1]),
            next_scheduled_start_time=None if last_schedule is None else self.ago(last_schedule),
            end_time=self.ago(last_at) if finished else None))

S, P, R = StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING


def _set_scene(scene: Scene) -> None:
    etl = scene.pool("etl", ("default", "high"))
    gpu = scene.pool("gpu")
    scene.pool("idle")
    # Workers: online within 3 heartbeat intervals (30 s when a worker does not say), whatever the status column
    # (Prefect's foreman updates it, and only while the background services run).
    scene.worker(etl[""], "fresh", beat_s_ago=5, interval_s=30)
    scene.worker(etl[""], "slow-beat", beat_s_ago=60, interval_s=120)  # 3 x 120 s: still online
    scene.worker(etl[""], "no-interval", beat_s_ago=20, interval_s=None)
    scene.worker(etl[""], "silent", beat_s_ago=600, interval_s=30)  # status still ONLINE: the foreman is behind
    scene.worker(gpu[""], "gone", beat_s_ago=7200, interval_s=30, status="OFFLINE")

    # Backlog of etl/default: a late run and a run due a minute ago; not yet due: one scheduled in an hour and
    # one awaiting a retry in ten minutes (its first expected start long past).
    scene.run(etl["default"], [(S, 1800, 1200)], name="Late")
    scene.run(etl["default"], [(S, 600, 60)])
    scene.run(etl["default"], [(S, 60, -3600)])
    scene.run(etl["default"], [(S, 3000, 2400), (P, 2390, None), (R, 2380, None), (S, 300, -600)],
              name="AwaitingRetry")
    scene.run(gpu["default"], [(S, 600, 300)])

    # Claims in the window, from etl: 5 s, 65 s, and 0 (claimed 10 s early: prefetched).
    scene.run(etl["high"], [(S, 1500, 1200), (P, 1195, None), (R, 1190, None)])
    scene.run(etl["default"], [(S, 900, 600), (P, 535, None), (R, 530, None), (StateType.COMPLETED, 300, None)])
    scene.run(etl["default"], [(S, 900, 290), (P, 300, None), (R, 295, None)])
    # Scheduled again after a crash three hours ago: 60 s from its new schedule, not three hours from its first.
    scene.run(etl["default"], [(S, 10900, 10800), (P, 10790, None), (StateType.CRASHED, 10700, None),
                               (S, 10690, 180), (P, 120, None), (R, 115, None)])
    # From gpu, one claim 600 s late, then the run crashed.
    scene.run(gpu["default"], [(S, 2400, 2400), (P, 1800, None), (StateType.CRASHED, 1500, None)])
    # Outside the window: claimed and finished two hours ago.
    scene.run(etl["default"], [(S, 7300, 7300), (P, 7290, None), (StateType.COMPLETED, 7000, None)])
    # No pool: a flow called in a script, failed ten minutes ago.
    scene.run(None, [(R, 700, None), (StateType.FAILED, 600, None)])


@pytest.fixture
def metrics(server: Server) -> dict[str, Samples]:
    """The families the exporter serves for the scene, read as its role: name -> {labels: value}."""
    engine = sa.create_engine(server.url(SUPERUSER))
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE flow_run_state, flow_run, worker, work_queue, work_pool, flow CASCADE"))
        _set_scene(Scene(conn))
    engine.dispose()
    with server.connect(MONITOR_ROLE) as conn:
        families = [*collect_flow_runs(conn, WINDOW_S), *collect_work_pools(conn, WINDOW_S)]
    return {family.name: {tuple(sample.labels.values()): sample.value for sample in family.samples}
            for family in families}


def test_online_workers_are_those_within_three_heartbeat_intervals(metrics: dict[str, Samples]) -> None:
    assert metrics["prefect_work_pool_online_workers"] == {("etl",): 3, ("gpu",): 0, ("idle",): 0}


def test_backlog_counts_the_runs_due_in_each_queue(metrics: dict[str, Samples]) -> None:
    assert metrics["prefect_work_queue_backlog"] == {("etl", "default"): 2, ("etl", "high"): 0,
                                                     ("gpu", "default"): 1, ("idle", "default"): 0}


def test_pickups_are_the_claims_within_the_window(metrics: dict[str, Samples]) -> None:
    assert metrics["prefect_work_pool_pickups_recent"] == {("etl",): 4, ("gpu",): 1, ("idle",): 0}


def test_pickup_delay_quantiles_per_pool(metrics: dict[str, Samples]) -> None:
    """etl's delays are 0, 5, 60 and 65 s (percentile_cont interpolates); gpu's one delay is 600 s; idle, which
    claimed nothing, has no quantile."""
    delays = {labels: round(value, 2) for labels, value in metrics["prefect_work_pool_pickup_delay_seconds"].items()}
    assert delays == {("etl", "0.5"): 32.5, ("etl", "0.9"): 63.5, ("etl", "0.99"): 64.85,
                      ("gpu", "0.5"): 600, ("gpu", "0.9"): 600, ("gpu", "0.99"): 600}


def test_run_outcomes_per_pool_within_the_window(metrics: dict[str, Samples]) -> None:
    outcomes = {(state, pool): value
                for (state, _deployment, pool), value in metrics["prefect_flow_runs_finished_recent"].items()}
    assert outcomes == {("COMPLETED", "etl"): 1, ("CRASHED", "gpu"): 1, ("FAILED", ""): 1}


def test_late_runs(metrics: dict[str, Samples]) -> None:
    assert metrics["prefect_late_flow_runs"] == {(): 1}
