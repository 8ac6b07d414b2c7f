"""An API replica's server: what ``prefect server start --no-services`` runs in the foreground, with Prefect's app
wrapped in the request-id layer (``infra.logs.request_id``). Configuration, not a patch: Prefect's code is unchanged.

Follows ``start`` and ``_run_in_foreground`` (prefect/cli/server.py, prefect/cli/_server_utils.py; Prefect 3.8.8):
the settings the command resolves and forces for a web-server-only process (analytics off), Prefect's logging setup
(the CLI's ``setup_logging``), ``create_app(final=True, webserver_only=True)`` and ``uvicorn.run`` with the same
host, port, keep-alive, websocket ping and log level. Left out, as they serve an interactive or background start:
the welcome banner, the check against an already running server, the PID file. Migrations and block registration
on start stay off through the environment (infra.render.prefect), as for the command.

One addition, about the database: connection failures are answered as retryable (``infra.database.connect_errors``).
Two differences, both about logs: uvicorn's own access line is off (the request-id layer writes one line per
request, with the id), and uvicorn does not install its own logging configuration over Prefect's (``log_config``
None), so its lines go through the same handlers and formatter as Prefect's, JSON included.

Run as ``python -m infra.logs.api_server --host H --port P [--keep-alive-timeout N]``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from infra.database import connect_errors
from infra.logs.request_id import ACCESS_LOGGER, RequestIdMiddleware


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.logs.api_server",
        description="An API replica: prefect server start --no-services, with the request-id layer.")
    parser.add_argument("--host", help="Address to listen on (default: PREFECT_SERVER_API_HOST).")
    parser.add_argument("--port", type=int, help="Port to listen on (default: PREFECT_SERVER_API_PORT).")
    parser.add_argument("--keep-alive-timeout", type=int,
                        help="Seconds an idle connection stays open (default: PREFECT_SERVER_API_KEEPALIVE_TIMEOUT).")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = _arguments(argv)
    # Imported here: `--help` answers without loading Prefect's settings.
    import prefect
    import uvicorn
    from prefect.logging.configuration import setup_logging
    from prefect.server.api.server import create_app
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_API_HOST,
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_PORT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED,
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED,
        PREFECT_SERVER_UI_ENABLED,
        get_current_settings,
        temporary_settings,
    )

    if not get_current_settings().testing.test_mode:
        setup_logging()
    # A connection that cannot be opened (PgBouncer restarting) answers 503, which clients retry, not 500.
    connect_errors.install()
    host = arguments.host if arguments.host is not None else PREFECT_SERVER_API_HOST.value()
    port = arguments.port if arguments.port is not None else PREFECT_SERVER_API_PORT.value()
    keep_alive = (arguments.keep_alive_timeout if arguments.keep_alive_timeout is not None
                  else PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value())
    log_level = PREFECT_SERVER_LOGGING_LEVEL.value()
    # What `start --no-services` puts in its temporary settings: the resolved values, and analytics off.
    server_settings = {
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED: str(PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED.value()),
        PREFECT_SERVER_ANALYTICS_ENABLED: "False",
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED: str(PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED.value()),
        PREFECT_SERVER_UI_ENABLED: str(PREFECT_SERVER_UI_ENABLED.value()),
        PREFECT_SERVER_LOGGING_LEVEL: log_level,
    }
    access = logging.getLogger(ACCESS_LOGGER)
    if access.level == logging.NOTSET:
        # Prefect's logging configuration does not know this logger: it follows the server's level, as uvicorn's
        # access log did (the root logger's WARNING would drop every line).
        access.setLevel(log_level)
    with temporary_settings(server_settings):
        uvicorn.run(
            app=RequestIdMiddleware(create_app(final=True, webserver_only=True)),
            app_dir=str(prefect.__module_path__.parent),
            host=host,
            port=port,
            timeout_keep_alive=keep_alive,
            ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
            ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
            log_level=log_level.lower(),
            log_config=None,
            access_log=False,
        )


if __name__ == "__main__":
    main()
