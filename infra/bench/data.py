"""A Prefect database of a given size, with rows that look like a month of real use, generated in SQL.

The rows are written by the database itself (``INSERT ... SELECT`` over ``generate_series``), a batch of flow
runs per transaction, until ``pg_database_size`` reaches the target. Each flow run of a handful of flows gets
its current state, its task runs (each with its state), log lines of realistic length (a few tracebacks among
them) and the state-change events Prefect would have emitted, with their ``event_resources`` rows. Timestamps
spread over the last :data:`RUN_WINDOW`; only finished states are written, so no background service (late
runs, cancellation clean-up) rewrites them while a benchmark runs.

The columns written are checked against the live schema first: a Prefect upgrade that adds a required
column fails here with the column's name, not half-way through a batch.
"""

from __future__ import annotations

import re
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import psycopg
from psycopg import sql

from infra.backup.database import DatabaseAccess, Row, table_row_counts
from infra.errors import UserError
from infra.progress import Progress

MB = 1024 * 1024

RUN_WINDOW = timedelta(days=30)
RUNS_PER_BATCH = 200
TASKS_PER_RUN = 8
LOGS_PER_RUN = 56
# A flow run's Pending, Running and final state, and the same three for each task run.
EVENTS_PER_RUN = 3 + 3 * TASKS_PER_RUN
PROGRESS_EVERY_S = 10.0
MAX_BATCHES = 1_000_000  # a bound, not a goal: a batch always grows the database

FLOWS = (
    "etl-orders", "sync-crm-contacts", "daily-revenue-report", "ingest-clickstream",
    "refresh-ml-features", "backfill-inventory", "export-finance-ledger", "monitor-data-quality",
)
TASKS = ("extract_orders", "validate_schema", "transform_orders", "load_warehouse", "publish_metrics")
ADJECTIVES = (
    "amber", "brave", "calm", "daring", "eager", "fancy", "gentle", "hasty", "icy", "jolly", "keen", "lively",
    "mellow", "nimble", "olive", "proud", "quiet", "rapid", "silver", "tidy", "urban", "vivid", "witty", "zesty",
)
ANIMALS = (
    "alpaca", "badger", "cheetah", "dingo", "eagle", "ferret", "gecko", "heron", "ibis", "jackal", "koala",
    "lemur", "marmot", "newt", "ocelot", "puffin", "quail", "raven", "salamander", "tapir", "urchin", "vulture",
    "walrus", "yak",
)
REGIONS = ("eu-west-1", "us-east-1", "us-west-2", "ap-southeast-2")

# Log lines: PostgreSQL format() templates over one shared argument list (see LOG["message"]), with their level.
# Listed as often as they should appear; they average about 200 bytes once rendered.
_PROCESSED = (
    "Processed %3$s records from s3://data-lake/raw/%1$s/%5$s/part-%4$s.parquet in %7$s s; %4$s rows rejected by "
    "schema validation (missing customer_id), written to s3://data-lake/quarantine/%1$s/%5$s/", 20)
_HTTP = ("HTTP Request: GET https://api.internal.example.com/v2/%1$s?page=%4$s&page_size=500&updated_since=%5$s"
         "T00:00:00Z \"HTTP/1.1 200 OK\"", 20)
_EXECUTING = ("Executing '%2$s' immediately... (flow run '%1$s', attempt 1 of 3, cache key %6$s)", 20)
_UPSERTED = ("Upserted %3$s rows into warehouse.analytics.%2$s (batch %4$s of 40); merge took %7$s s, %4$s rows "
             "updated, %3$s inserted; region %8$s", 20)
_CACHE = ("Cache miss for key %6$s; computing result of %2$s with parameters {\"date\": \"%5$s\", \"region\": "
          "\"%8$s\", \"limit\": %3$s} and persisting it to s3://prefect-results/%1$s/%6$s.json", 20)
