#!/bin/sh
# prefect-stack: infra/scripts/redis/pre-stop.sh. preStop of the redis container (rollout, drain, eviction): a
# primary about to stop first hands its role to a replica, so clients wait about a second instead of
# down-after-milliseconds plus a failover, and no acknowledged write is lost.
# shellcheck source-path=SCRIPTDIR source=common.sh # in the same ConfigMap, so in the same directory
. "$SCRIPTS_DIR/common.sh"
cli() { timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
[ -n "${SENTINELS:-}" ] || exit 0
[ "$(cli role | head -n 1)" = master ] || exit 0
# Writes wait from here (replication goes on) until this Redis is a replica: none lands here after the promotion.
# The pause ends by itself if this script dies.
cli client pause 15000 write > /dev/null
# Until a replica has acknowledged everything (replicas acknowledge every second).
waited=0
while [ "$waited" -lt 12 ]; do
    info=$(cli info replication | tr -d '\r')
    offset=$(printf '%s\n' "$info" | sed -n 's/^master_repl_offset://p')
    if printf '%s\n' "$info" | grep -q "^slave[0-9]*:.*,offset=$offset,"; then
        break
    fi
    sleep 0.25
    waited=$((waited + 1))
done
accepted=
for sentinel in "127.0.0.1:$SENTINEL_PORT" $SENTINELS; do
    answer=$(timeout 3 redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" sentinel failover "$MASTER_SET" \
             2>/dev/null || true)
    if [ "$answer" = OK ]; then
        accepted=yes
        break
    fi
done
# The primary every answering Sentinel names, once they agree, the failover is over and it is not this pod
# (nothing until then): clients ask any of them, and one still naming this pod would send them back here.
agreed_primary() {
    agreed=
    for sentinel in $SENTINELS; do
        # SENTINEL MASTER, as clients (redis-py) ask: it names the new primary only once the failover is over
        # (get-master-addr-by-name names it earlier, while the replicas are still being reconfigured).
        answer=$(timeout 2 redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" --raw \
                 sentinel master "$MASTER_SET" 2>/dev/null \
                 | awk 'NR % 2 == 1 { key = $0 } NR % 2 == 0 { value[key] = $0 }
                        END { print value["ip"], value["port"], value["flags"] }' || true)
        # shellcheck disable=SC2086 # split on purpose into host, port and flags; none has glob characters
        set -- $answer
        [ "$#" -eq 3 ] || continue
        if [ "$3" != master ] || [ "$1 $2" = "$ANNOUNCE_HOST $REDIS_PORT" ] || \
           { [ -n "$agreed" ] && [ "$agreed" != "$1 $2" ]; }; then
            return
        fi
        agreed="$1 $2"
    done
    echo "$agreed"
}
if [ -n "$accepted" ]; then
    waited=0
    while [ "$waited" -lt 40 ]; do
        primary=$(agreed_primary)
        if [ -n "$primary" ]; then
            # Follow the promoted replica at once rather than when a Sentinel gets round to it.
            # shellcheck disable=SC2086 # "host port" split on purpose into REPLICAOF's two arguments
            cli replicaof $primary > /dev/null
            echo "pre-stop: handed the primary role to $primary"
            break
        fi
        sleep 0.25
        waited=$((waited + 1))
    done
fi
cli client unpause > /dev/null
# Connected clients ask the Sentinels again; the paused writes were answered READONLY and are retried there.
cli client kill type normal > /dev/null || true
cli client kill type pubsub > /dev/null || true
