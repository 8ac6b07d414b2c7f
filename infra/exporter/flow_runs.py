"""Flow runs, task runs, work pools and work queues, read from Prefect's database by a read-only role.

Bounded cost whatever the history's size: live runs are found through the index on ``state_type`` (there are
few of them compared with finished ones), finished runs only within a trailing window through the index on
``end_time``, workers through their pool index, a run's states through the index on (flow run, timestamp). Nothing
pages through all runs. The queries follow Prefect 3.8's schema (the version pinned by this project); the unit
tests run them against that schema on a throwaway PostgreSQL, the integration tests against a deployed stack.

The database, not the API: the exporter holds a read-only role of its own, while the API's one credential (the
admin's) opens everything; and one query per metric costs less than a request per work pool.

Metrics over the trailing window (finished runs, pickup delays) are gauges of that window, recomputed at each
scrape: they are not counters, so read them as they are (no ``rate()``).
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
# A run a worker has claimed (it proposes PENDING before starting the run's process) and not yet finished.
CLAIMED_STATES = ("PENDING", "RUNNING", "PAUSED", "CANCELLING")
# Prefect's foreman marks a worker OFFLINE once it has missed this many heartbeats
# (PREFECT_SERVER_SERVICES_FOREMAN_INACTIVITY_HEARTBEAT_MULTIPLE, default 3), counting a worker that did not say
# how often it beats at PREFECT_SERVER_SERVICES_FOREMAN_FALLBACK_HEARTBEAT_INTERVAL_SECONDS (default 30).
WORKER_MISSED_HEARTBEATS = 3
WORKER_HEARTBEAT_S = 30
# Quantiles of the pickup delay the exporter reports: the typical run, and the slow tail an operator feels.
PICKUP_QUANTILES = (0.5, 0.9, 0.99)

_LIVE_FLOW_RUNS = """
SELECT upper(fr.state_name), coalesce(f.name || '/' || d.name, ''), count(*)
FROM flow_run fr
LEFT JOIN deployment d ON d.id = fr.deployment_id
LEFT JOIN flow f ON f.id = d.flow_id
WHERE fr.state_type = ANY(%(states)s::state_type[])
GROUP BY 1, 2
"""
_FINISHED_FLOW_RUNS = """
SELECT upper(fr.state_type::text), coalesce(f.name || '/' || d.name, ''), coalesce(wp.name, ''), count(*)
FROM flow_run fr
LEFT JOIN deployment d ON d.id = fr.deployment_id
LEFT JOIN flow f ON f.id = d.flow_id
LEFT JOIN work_queue wq ON wq.id = fr.work_queue_id
LEFT JOIN work_pool wp ON wp.id = wq.work_pool_id
WHERE fr.end_time > now() - make_interval(secs => %(window)s)
  AND fr.state_type = ANY(%(states)s::state_type[])
