"""The compose target's one-shot migration service: roles and database, then Prefect's schema and blocks.

It runs before any API replica starts (``service_completed_successfully``), as the local target's deploy does:
the superuser (over TCP, password from a compose secret) brings roles, passwords, the database, pg_trgm and the
exporters' grants up to the model; then ``infra.database.migrate`` upgrades the schema and registers the blocks once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg
from pydantic import SecretStr

from infra.config import load_config
from infra.database import migrate
from infra.database.admin import SUPERUSER, ensure_database
from infra.layout import StateLayout
from infra.secrets import SECRET_NAMES, Secrets

CONNECT_TIMEOUT_S = 60


def _secrets(directory: Path) -> Secrets:
    # Only the migration's secrets are mounted; ensure_database reads no others.
    values = {name: SecretStr((directory / name).read_text().strip()) if (directory / name).exists() else SecretStr("")
              for name in SECRET_NAMES}
    return Secrets(**values)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.containers.migrate")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--secrets", type=Path, required=True)
    # Kubernetes: the Cluster's certificate checked against its CA, as the apps do; compose: the back-end network.
    parser.add_argument("--sslmode", default="prefer", help="libpq sslmode (default prefer)")
    parser.add_argument("--sslrootcert", help="CA certificate file the verify sslmodes check the server against")
    args = parser.parse_args(argv)
    secrets = _secrets(args.secrets)
    config = load_config(postgres={"port": args.port, "database": args.database, "user": args.user})
    password = secrets.get("postgres_superuser")

    def connect(dbname: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host=args.host, port=args.port, user=SUPERUSER, password=password, dbname=dbname,
                               autocommit=True, connect_timeout=5, sslmode=args.sslmode, sslrootcert=args.sslrootcert)

    # The health check said PostgreSQL accepts connections; a restart right after initdb can still refuse one.
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            connect("postgres").close()
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                sys.stderr.write(f"migrate: PostgreSQL at {args.host}:{args.port} refused for {CONNECT_TIMEOUT_S} s: "
                                 f"{exc}\n")
                return 1
            time.sleep(1)
    ensure_database(config, StateLayout(Path("/nonexistent")), secrets, connect)
    sys.stdout.write("migrate: roles, database and grants are up to date\n")
    return migrate.main()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
