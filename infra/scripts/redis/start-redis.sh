#!/bin/sh
# prefect-stack: infra/scripts/redis/start-redis.sh. Starts this pod's Redis: the primary, or a replica of the
# primary the Sentinels name.
# shellcheck source-path=SCRIPTDIR source=common.sh # in the same ConfigMap, so in the same directory
. "$SCRIPTS_DIR/common.sh"
monitor_password=$(read_secret monitor-password)
fill "$SCRIPTS_DIR/redis.conf" "$RUN_DIR/redis.conf" "MONITOR_PASSWORD=$monitor_password" \
     "ANNOUNCE_HOST=$ANNOUNCE_HOST"
if [ -n "${SENTINELS:-}" ]; then
    primary=$(find_primary)
    if [ "$primary" = "$ANNOUNCE_HOST $REDIS_PORT" ]; then
        echo "start-redis: starting as the primary"
    else
        echo "start-redis: starting as a replica of $primary"
        echo "replicaof $primary" >> "$RUN_DIR/redis.conf"
    fi
fi
exec redis-server "$RUN_DIR/redis.conf"