_TRACEBACK = (
    "Task run '%2$s' - Encountered exception during execution:\nTraceback (most recent call last):\n"
    "  File \"/opt/prefect/flows/%1$s.py\", line %4$s, in %2$s\n    response.raise_for_status()\n"
    "  File \"/usr/local/lib/python3.11/site-packages/httpx/_models.py\", line 829, in raise_for_status\n"
    "    raise HTTPStatusError(message, request=request, response=self)\n"
    "httpx.HTTPStatusError: Server error '503 Service Unavailable' for url "
    "'https://api.internal.example.com/v2/%1$s?page=%4$s'\n"
    "For more information check: https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/503", 40)
_RETRY = ("Task run '%2$s' received non-final state 'AwaitingRetry' when proposing final state 'Failed' and will "
          "attempt to run again...", 30)
LOG_TEMPLATES: tuple[tuple[str, int], ...] = (
    *[_PROCESSED] * 6, *[_HTTP] * 5, *[_EXECUTING] * 2, *[_UPSERTED] * 3, *[_CACHE] * 2, _RETRY, _TRACEBACK,
)

_FLOW_RUN_POLICY = ('{"max_retries": 0, "retry_delay_seconds": 0.0, "retries": 0, "retry_delay": 0, '
                    '"pause_keys": [], "resuming": false, "retry_type": null}')
_TASK_RUN_POLICY = ('{"max_retries": 0, "retry_delay_seconds": 0.0, "retries": 2, "retry_delay": 10, '
                    '"retry_jitter_factor": null}')

# ---------------------------------------------------------------- SQL

