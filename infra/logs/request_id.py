"""The API replicas' request log: one line per HTTP request carrying its request id, and that id on every record
logged while the request is served.

HAProxy gives each API request an ``X-Request-ID`` (keeping a well-formed one the client sent) and logs it; this
ASGI layer, wrapped around Prefect's app by ``infra.logs.api_server``, reads it from the request and logs it with the
replica's own line for the request. uvicorn's access records cannot do this: they carry no headers. Where no load
balancer of the stack's own stands in front (a Kubernetes Service), the replica checks the client's id the same way
and makes one when there is none or it is malformed. The response carries the id back, so a caller can quote it.

Only HTTP requests are touched: lifespan and websocket scopes (/api/events/in, /api/events/out, /api/logs/out) go
through unchanged.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from infra.logs import fields

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ACCESS_LOGGER = "prefect_stack.access"
# Asked every second by HAProxy's health checks and by Kubernetes' probes: at INFO they would be most of the lines.
QUIET_PATHS = frozenset({"/api/health", "/api/ready"})
# The shape HAProxy accepts from a client (infra.render.haproxy.CLIENT_REQUEST_ID): anything else could forge lines.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HEADER = fields.REQUEST_ID_HEADER.lower().encode("latin-1")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _current.get()


_installed = False


def install_record_factory() -> None:
    """Every log record created while a request is served gets its id as ``record.request_id`` (the attribute the
    JSON formatter writes). A record factory rather than a logging.Filter: a filter sees only the records of the
    logger or handler it is attached to, and Prefect's, uvicorn's and SQLAlchemy's records go through handlers the
    logging configuration owns. The previous factory is kept (OpenTelemetry's log correlation chains the same way)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        request_id = _current.get()
        if request_id is not None and not hasattr(record, fields.REQUEST_ID):
            setattr(record, fields.REQUEST_ID, request_id)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def _request_id(scope: Scope) -> str:
    """The request's id: the one header's value when well-formed, else a new one."""
    values = [value for name, value in scope.get("headers", ()) if name.lower() == _HEADER]
    if len(values) == 1:
        value = bytes(values[0]).decode("latin-1")
        if _WELL_FORMED.fullmatch(value):
            return value
    return str(uuid.uuid4())


class RequestIdMiddleware:
    """Wraps an ASGI app: the request id in a context variable while the request is served, one access line when
    it is over (INFO; DEBUG for the health checks), and the id on the response."""

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        install_record_factory()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = _current.set(request_id)
        started = time.perf_counter()
        status: int | None = None
        logged = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                if not any(name.lower() == _HEADER for name, _ in headers):
                    headers.append((_HEADER, request_id.encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not logged:
                # Logged here, from inside the app's call: with tracing on, the request's span is still the
                # current one, so the line (and the OTLP log record) carries the request's trace id.
                logged = True
                self._log(scope, status, (time.perf_counter() - started) * 1000, request_id)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # What the server answers when the app raised before responding; the traceback is the server's to log.
            status = status if status is not None else 500
            raise
        finally:
            if not logged:
                self._log(scope, status, (time.perf_counter() - started) * 1000, request_id)
            _current.reset(token)

    def _log(self, scope: Scope, status: int | None, duration_ms: float, request_id: str) -> None:
        path = scope.get("path", "")
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        method = scope.get("method", "")
        shown = status if status is not None else "-"  # the client went away before any response
        # The id is in the message as well as on the record, so plain-text lines (logs.format text) carry it too.
        self.logger.log(level, "%s %s %s %.1f ms request_id=%s", method, path, shown, duration_ms, request_id,
                        extra={"method": method, "path": path, "status": status,
                               "duration_ms": round(duration_ms, 1)})
