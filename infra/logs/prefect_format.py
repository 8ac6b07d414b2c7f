"""The Prefect processes' log formatter: one JSON object per record, in the common line format (``fields``).

Named by the rendered Prefect logging configuration (``infra.render.prefect_logging``) and imported by every Prefect
process of the stack (API replicas, services, workers, the flow runs they start, the migration step), so it needs the
standard library only. Prefect's own ``JsonFormatter`` is not used: it dumps the raw record (an epoch ``created``,
``msg`` and ``args`` unjoined), which no reader can match against the other components' lines.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from infra.logs import fields

# Record attributes that carry an id onto the line when a record has them: Prefect's run loggers set the run ids as
# extra attributes; the request-id layer of the API replicas sets request_id.
_RECORD_IDS = (fields.FLOW_RUN_ID, fields.TASK_RUN_ID, fields.REQUEST_ID)
# opentelemetry-instrumentation-logging's record attributes: all zeros ("0") outside any span, which is no id.
_OTEL_IDS = ((fields.TRACE_ID, "otelTraceID"), (fields.SPAN_ID, "otelSpanID"))
# Prefect puts a placeholder where a run's id is not known: that is no id.
_UNKNOWN = "<unknown>"


def rfc3339(created: float) -> str:
    """``2026-12-06T19:22:25.123Z``: UTC, milliseconds, the ``Z`` the reader and other components use."""
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one line of JSON with the common keys; ``component`` comes from the environment."""

    def __init__(self, component: str | None = None) -> None:
        super().__init__()
        self.component = component if component is not None else os.environ.get(fields.COMPONENT_ENV, "prefect")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            fields.TIME: rfc3339(record.created),
            fields.LEVEL: record.levelname,
            fields.COMPONENT: self.component,
            fields.MESSAGE: record.getMessage(),
            fields.LOGGER: record.name,
        }
        for key in _RECORD_IDS:
            value = getattr(record, key, None)
            if value is not None and str(value) not in ("", _UNKNOWN):
                line[key] = str(value)
        for key, attribute in _OTEL_IDS:
            value = getattr(record, attribute, None)
            if value is not None and str(value).strip("0"):
                line[key] = str(value)
        if record.exc_info:
            # Cached like logging.Formatter does, so several handlers format a traceback once.
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line[fields.EXCEPTION] = record.exc_text
        if record.stack_info:
            line[fields.EXCEPTION] = "\n".join(filter(None, (line.get(fields.EXCEPTION), record.stack_info)))
        # default=str: a message is already a string, but an id attribute may be a UUID or anything else.
        return json.dumps(line, ensure_ascii=False, default=str)
