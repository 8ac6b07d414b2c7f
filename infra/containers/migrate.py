"""The one-shot migration of the containerised targets: what the database needs beyond Prefect's own schema, then
Prefect's schema and blocks (``infra.database.migrate``).

Two modes, by who may do what:

- compose (the default): the stack runs its own PostgreSQL, so the superuser (over TCP, password from a compose
  secret) brings roles, passwords, the database, pg_trgm and the exporters' grants up to the model, as the local
  target's deploy does. It runs before any API replica starts (``service_completed_successfully``).
- Kubernetes (``--as-owner``): no superuser at all. Roles and their passwords are CloudNativePG's (the Cluster's
  managed roles) or, with an external PostgreSQL, its operator's; the database, its owner and pg_trgm come from the
  Cluster's bootstrap. The database owner itself grants the monitor role its reads (it owns the schema and the
  tables), then runs the schema migration as it always did.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from infra.config import load_config
from infra.database import migrate
from infra.database.admin import SUPERUSER, ensure_database, grant_monitor_reads, role_exists
from infra.layout import StateLayout
from infra.render.postgres import MONITOR_ROLE
from infra.secrets import mounted_secrets

CONNECT_TIMEOUT_S = 60
# CloudNativePG creates managed roles after the Cluster is up, in its instance manager's reconciliation loop (seconds
# later); the Job may start first.
ROLE_TIMEOUT_S = 120

Connect = Callable[[str], "psycopg.Connection[tuple[object, ...]]"]


def _wait_until_connected(connect: Connect, dbname: str, where: str) -> bool:
    # The health check (compose) or the Cluster's readiness (Kubernetes) said PostgreSQL accepts connections; a
    # restart right after initdb, or a password CloudNativePG has yet to apply, can still refuse one.
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            connect(dbname).close()
            return True
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                sys.stderr.write(f"migrate: PostgreSQL at {where} refused for {CONNECT_TIMEOUT_S} s: {exc}\n")
                return False
            time.sleep(1)


def grant_as_owner(connect: Connect, database: str, owner: str, *, role_timeout_s: float = ROLE_TIMEOUT_S,
                   sleep: Callable[[float], None] = time.sleep) -> bool:
    """As the database owner: wait for the monitor role (made by CloudNativePG or the server's operator), then grant
    it its reads. False, with the reason on standard error, when the role never appears."""
    deadline = time.monotonic() + role_timeout_s
    with connect(database) as conn:
        while not role_exists(conn, MONITOR_ROLE):
            if time.monotonic() >= deadline:
                sys.stderr.write(
                    f"migrate: role {MONITOR_ROLE} does not exist after {role_timeout_s:.0f} s. On CloudNativePG it is "
                    "a managed role of the Cluster: see `kubectl get cluster <name> -o "
                    "jsonpath='{.status.managedRolesStatus}'`. On an external PostgreSQL create it (LOGIN, member of "
                    "pg_monitor, the password in <state>/secrets/postgres_monitor), or turn monitoring off\n")
                return False
            sleep(1)
        grant_monitor_reads(conn, owner)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.containers.migrate")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--user", required=True, help="the database owner (Prefect's role)")
    parser.add_argument("--secrets", type=Path, required=True,
                        help="directory of secret files: postgres_superuser and the roles' passwords; with "
                             "--as-owner only postgres_prefect (the owner's)")
    # Kubernetes: the Cluster's certificate checked against its CA, as the apps do; compose: the back-end network.
    parser.add_argument("--sslmode", default="prefer", help="libpq sslmode (default prefer)")
    parser.add_argument("--sslrootcert", help="CA certificate file the verify sslmodes check the server against")
    parser.add_argument("--as-owner", action="store_true",
                        help="connect as --user, not the superuser: roles, passwords, the database and pg_trgm are "
                             "someone else's (CloudNativePG, or an external server's operator)")
    parser.add_argument("--monitor-grants", action="store_true",
                        help="with --as-owner: grant the monitor role its reads (the role must exist)")
    args = parser.parse_args(argv)
    # Only the migration's secrets are mounted (the others are withheld: using one is an error naming it).
    secrets = mounted_secrets(args.secrets)
    where = f"{args.host}:{args.port}"

    if args.as_owner:
        def connect_owner(dbname: str) -> psycopg.Connection[tuple[object, ...]]:
            return psycopg.connect(host=args.host, port=args.port, user=args.user,
                                   password=secrets.get("postgres_prefect"), dbname=dbname, autocommit=True,
                                   connect_timeout=5, sslmode=args.sslmode, sslrootcert=args.sslrootcert)

        if not _wait_until_connected(connect_owner, args.database, where):
            return 1
        if args.monitor_grants:
            if not grant_as_owner(connect_owner, args.database, args.user):
                return 1
            sys.stdout.write(f"migrate: {MONITOR_ROLE}'s grants are up to date\n")
        return migrate.main()

    config = load_config(postgres={"port": args.port, "database": args.database, "user": args.user})
    password = secrets.get("postgres_superuser")

    def connect(dbname: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host=args.host, port=args.port, user=SUPERUSER, password=password, dbname=dbname,
                               autocommit=True, connect_timeout=5, sslmode=args.sslmode, sslrootcert=args.sslrootcert)

    if not _wait_until_connected(connect, "postgres", where):
        return 1
    ensure_database(config, StateLayout(Path("/nonexistent")), secrets, connect)
    sys.stdout.write("migrate: roles, database and grants are up to date\n")
    return migrate.main()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
