#!/bin/sh
# prefect-stack: infra/scripts/redis/probe.sh. probe.sh redis-ready|redis-alive|sentinel
# shellcheck source-path=SCRIPTDIR source=common.sh # in the same ConfigMap, so in the same directory
. "$SCRIPTS_DIR/common.sh"
case $1 in
    redis-alive)
        # Any answer will do (LOADING while a large AOF loads is alive).
        timeout 4 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping > /dev/null ;;
    redis-ready)
        [ "$(timeout 4 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping)" = PONG ]
        # A replica serves only once it follows its primary.
        info=$(timeout 4 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info replication | tr -d '\r')
        case $info in
            *role:slave*) case $info in *master_link_status:up*) ;; *) exit 1 ;; esac ;;
        esac ;;
    sentinel)
        [ "$(timeout 4 redis-cli -h 127.0.0.1 -p "$SENTINEL_PORT" ping)" = PONG ] ;;
    *)
        echo "usage: probe.sh redis-ready|redis-alive|sentinel" >&2
        exit 2 ;;
esac