_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS bench_flow_run (
    n int, id uuid, state_id uuid, flow_id uuid, flow_name text, name text, state_type text,
    started timestamptz, ended timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS bench_task_run (
    flow_run_id uuid, k int, id uuid, state_id uuid, task_key text, dynamic_key text, name text,
    state_type text, started timestamptz, ended timestamptz
) ON COMMIT DELETE ROWS
"""

# Volatile random() in a subquery's select list is evaluated once per row (the planner never flattens it).
_FILL_FLOW_RUNS = """
INSERT INTO bench_flow_run
SELECT g, gen_random_uuid(), gen_random_uuid(),
       (%(flow_ids)s::uuid[])[1 + mod(g, cardinality(%(flow_ids)s::uuid[]))],
       (%(flow_names)s::text[])[1 + mod(g, cardinality(%(flow_names)s::text[]))],
       (%(adjectives)s::text[])[1 + floor(pick_name * cardinality(%(adjectives)s::text[]))::int] || '-' ||
           (%(animals)s::text[])[1 + floor(pick_animal * cardinality(%(animals)s::text[]))::int],
       CASE WHEN pick < 0.88 THEN 'COMPLETED' WHEN pick < 0.95 THEN 'FAILED'
            WHEN pick < 0.98 THEN 'CRASHED' ELSE 'CANCELLED' END,
       started, started + make_interval(secs => 20 + took * 900)
FROM (SELECT g, random() AS pick, random() AS pick_name, random() AS pick_animal, random() AS took,
             now() - interval '1 hour' - random() * %(window)s::interval AS started
      FROM generate_series(1, %(runs)s::int) AS g) AS s
"""

_FILL_TASK_RUNS = """
INSERT INTO bench_task_run
SELECT r.id, k, gen_random_uuid(), gen_random_uuid(),
       x.fn || '-' || substr(md5(x.fn), 1, 8), ((k - 1) / cardinality(%(task_names)s::text[]))::text,
       x.fn || '-' || ((k - 1) / cardinality(%(task_names)s::text[]))::text,
       CASE WHEN r.state_type = 'COMPLETED' OR k < %(tasks)s::int THEN 'COMPLETED' ELSE r.state_type END,
       r.started + x.span * (k - 1), r.started + x.span * (k - 1) + x.span * 0.9
FROM bench_flow_run AS r
CROSS JOIN generate_series(1, %(tasks)s::int) AS k
CROSS JOIN LATERAL (
    SELECT (%(task_names)s::text[])[1 + mod(k - 1, cardinality(%(task_names)s::text[]))] AS fn,
           (r.ended - r.started) / %(tasks)s::int AS span
) AS x
"""

# Column -> expression over the batch's temporary rows, per table: one place says what each INSERT writes, and
# the schema check reads the same keys.
FLOW_RUN = {
    "id": "r.id", "flow_id": "r.flow_id", "name": "r.name", "flow_version": "md5(r.flow_name)",
    "state_id": "r.state_id", "state_type": "r.state_type::state_type", "state_name": "initcap(r.state_type)",
    "state_timestamp": "r.ended", "run_count": "1", "expected_start_time": "r.started - interval '2 seconds'",
    "start_time": "r.started", "end_time": "r.ended", "total_run_time": "r.ended - r.started",
    "parameters": "jsonb_build_object('date', to_char(r.started, 'YYYY-MM-DD'), 'region', "
                  "(%(regions)s::text[])[1 + mod(r.n, cardinality(%(regions)s::text[]))], "
                  "'batch_size', 500 + mod(r.n * 37, 4500), 'full_refresh', false)",
    "context": "'{}'::jsonb", "empirical_policy": "%(flow_run_policy)s::jsonb", "tags": "'[\"etl\", \"prod\"]'::jsonb",
    "job_variables": "'{}'::jsonb", "auto_scheduled": "false",
    "created": "r.started - interval '2 seconds'", "updated": "r.ended",
}
FLOW_RUN_STATE = {
    "id": "r.state_id", "flow_run_id": "r.id", "type": "r.state_type::state_type", "timestamp": "r.ended",
    "name": "initcap(r.state_type)",
    "message": "CASE r.state_type WHEN 'COMPLETED' THEN 'All states completed.' "
               "WHEN 'FAILED' THEN 'Flow run encountered an exception: HTTPStatusError: Server error ''503 Service "
               "Unavailable''' WHEN 'CRASHED' THEN 'Flow run infrastructure exited with non-zero status code 137.' "
               "ELSE 'The parent flow run was cancelled.' END",
    "state_details": "jsonb_build_object('flow_run_id', r.id, 'transition_id', gen_random_uuid(), "
                     "'untrackable_result', false, 'pause_reschedule', false, 'deferred', false)",
    "created": "r.ended", "updated": "r.ended",
}
TASK_RUN = {
    "id": "t.id", "flow_run_id": "t.flow_run_id", "task_key": "t.task_key", "dynamic_key": "t.dynamic_key",
    "name": "t.name", "task_version": "NULL", "state_id": "t.state_id", "state_type": "t.state_type::state_type",
    "state_name": "initcap(t.state_type)", "state_timestamp": "t.ended", "run_count": "1",
    "flow_run_run_count": "1", "expected_start_time": "t.started", "start_time": "t.started", "end_time": "t.ended",
    "total_run_time": "t.ended - t.started", "empirical_policy": "%(task_run_policy)s::jsonb",
    "task_inputs": "'{\"batch_size\": [{\"input_type\": \"parameter\", \"name\": \"batch_size\"}]}'::jsonb",
    "tags": "'[\"etl\"]'::jsonb", "created": "t.started", "updated": "t.ended",
}
TASK_RUN_STATE = {
    "id": "t.state_id", "task_run_id": "t.id", "type": "t.state_type::state_type", "timestamp": "t.ended",
    "name": "initcap(t.state_type)", "message": "NULL",
    "state_details": "jsonb_build_object('flow_run_id', t.flow_run_id, 'task_run_id', t.id, "
                     "'transition_id', gen_random_uuid(), 'cache_key', md5(t.task_key || t.flow_run_id::text), "
                     "'untrackable_result', false, 'pause_reschedule', false, 'deferred', false)",
    "created": "t.ended", "updated": "t.ended",
}
LOG = {
    "name": "CASE WHEN t.id IS NULL THEN 'prefect.flow_runs' ELSE 'prefect.task_runs' END",
    "level": "(%(levels)s::smallint[])[s.pick]",
    "flow_run_id": "s.id", "task_run_id": "t.id",
    # One argument list for every template: %1$s flow, %2$s task, %3$s records, %4$s a small number, %5$s date,
    # %6$s hex digest, %7$s seconds, %8$s region. format() ignores the arguments a template does not use.
    "message": "format((%(templates)s::text[])[s.pick], s.flow_name, coalesce(t.task_key, s.name), "
               "(1000 + floor(s.r1 * 99000))::int, (1 + floor(s.r2 * 400))::int, to_char(s.started, 'YYYY-MM-DD'), "
               "md5(s.id::text || s.j::text), round((s.r1 * 30)::numeric, 2), "
               "(%(regions)s::text[])[1 + mod(s.j, cardinality(%(regions)s::text[]))])",
    "timestamp": "s.logged_at", "created": "s.logged_at + interval '1 second'",
    "updated": "s.logged_at + interval '1 second'",
}
_FILL_LOG_FROM = """
FROM (SELECT r.*, j, random() AS r1, random() AS r2,
             1 + floor(random() * cardinality(%(templates)s::text[]))::int AS pick,
             r.started + (r.ended - r.started) * random() AS logged_at
      FROM bench_flow_run AS r CROSS JOIN generate_series(1, %(logs)s::int) AS j) AS s
LEFT JOIN bench_task_run AS t
       ON t.flow_run_id = s.id AND t.k = CASE WHEN s.j > 4 AND s.j < %(logs)s::int - 1
                                              THEN 1 + mod(s.j, %(tasks)s::int) END
"""
EVENTS = {
    "id": "gen_random_uuid()", "occurred": "x.occurred", "event": "x.kind || '.' || initcap(x.state)",
    "resource_id": "x.resource_id",
    "resource": "jsonb_build_object('prefect.resource.id', x.resource_id, 'prefect.resource.name', x.resource_name, "
                "'prefect.state-message', '', 'prefect.state-name', initcap(x.state), 'prefect.state-type', x.state, "
                "'prefect.state-timestamp', to_char(x.occurred AT TIME ZONE 'UTC', "
                "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'))",
    "related": "x.related",
    "related_resource_ids": "jsonb_path_query_array(x.related, '$[*].\"prefect.resource.id\"')",
    "payload": "jsonb_build_object('intended', jsonb_build_object('from', x.previous, 'to', x.state), "
               "'initial_state', CASE WHEN x.previous IS NULL THEN NULL ELSE jsonb_build_object('type', x.previous, "
               "'name', initcap(x.previous)) END, 'validated_state', jsonb_build_object('type', x.state, "
               "'name', initcap(x.state), 'message', ''))",
    "received": "x.occurred + interval '40 milliseconds'", "recorded": "x.occurred + interval '150 milliseconds'",
    "created": "x.occurred + interval '150 milliseconds'", "updated": "x.occurred + interval '150 milliseconds'",
}
# Event e of a flow run: 1 Pending, 2 Running, last the final state; in between, three per task run.
_FILL_EVENTS_FROM = """
FROM (SELECT r.*, e FROM bench_flow_run AS r CROSS JOIN generate_series(1, %(events)s::int) AS e) AS s
LEFT JOIN bench_task_run AS t
       ON t.flow_run_id = s.id AND t.k = CASE WHEN s.e BETWEEN 3 AND %(events)s::int - 1 THEN 1 + (s.e - 3) / 3 END
CROSS JOIN LATERAL (
    SELECT CASE WHEN t.id IS NULL THEN 'prefect.flow-run' ELSE 'prefect.task-run' END AS kind,
           CASE WHEN t.id IS NULL THEN 'prefect.flow-run.' || s.id ELSE 'prefect.task-run.' || t.id END
               AS resource_id,
           coalesce(t.name, s.name) AS resource_name,
           CASE WHEN s.e = 1 THEN 'PENDING' WHEN s.e = 2 THEN 'RUNNING' WHEN t.id IS NULL THEN s.state_type
                WHEN mod(s.e - 3, 3) = 0 THEN 'PENDING' WHEN mod(s.e - 3, 3) = 1 THEN 'RUNNING'
                ELSE t.state_type END AS state,
           CASE WHEN s.e = 1 THEN NULL WHEN s.e = 2 THEN 'PENDING' WHEN t.id IS NULL THEN 'RUNNING'
                WHEN mod(s.e - 3, 3) = 0 THEN NULL WHEN mod(s.e - 3, 3) = 1 THEN 'PENDING'
                ELSE 'RUNNING' END AS previous,
           CASE WHEN s.e = 1 THEN s.started - interval '1 second' WHEN s.e = 2 THEN s.started
                WHEN t.id IS NULL THEN s.ended WHEN mod(s.e - 3, 3) = 0 THEN t.started - interval '100 milliseconds'
                WHEN mod(s.e - 3, 3) = 1 THEN t.started ELSE t.ended END AS occurred,
           CASE WHEN t.id IS NULL THEN jsonb_build_array(
                    jsonb_build_object('prefect.resource.id', 'prefect.flow.' || s.flow_id,
                                       'prefect.resource.role', 'flow', 'prefect.resource.name', s.flow_name),
                    jsonb_build_object('prefect.resource.id', 'prefect.tag.etl', 'prefect.resource.role', 'tag'))
                ELSE jsonb_build_array(
                    jsonb_build_object('prefect.resource.id', 'prefect.flow-run.' || s.id,
                                       'prefect.resource.role', 'flow-run', 'prefect.resource.name', s.name),
                    jsonb_build_object('prefect.resource.id', 'prefect.flow.' || s.flow_id,
                                       'prefect.resource.role', 'flow', 'prefect.resource.name', s.flow_name))
           END AS related
) AS x
"""
# As Prefect's event persister writes them: one row for the event's resource (role '') and one per related
# resource, each without its id and role.
EVENT_RESOURCES = ("occurred", "resource_id", "resource_role", "resource", "event_id", "created", "updated")
_EVENT_RESOURCES_SELECT = """
SELECT occurred, resource_id, '', (resource - 'prefect.resource.id' - 'prefect.resource.role')::json, id,
       created, updated FROM inserted
UNION ALL
SELECT i.occurred, rel ->> 'prefect.resource.id', rel ->> 'prefect.resource.role',
       (rel - 'prefect.resource.id' - 'prefect.resource.role')::json, i.id, i.created, i.updated
FROM inserted AS i CROSS JOIN LATERAL jsonb_array_elements(i.related) AS rel
"""

WRITTEN: Mapping[str, Any] = {
    "flow_run": FLOW_RUN, "flow_run_state": FLOW_RUN_STATE, "task_run": TASK_RUN, "task_run_state": TASK_RUN_STATE,
    "log": LOG, "events": EVENTS, "event_resources": EVENT_RESOURCES,
}


def _insert(table: str, columns: Mapping[str, str], source: str) -> sql.Composed:
    """INSERT INTO table (columns) SELECT expressions <source>: expressions and source are this module's constants."""
    return sql.SQL("INSERT INTO {} ({}) SELECT {} {}").format(
        sql.Identifier("public", table),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.SQL(e) for e in columns.values()),
        sql.SQL(source),
    )


