#!/bin/sh
# prefect-stack: infra/scripts/redis/start-exporter.sh. redis_exporter as the read-only monitor user; its password
# stays in a file.
# Environment: REDIS_PORT, EXPORTER_PORT (where /metrics is served), MONITOR_USER, EXPORTER_STREAMS (the streams
# whose length is reported: redis_exporter's -check-single-streams, "db0=events,..."), SECRET_DIR, EXPORTER_RUN_DIR.
set -eu
umask 077
address="redis://127.0.0.1:$REDIS_PORT"
password=$(cat "$SECRET_DIR/monitor-password")
printf '{"%s": "%s"}\n' "$address" "$password" > "$EXPORTER_RUN_DIR/passwords.json"
exec prometheus-redis-exporter -redis.addr="$address" -redis.user="$MONITOR_USER" \
    -redis.password-file="$EXPORTER_RUN_DIR/passwords.json" -web.listen-address=":$EXPORTER_PORT" \
    -check-single-streams="$EXPORTER_STREAMS"
