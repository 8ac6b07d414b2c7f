"""Flow runs, task runs, work pools and work queues, read from Prefect's database by a read-only role.

Bounded cost whatever the history's size: live runs are found through the index on ``state_type`` (there are
few of them compared with finished ones), finished runs only within a trailing window through the index on
``end_time``, workers through their pool index. Nothing pages through all runs. The queries follow Prefect
3.8's schema (the version pinned by this project); the integration tests run them against the real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

LIVE_STATES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
FINISHED_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# Prefect marks a scheduled run that missed its start "Late" (state type stays SCHEDULED).
LATE_STATE_NAME = "Late"

_LIVE_FLOW_RUNS = """
SELECT upper(fr.state_name), coalesce(f.name || '/' || d.name, ''), count(*)
FROM flow_run fr
LEFT JOIN deployment d ON d.id = fr.deployment_id
LEFT JOIN flow f ON f.id = d.flow_id
WHERE fr.state_type = ANY(%(states)s::state_type[])
GROUP BY 1, 2
"""
_FINISHED_FLOW_RUNS = """
SELECT upper(fr.state_type::text), coalesce(f.name || '/' || d.name, ''), count(*)
FROM flow_run fr
LEFT JOIN deployment d ON d.id = fr.deployment_id
LEFT JOIN flow f ON f.id = d.flow_id
WHERE fr.end_time > now() - make_interval(secs => %(window)s)
  AND fr.state_type = ANY(%(states)s::state_type[])
GROUP BY 1, 2
"""
_LATE = """
SELECT count(*), min(expected_start_time)
FROM flow_run WHERE state_type = 'SCHEDULED' AND state_name = %(late)s
"""
_LIVE_TASK_RUNS = """
SELECT upper(state_name), count(*) FROM task_run
WHERE state_type = ANY(%(states)s::state_type[]) GROUP BY 1
"""
_WORKERS = """
SELECT wp.name, coalesce(w.status::text, 'NONE'), count(w.id), max(w.last_heartbeat_time)
FROM work_pool wp LEFT JOIN worker w ON w.work_pool_id = wp.id
GROUP BY 1, 2
"""
_BACKLOG = """
SELECT wp.name, wq.name,
       (SELECT count(*) FROM flow_run fr
        WHERE fr.work_queue_id = wq.id AND fr.state_type = 'SCHEDULED' AND fr.expected_start_time <= now())
FROM work_queue wq JOIN work_pool wp ON wp.id = wq.work_pool_id
"""


def collect_flow_runs(conn: psycopg.Connection[tuple[object, ...]], window_s: int) -> Iterator[Metric]:
    now = datetime.now(UTC)
    live = GaugeMetricFamily("prefect_flow_runs", "Flow runs not yet finished, by state and deployment.",
                             labels=["state", "deployment"])
    for state, deployment, count in conn.execute(_LIVE_FLOW_RUNS, {"states": list(LIVE_STATES)}):
        live.add_metric([str(state), str(deployment)], float(str(count)))
    yield live

    finished = GaugeMetricFamily(
        "prefect_flow_runs_finished_recent",
        f"Flow runs that finished in the last {window_s}s, by final state and deployment.",
        labels=["state", "deployment"])
    rows = conn.execute(_FINISHED_FLOW_RUNS, {"window": window_s, "states": list(FINISHED_STATES)})
    for state, deployment, count in rows:
        finished.add_metric([str(state), str(deployment)], float(str(count)))
    yield finished

    row = conn.execute(_LATE, {"late": LATE_STATE_NAME}).fetchone()
    late_count, oldest = (row[0], row[1]) if row else (0, None)
    yield GaugeMetricFamily("prefect_late_flow_runs", "Scheduled flow runs that missed their start (state Late).",
                            value=float(str(late_count)))
    age = (now - oldest).total_seconds() if isinstance(oldest, datetime) else 0.0
    yield GaugeMetricFamily("prefect_oldest_late_flow_run_age_seconds",
                            "How long the oldest Late flow run has been waiting past its scheduled start (0: none).",
                            value=max(age, 0.0))

    tasks = GaugeMetricFamily("prefect_task_runs", "Task runs not yet finished, by state.", labels=["state"])
    for state, count in conn.execute(_LIVE_TASK_RUNS, {"states": list(LIVE_STATES)}):
        tasks.add_metric([str(state)], float(str(count)))
    yield tasks


def collect_work_pools(conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[Metric]:
    now = datetime.now(UTC)
    workers = GaugeMetricFamily("prefect_work_pool_workers", "Workers known to each work pool, by status.",
                                labels=["work_pool", "status"])
    heartbeat = GaugeMetricFamily(
        "prefect_work_pool_last_heartbeat_age_seconds",
        "Seconds since any worker of the pool last sent a heartbeat (+Inf: no worker ever did).",
        labels=["work_pool"])
    newest: dict[str, datetime | None] = {}
    for pool, status, count, last in conn.execute(_WORKERS):
        name = str(pool)
        if status != "NONE":
            workers.add_metric([name, str(status)], float(str(count)))
        seen = last if isinstance(last, datetime) else None
        previous = newest.get(name)
        newest[name] = max(filter(None, (previous, seen)), default=None)
    for name, last_seen in newest.items():
        heartbeat.add_metric([name], (now - last_seen).total_seconds() if last_seen else float("inf"))
    yield workers
    yield heartbeat

    backlog = GaugeMetricFamily("prefect_work_queue_backlog",
                                "Scheduled flow runs due now that no worker has picked up yet.",
                                labels=["work_pool", "work_queue"])
    for pool, queue, count in conn.execute(_BACKLOG):
        backlog.add_metric([str(pool), str(queue)], float(str(count)))
    yield backlog