def _batch_statements() -> list[sql.SQL | sql.Composed]:
    events = sql.SQL("WITH inserted AS ({} RETURNING id, occurred, resource_id, resource, related, created, updated) "
                     "INSERT INTO {} ({}) {}").format(
        _insert("events", EVENTS, _FILL_EVENTS_FROM),
        sql.Identifier("public", "event_resources"),
        sql.SQL(", ").join(sql.Identifier(c) for c in EVENT_RESOURCES),
        sql.SQL(_EVENT_RESOURCES_SELECT),
    )
    return [
        sql.SQL(_FILL_FLOW_RUNS),
        sql.SQL(_FILL_TASK_RUNS),
        # flow_run.state_id and flow_run_state.flow_run_id reference each other, neither deferrable: both rows go in
        # one statement, whose foreign keys are checked once it has written both.
        sql.SQL("WITH flow_runs AS ({}) {}").format(
            _insert("flow_run", FLOW_RUN, "FROM bench_flow_run AS r"),
            _insert("flow_run_state", FLOW_RUN_STATE, "FROM bench_flow_run AS r"),
        ),
        _insert("task_run", TASK_RUN, "FROM bench_task_run AS t"),
        _insert("task_run_state", TASK_RUN_STATE, "FROM bench_task_run AS t"),
        _insert("log", LOG, _FILL_LOG_FROM),
        events,
    ]


