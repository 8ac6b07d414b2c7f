"""Connection failures an API replica answers as retryable (503) instead of 500.

Prefect answers 503, which its clients retry, for the database errors it recognises
(``prefect/server/api/server.py``: ``is_client_retryable_exception``: any SQLAlchemy ``DBAPIError`` and a few
asyncpg errors). SQLAlchemy's asyncpg dialect translates asyncpg's errors into its DBAPI errors, but not the
socket errors of opening a connection: when PgBouncer restarts, a replica opening a connection gets
``ConnectionRefusedError`` or ``ConnectionResetError`` (and a frozen PgBouncer a ``TimeoutError``), which reach
Prefect untranslated and become HTTP 500, which no client retries (measured by ``invoke fault-drill``:
7 of 451 requests on a PgBouncer crash).

This listener, on SQLAlchemy's own ``do_connect`` event, raises those as the dialect's ``OperationalError``, as a
synchronous driver (psycopg) would: SQLAlchemy then wraps it in a ``DBAPIError``, Prefect answers 503 and the
client retries. Only the opening of a connection is concerned; nothing had been sent on it, so retrying the request
cannot apply anything twice. Configuration through SQLAlchemy's public event API; Prefect's code is unchanged.
"""

from __future__ import annotations

from typing import Any

CONNECT_ERRORS = (OSError, TimeoutError)


def _connect(dialect: Any, _record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
    try:
        return dialect.connect(*cargs, **cparams)
    except CONNECT_ERRORS as exc:
        raise dialect.loaded_dbapi.OperationalError(
            f"could not open a connection to the database: {type(exc).__name__}: {exc}") from exc


def install() -> None:
    """Listen on every engine this process creates (Prefect creates its own)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "do_connect", _connect):
        event.listen(Engine, "do_connect", _connect)
