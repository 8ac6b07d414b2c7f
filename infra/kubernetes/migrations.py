"""The API pods' init container: wait until the database schema is at the head of this image's Prefect.

Prefect has no "check migrations" command, and the API replicas run with migrations off (the migration Job does
them once, before any replica serves). So each API pod starts with this check: it compares the database's
``alembic_version`` with the newest migration shipped in the image's Prefect, and exits 0 once they match. A
timeout exits 1, and Kubernetes restarts the init container, so a pod never serves a schema it does not know.
Usage (with the API's environment, from ``infra.containers.entrypoint``)::

    python -m infra.kubernetes.migrations wait [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

POLL_INTERVAL_S = 2.0


def head_revision() -> str:
    """The newest PostgreSQL migration of the installed Prefect (the revision a migrated database reports)."""
    import prefect.server.database
    from alembic.script import ScriptDirectory
    from prefect.server.database.alembic_commands import alembic_config

    # Prefect's alembic env picks the dialect's versions folder at run time; without a database, name it here.
    versions = Path(prefect.server.database.__file__).parent / "_migrations" / "versions" / "postgresql"
    script = ScriptDirectory(ScriptDirectory.from_config(alembic_config()).dir, version_locations=[str(versions)])
    heads = script.get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"Prefect ships {len(heads)} migration heads ({heads}); expected one")
    return str(heads[0])


TLS_SETTING = "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_"


def libpq_url(sqlalchemy_url: str, env: Mapping[str, str]) -> str:
    """Prefect's ``postgresql+asyncpg://`` URL as a libpq one (psycopg), checking the server as Prefect does: with
    Prefect's TLS settings (the Cluster's CA), verify it against that CA; otherwise TLS required, as the server does."""
    parts = urlsplit(sqlalchemy_url)
    if env.get(TLS_SETTING + "ENABLED") == "true":
        mode = "verify-full" if env.get(TLS_SETTING + "CHECK_HOSTNAME") == "true" else "verify-ca"
        ca = env.get(TLS_SETTING + "CA_FILE")
        query = urlencode({"sslmode": mode, **({"sslrootcert": ca} if ca else {})})
    else:
        query = "sslmode=require" if "ssl" not in parts.query else parts.query.replace("ssl=", "sslmode=")
    return urlunsplit(("postgresql", parts.netloc, parts.path, query, ""))


def current_revision(url: str) -> str | None:
    """The database's schema revision, or None while it cannot be read (no database yet, no table yet)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")


def wait_for_head(read: Callable[[], str | None], head: str, timeout_s: float, say: Callable[[str], None] = _say,
                  clock: Callable[[], float] = time.monotonic, pause: Callable[[float], None] = time.sleep) -> bool:
    """Poll ``read`` until it returns ``head``; False after ``timeout_s``. Says what it sees when that changes."""
    deadline = clock() + timeout_s
    last: object = object()
    while True:
        seen = read()
        if seen == head:
            say(f"schema at {head}: ready")
            return True
        if seen != last:
            say(f"waiting for the migration Job: schema at {seen or 'nothing yet'}, this image needs {head}")
            last = seen
        if clock() >= deadline:
            say(f"the schema did not reach {head} within {timeout_s:.0f} s: check the migration Job "
                "(kubectl get jobs -l app.kubernetes.io/component=migrate; kubectl logs job/<name>)")
            return False
        pause(POLL_INTERVAL_S)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.kubernetes.migrations")
    parser.add_argument("command", choices=["wait", "head"])
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    head = head_revision()
    if args.command == "head":
        sys.stdout.write(head + "\n")
        return 0
    url = libpq_url(os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"], os.environ)
    return 0 if wait_for_head(lambda: current_revision(url), head, args.timeout) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