# ---------------------------------------------------------------- pure helpers


_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(\d+)H)?$")


def iso_duration(text: str) -> timedelta:
    """'P7D' -> 7 days, 'PT12H' -> 12 hours: the forms services.events_retention accepts."""
    match = _ISO_DURATION.match(text)
    if match is None or not any(match.groups()):
        raise ValueError(f"not a duration of days or hours: {text!r}")
    days, hours = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours)


def missing_required_columns(required: Mapping[str, set[str]], written: Mapping[str, Any]) -> dict[str, list[str]]:
    """{table: [columns]} that the schema requires (NOT NULL, no default) but the generator does not write."""
    missing = {}
    for table, columns in required.items():
        absent = sorted(columns - set(written.get(table, ())))
        if absent:
            missing[table] = absent
    return missing


def parameters(flow_ids: list[uuid.UUID], window: timedelta) -> dict[str, Any]:
    return {
        "flow_ids": flow_ids, "flow_names": list(FLOWS), "adjectives": list(ADJECTIVES), "animals": list(ANIMALS),
        "regions": list(REGIONS), "task_names": list(TASKS), "templates": [t for t, _ in LOG_TEMPLATES],
        "levels": [level for _, level in LOG_TEMPLATES], "flow_run_policy": _FLOW_RUN_POLICY,
        "task_run_policy": _TASK_RUN_POLICY, "window": window, "runs": RUNS_PER_BATCH, "tasks": TASKS_PER_RUN,
        "logs": LOGS_PER_RUN, "events": EVENTS_PER_RUN,
    }


