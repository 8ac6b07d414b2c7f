#!/bin/sh
# prefect-stack: infra/scripts/postgres/start.sh, the compose target's PostgreSQL service. First start: create the
# cluster (superuser password from a compose secret, data checksums on); then run PostgreSQL with the rendered
# configuration.
# Environment (set on the service from the configuration model): POSTGRES_BIN (initdb and postgres),
# POSTGRES_DATA (the cluster), POSTGRES_SUPERUSER_PASSWORD_FILE (the mounted secret: a path, never the password),
# POSTGRES_CONFIG_FILE (postgresql.conf).
set -eu
data=$POSTGRES_DATA
if [ ! -s "$data/PG_VERSION" ]; then
  "$POSTGRES_BIN/initdb" -D "$data" --username postgres --pwfile "$POSTGRES_SUPERUSER_PASSWORD_FILE" \
    --auth-local peer --auth-host scram-sha-256 --encoding UTF8 --locale C.UTF-8 --data-checksums
fi
exec "$POSTGRES_BIN/postgres" -c config_file="$POSTGRES_CONFIG_FILE"
