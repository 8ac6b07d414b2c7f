#!/bin/sh
# Rendered by prefect-stack. First start: create the cluster (superuser password from a compose secret, data
# checksums on); then run PostgreSQL with the rendered configuration.
set -eu
data=/var/lib/prefect-stack/data/postgres
if [ ! -s "$data/PG_VERSION" ]; then
  /usr/lib/postgresql/15/bin/initdb -D "$data" --username postgres --pwfile /run/secrets/postgres_superuser \
    --auth-local peer --auth-host scram-sha-256 --encoding UTF8 --locale C.UTF-8 --data-checksums
fi
exec /usr/lib/postgresql/15/bin/postgres -c config_file=/var/lib/prefect-stack/etc/postgresql.conf