GROUP BY 1, 2, 3
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
# Online as Prefect's foreman decides it, but from the heartbeats themselves: the status column is only as fresh
# as the foreman's last loop, and stays ONLINE for good while the background services are down.
_ONLINE_WORKERS = """
SELECT wp.name,
       count(w.id) FILTER (WHERE w.last_heartbeat_time > now() - make_interval(
           secs => %(missed)s * coalesce(w.heartbeat_interval_seconds, %(interval)s)))
FROM work_pool wp LEFT JOIN worker w ON w.work_pool_id = wp.id
GROUP BY 1
"""
# Due: the time of the run's latest schedule (next_scheduled_start_time, what workers poll by), not its first
# expected start: a run rescheduled for later (AwaitingRetry, a crashed run scheduled again) is not due before
# then. Late runs are SCHEDULED runs too, so they are in.
_BACKLOG = """
SELECT wp.name, wq.name,
       (SELECT count(*) FROM flow_run fr
        WHERE fr.work_queue_id = wq.id AND fr.state_type = 'SCHEDULED'
          AND coalesce(fr.next_scheduled_start_time, fr.expected_start_time) <= now())
FROM work_queue wq JOIN work_pool wp ON wp.id = wq.work_pool_id
"""
# Pickup delay: from the time a run was scheduled to start to its PENDING state (a worker's claim), for the runs
# claimed within the window. Candidates are the claimed runs still live and the runs finished within the window
# (both through their indexes), so the cost does not grow with the history. The schedule is that of the run's
# latest SCHEDULED state before the claim, not expected_start_time, which keeps the first schedule of a run
# scheduled again. A run claimed early (workers prefetch runs due within PREFECT_WORKER_PREFETCH_SECONDS) was on
# time: 0. A run claimed and since scheduled again is left out until its next claim.
_PICKUP_DELAYS = """
WITH claimed AS (
    SELECT id, work_queue_id, expected_start_time FROM flow_run
    WHERE state_type = ANY(%(claimed)s::state_type[]) AND work_queue_id IS NOT NULL
    UNION ALL
    SELECT id, work_queue_id, expected_start_time FROM flow_run
    WHERE end_time > now() - make_interval(secs => %(window)s)
      AND state_type = ANY(%(finished)s::state_type[]) AND work_queue_id IS NOT NULL
), delays AS (
    SELECT c.work_queue_id,
           greatest(extract(epoch FROM pending.timestamp - coalesce(scheduled.at, c.expected_start_time)),
                    0)::float8 AS delay
    FROM claimed c
    CROSS JOIN LATERAL (
        SELECT s.timestamp FROM flow_run_state s
        WHERE s.flow_run_id = c.id AND s.type = 'PENDING'
          AND s.timestamp > now() - make_interval(secs => %(window)s)
        ORDER BY s.timestamp DESC LIMIT 1) pending
    LEFT JOIN LATERAL (
        SELECT (s.state_details ->> 'scheduled_time')::timestamptz AS at FROM flow_run_state s
        WHERE s.flow_run_id = c.id AND s.type = 'SCHEDULED' AND s.timestamp < pending.timestamp
        ORDER BY s.timestamp DESC LIMIT 1) scheduled ON true
)
SELECT wp.name, count(*), percentile_cont(%(quantiles)s::float8[]) WITHIN GROUP (ORDER BY delays.delay)
FROM delays JOIN work_queue wq ON wq.id = delays.work_queue_id JOIN work_pool wp ON wp.id = wq.work_pool_id
GROUP BY 1
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
        f"Flow runs that finished in the last {window_s}s, by final state, deployment and work pool ('' for "
        "runs of no pool).",
        labels=["state", "deployment", "work_pool"])
    rows = conn.execute(_FINISHED_FLOW_RUNS, {"window": window_s, "states": list(FINISHED_STATES)})
    for state, deployment, pool, count in rows:
        finished.add_metric([str(state), str(deployment), str(pool)], float(str(count)))
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


def collect_work_pools(conn: psycopg.Connection[tuple[object, ...]], window_s: int) -> Iterator[Metric]:
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

    online = GaugeMetricFamily(
        "prefect_work_pool_online_workers",
        f"Workers of the pool that sent a heartbeat within their last {WORKER_MISSED_HEARTBEATS} heartbeat "
        "intervals (Prefect's rule for ONLINE); 0 for a pool without any.", labels=["work_pool"])
    for pool, count in conn.execute(_ONLINE_WORKERS, {"missed": WORKER_MISSED_HEARTBEATS,
                                                      "interval": WORKER_HEARTBEAT_S}):
        online.add_metric([str(pool)], float(str(count)))
    yield online

    backlog = GaugeMetricFamily("prefect_work_queue_backlog",
                                "Scheduled flow runs due now that no worker has picked up yet.",
                                labels=["work_pool", "work_queue"])
    for pool, queue, count in conn.execute(_BACKLOG):
        backlog.add_metric([str(pool), str(queue)], float(str(count)))
    yield backlog

    yield from _pickups(conn, window_s)


def _pickups(conn: psycopg.Connection[tuple[object, ...]], window_s: int) -> Iterator[Metric]:
    """Pickup delays per pool over the window: quantiles, and how many claims they are drawn from (a p99 of three
    claims is no tail). A pool with no claim has a count of 0 and no quantile."""
    pickups = GaugeMetricFamily(
        "prefect_work_pool_pickups_recent",
        f"Flow runs that a worker of the pool claimed (state PENDING) in the last {window_s}s.",
        labels=["work_pool"])
    delay = GaugeMetricFamily(
        "prefect_work_pool_pickup_delay_seconds",
        f"Quantiles of the delay from a run's scheduled start to a worker's claim, over the runs claimed in the "
        f"last {window_s}s (a window's quantile, not a cumulative summary).", labels=["work_pool", "quantile"])
    claimed: dict[str, float] = {str(pool): 0.0 for (pool,) in conn.execute("SELECT name FROM work_pool")}
    rows = conn.execute(_PICKUP_DELAYS, {"claimed": list(CLAIMED_STATES), "finished": list(FINISHED_STATES),
                                         "window": window_s, "quantiles": list(PICKUP_QUANTILES)})
    for pool, count, quantiles in rows:
        claimed[str(pool)] = float(str(count))
        values = quantiles if isinstance(quantiles, list) else []  # a float8[] in every group: it has a claim
        for quantile, value in zip(PICKUP_QUANTILES, values, strict=False):
            delay.add_metric([str(pool), str(quantile)], float(value))
    for pool, count in claimed.items():
        pickups.add_metric([pool], count)
    yield pickups
    yield delay