# ---------------------------------------------------------------- database


@dataclass(frozen=True)
class GeneratedData:
    database_bytes: int
    rows: dict[str, int]  # every table of the public schema, counted after generation
    batches: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"database_bytes": self.database_bytes, "rows": self.rows, "batches": self.batches,
                "seconds": round(self.seconds, 2)}


def check_schema(conn: psycopg.Connection[Row]) -> None:
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = ANY(%s) AND is_nullable = 'NO' AND column_default IS NULL",
        (list(WRITTEN),),
    ).fetchall()
    required: dict[str, set[str]] = {table: set() for table in WRITTEN}
    for table, column in rows:
        required[str(table)].add(str(column))
    missing = missing_required_columns(required, WRITTEN)
    if missing:
        listed = "; ".join(f"{table}: {', '.join(columns)}" for table, columns in missing.items())
        raise UserError(f"this Prefect schema requires columns the data generator does not write ({listed})",
                        fix="add them to the column maps in infra/bench/data.py")


def _ensure_flows(conn: psycopg.Connection[Row]) -> list[uuid.UUID]:
    conn.execute(
        "INSERT INTO public.flow (name, tags) SELECT unnest(%s::text[]), '[\"etl\"]'::jsonb "
        "ON CONFLICT (name) DO NOTHING",
        (list(FLOWS),),
    )
    rows = conn.execute("SELECT id, name FROM public.flow WHERE name = ANY(%s)", (list(FLOWS),)).fetchall()
    ids = {str(name): uuid.UUID(str(value)) for value, name in rows}
    return [ids[name] for name in FLOWS]


