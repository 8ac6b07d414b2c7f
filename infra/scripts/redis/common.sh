# shellcheck shell=sh
# prefect-stack: infra/scripts/redis/common.sh, shipped in the Redis ConfigMap. Sourced by start-redis.sh,
# start-sentinel.sh, pre-stop.sh and probe.sh.
# Environment: POD_NAME (ends in the StatefulSet ordinal), ANNOUNCE_HOST (this pod's DNS name), REDIS_PORT,
# SENTINEL_PORT, REDIS_NODES and SENTINELS ("host:port ..." in ordinal order; SENTINELS empty: standalone),
# MASTER_SET (the Sentinels' name for the primary), SCRIPTS_DIR, SECRET_DIR, RUN_DIR.
set -eu
umask 077
ordinal=${POD_NAME##*-}

read_secret() {
    value=$(cat "$SECRET_DIR/$1")
    # Generated secrets are URL-safe; anything else could break the configuration files or the URLs.
    case $value in
        ''|*[!A-Za-z0-9._~-]*)
            echo "$SECRET_DIR/$1 is empty or has characters other than A-Z a-z 0-9 . _ ~ -: recreate the" \
                 "Secret with invoke deploy --target kubernetes" >&2
            exit 1 ;;
    esac
    printf '%s' "$value"
}
password=$(read_secret password)
export REDISCLI_AUTH="$password"

# fill TEMPLATE OUT [NAME=VALUE...]: the template with its placeholders replaced; the values go through a sed
# script file written by the shell's printf, never through a command line (ps would show them).
fill() {
    template=$1 out=$2
    shift 2
    # Named after the output: the redis and sentinel containers share RUN_DIR and start at the same moment
    # (and $$ is no help: each container has its own process ids).
    script="$out.sed"
    printf 's|@REDIS_PASSWORD@|%s|g\n' "$password" > "$script"
    for pair in "$@"; do
        printf 's|@%s@|%s|g\n' "${pair%%=*}" "${pair#*=}" >> "$script"
    done
    sed -f "$script" "$template" > "$out.tmp"
    rm -f "$script"
    mv "$out.tmp" "$out"
}

# The primary as "host port": what the other pods' Sentinels answer, else pod 0 (nobody has failed over yet).
find_primary() {
    i=0
    for sentinel in ${SENTINELS:-}; do
        if [ "$i" -ne "$ordinal" ]; then
            answer=$(timeout 3 redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" --raw \
                     sentinel get-master-addr-by-name "$MASTER_SET" 2>/dev/null || true)
            # shellcheck disable=SC2086 # split on purpose into host and port; an address has no glob characters
            set -- $answer
            if [ "$#" -eq 2 ] && [ "$2" -eq "$2" ] 2>/dev/null; then
                echo "$1 $2"
                return
            fi
        fi
        i=$((i + 1))
    done
    # shellcheck disable=SC2086 # split on purpose into the nodes' host:port words; no glob characters in them
    set -- $REDIS_NODES
    echo "${1%:*} ${1##*:}"
}
