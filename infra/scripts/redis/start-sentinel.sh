#!/bin/sh
# prefect-stack: infra/scripts/redis/start-sentinel.sh. Starts this pod's Sentinel, monitoring the primary the
# other Sentinels name.
# shellcheck source-path=SCRIPTDIR source=common.sh # in the same ConfigMap, so in the same directory
. "$SCRIPTS_DIR/common.sh"
primary=$(find_primary)
host=${primary% *} port=${primary#* }
# Sentinel refuses a configuration whose primary does not resolve yet (a pod that has just been created).
waited=0
until getent hosts "$host" > /dev/null; do
    waited=$((waited + 1))
    if [ "$waited" -gt 120 ]; then
        echo "start-sentinel: $host does not resolve after 60 s" >&2
        exit 1
    fi
    sleep 0.5
done
# A stable id per pod: a restarted Sentinel is the same Sentinel to the others, not one more.
myid=$(printf '%s' "$POD_NAME:$ANNOUNCE_HOST:$SENTINEL_PORT" | sha1sum | cut -c1-40)
monitor_password=$(read_secret monitor-password)
fill "$SCRIPTS_DIR/sentinel.conf" "$RUN_DIR/sentinel.conf" "ANNOUNCE_HOST=$ANNOUNCE_HOST" \
     "MASTER_HOST=$host" "MASTER_PORT=$port" "MONITOR_PASSWORD=$monitor_password"
echo "sentinel myid $myid" >> "$RUN_DIR/sentinel.conf"
echo "start-sentinel: monitoring $primary"
exec redis-server "$RUN_DIR/sentinel.conf" --sentinel