def database_size(conn: psycopg.Connection[Row]) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def generate(database: DatabaseAccess, target_bytes: int, progress: Progress,
             window: timedelta = RUN_WINDOW) -> GeneratedData:
    """Fill ``database`` with batches of flow runs until it is at least ``target_bytes``; then VACUUM ANALYZE.

    The VACUUM also sets every row's hint bits, as autovacuum would have long since done on a real database: the
    first backup to read the new rows would otherwise pay for writing them (and their WAL) while being timed.
    """
    started = time.monotonic()
    statements = _batch_statements()
    batches = 0
    with database.connect() as conn:
        check_schema(conn)
        # Only this session: a crash would lose at most the last batches of throw-away rows.
        conn.execute("SET synchronous_commit = off")
        conn.execute(_TEMP_TABLES)
        params = parameters(_ensure_flows(conn), window)
        size = database_size(conn)
        progress(f"generating about {target_bytes / MB:.0f} MB of Prefect data in batches of {RUNS_PER_BATCH} "
                 f"flow runs (database now {size / MB:.0f} MB)")
        last_report = time.monotonic()
        while size < target_bytes or batches == 0:
            if batches >= MAX_BATCHES:
                raise UserError(f"the database is still {size} bytes after {batches} batches",
                                fix="check that the generated rows are being written")
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement, params)
            batches += 1
            size = database_size(conn)
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                progress(f"  {size / MB:.0f} of {target_bytes / MB:.0f} MB ({min(size / target_bytes, 1):.0%}), "
                         f"{batches * RUNS_PER_BATCH} flow runs, {time.monotonic() - started:.0f}s")
                last_report = time.monotonic()
        progress(f"wrote {batches * RUNS_PER_BATCH} flow runs in {time.monotonic() - started:.0f}s; "
                 "VACUUM ANALYZE and a checkpoint")
        for table in WRITTEN:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier("public", table)))
        conn.execute("CHECKPOINT")
        size = database_size(conn)
        rows = table_row_counts(conn)
    return GeneratedData(size, rows, batches, time.monotonic() - started)


# ---------------------------------------------------------------- the API still serves it


def check_api_serves(api_url: str, auth: tuple[str, str], expected_flow_runs: int,
                     verify: ssl.SSLContext | bool = True) -> None:
    """The generated rows must be data Prefect can read: count them, and read a page of each kind through the API."""
    with httpx.Client(base_url=api_url.rstrip("/") + "/", auth=auth, timeout=60, trust_env=False,
                      verify=verify) as client:
        try:
            count = client.post("flow_runs/count", json={})
            pages = {path: client.post(path, json={"limit": 10})
                     for path in ("flow_runs/filter", "task_runs/filter", "logs/filter")}
        except httpx.HTTPError as exc:
            raise UserError(f"the API at {api_url} did not answer: {type(exc).__name__}: {exc}",
                            fix="read the API replicas' logs in the temporary state directory") from None
    for path, response in {"flow_runs/count": count, **pages}.items():
        if not response.is_success:
            raise UserError(f"POST {api_url}/{path} answered HTTP {response.status_code} on the generated data: "
                            f"{response.text[:300]}", fix="fix the generated rows in infra/bench/data.py")
    if int(count.json()) != expected_flow_runs:
        raise UserError(f"the API counts {count.json()} flow runs, the database holds {expected_flow_runs}",
                        fix="check which database the API replicas use")
