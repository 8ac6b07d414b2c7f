"""The common line format: the keys every JSON log line carries, and the level names they use.

A line is one JSON object. ``time`` (RFC 3339, UTC, milliseconds: ``2026-12-06T19:22:25.123Z``), ``level`` (one of
LEVELS), ``component`` (the operator's name for the process: ``api-1``, ``services-1``, ``worker-default-1``,
``haproxy``, ``postgres``, ...) and ``message`` are always there; the ids below are there when known. Writers
(Prefect's formatter, HAProxy's log format) and the reader (``invoke logs``) share these names.
"""

from __future__ import annotations

from typing import Final

TIME: Final = "time"
LEVEL: Final = "level"
COMPONENT: Final = "component"
MESSAGE: Final = "message"
LOGGER: Final = "logger"
REQUEST_ID: Final = "request_id"
TRACE_ID: Final = "trace_id"
SPAN_ID: Final = "span_id"
FLOW_RUN_ID: Final = "flow_run_id"
TASK_RUN_ID: Final = "task_run_id"
EXCEPTION: Final = "exception"

LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Set in every Prefect process's environment by the renderers: the component name its lines carry.
COMPONENT_ENV: Final = "PREFECT_STACK_COMPONENT"
# The header HAProxy adds (keeping one the client sent) and the API replicas log with each request.
REQUEST_ID_HEADER: Final = "X-Request-ID"
