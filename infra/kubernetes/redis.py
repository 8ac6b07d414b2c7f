"""Redis on Kubernetes: a StatefulSet with a Sentinel beside every Redis (the default), one standalone Redis, or an
external one; the NetworkPolicy of the Redis pods, their PodDisruptionBudget and PodMonitor; and the URLs Prefect's
processes are given (``redis_environment``).

No secret is rendered here. The pods read the passwords at start from the mounted Secret ``Names.secret_redis``
and write the configuration into an emptyDir (the root filesystem is read-only). The start scripts and the
configuration templates live in one ConfigMap; the redis.conf template is the local target's own
(``infra.render.redis.redis_settings``), so every target runs Redis with the same settings.

Sentinel bootstrap (start-redis.sh and start-sentinel.sh, same rule in both): ask the other pods' Sentinels which
Redis is the primary; if none answers (a first start, or every pod restarting at once), pod 0 is the primary and
the others replicate it. So a pod that comes back after a failover joins the new primary as a replica, and pods
may start in parallel. The one case it cannot judge: every pod down at once after a failover, when pod 0's data
may be older than the last primary's; pod 0 still wins (its replicas resynchronise from it).

A primary that is being stopped (rollout, drain) hands its role over first (pre-stop.sh: writes paused, a
Sentinel failover, the promoted replica followed), so a rollout costs clients a pause of about a second and the
one write in flight, not down-after-milliseconds of errors. An unplanned loss of the primary is a Sentinel
failover (DOWN_AFTER_MS, then a promotion); the background services' entrypoint (infra/containers/entrypoint.py
``--follow-redis``) sees the new primary's run id through the Sentinel URL and restarts them against it.
tests/unit/test_redis_sentinel_failover.py runs these scripts for real on loopback ports.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote, urlencode

from infra.config import ResourcesConfig, StackConfig
from infra.errors import UserError
from infra.exporter.event_streams import STREAMS
from infra.kubernetes.objects import (
    Component,
    Manifest,
    Names,
    config_map_volume,
    container,
    empty_dir,
    exec_probe,
    labels,
    metadata,
    pod_spec,
    secret_volume,
    selector,
    topology_spread,
)
from infra.render.prefect import REDIS_BACKENDS
from infra.render.redis import DOCKET_DB, MESSAGING_DB, MONITOR_USER, redis_settings
from infra.secrets import Secrets

COMPONENT = "redis"  # the pods' app.kubernetes.io/name and component label
REDIS_PORT = 6379
SENTINEL_PORT = 26379
EXPORTER_PORT = 9121
# The Sentinels' name for the primary: part of every redis+sentinel:// URL.
MASTER_SET = "prefect"
# A primary that answers nothing for this long is "subjectively down"; with the quorum agreeing, a replica is
# promoted. Shorter fails over faster but risks a failover on a slow disk's fsync stall.
DOWN_AFTER_MS = 5000
FAILOVER_TIMEOUT_MS = 60000

# Where things are in the pod.
SCRIPTS_DIR = "/etc/redis-scripts"  # the ConfigMap: scripts and templates
SECRET_DIR = "/etc/redis-secret"  # noqa: S105 - a path; the Secret (password, monitor-password) is mounted there
RUN_DIR = "/run/redis"              # emptyDir: the configuration files with the passwords filled in
DATA_DIR = "/data"                  # the PersistentVolumeClaim: AOF and RDB
EXPORTER_RUN_DIR = "/run/redis-exporter"

SECRET_KEY_PASSWORD = "password"  # noqa: S105 - a key name in the Secret
SECRET_KEY_MONITOR = "monitor-password"  # noqa: S105 - a key name

SENTINEL_RESOURCES = ResourcesConfig(cpu_request="50m", memory_request="32Mi", memory_limit="128Mi")
EXPORTER_RESOURCES = ResourcesConfig(cpu_request="50m", memory_request="32Mi", memory_limit="128Mi")


def quorum(replicas: int) -> int:
    """Sentinels that must agree the primary is down: a majority, so a partitioned minority never fails over."""
    return replicas // 2 + 1


# --- configuration templates and scripts (the ConfigMap) ---------------------------------------------------------

# Filled in at start by common.sh's `fill`, from the mounted Secret and the pod's own name.
PASSWORD_PLACEHOLDER = "@REDIS_PASSWORD@"  # noqa: S105 - a placeholder
MONITOR_PLACEHOLDER = "@MONITOR_PASSWORD@"
ANNOUNCE_PLACEHOLDER = "@ANNOUNCE_HOST@"
MASTER_HOST_PLACEHOLDER = "@MASTER_HOST@"
MASTER_PORT_PLACEHOLDER = "@MASTER_PORT@"


def redis_conf_template(config: StackConfig, *, sentinel: bool, port: int = REDIS_PORT, bind: str = "* -::*",
                        data_dir: str = DATA_DIR) -> str:
    text = redis_settings(config, password=PASSWORD_PLACEHOLDER, monitor_password=MONITOR_PLACEHOLDER,
                          data_dir=data_dir, bind=bind, port=port)
    if sentinel:
        text += f"""\
# Replication: any pod may be a replica of whichever pod the Sentinels name the primary (start-redis.sh appends
# replicaof). Replicas announce their pod DNS name, so Sentinel and clients find them after a pod moves.
masterauth {PASSWORD_PLACEHOLDER}
replica-announce-ip {ANNOUNCE_PLACEHOLDER}
replica-announce-port {port}
"""
    return text


def sentinel_conf_template(config: StackConfig, *, port: int = SENTINEL_PORT, bind: str = "* -::*",
                           run_dir: str = RUN_DIR) -> str:
    q = quorum(config.kubernetes.redis.replicas)
    return f"""\
# Rendered by prefect-stack from the configuration model; edit the model, not this file.
# Sentinel rewrites this file (known replicas and Sentinels, epochs): it lives in the pod's emptyDir.
port {port}
bind {bind}
daemonize no
logfile ""
dir {run_dir}
# Clients and the other Sentinels authenticate, with the data nodes' password.
requirepass {PASSWORD_PLACEHOLDER}
sentinel sentinel-pass {PASSWORD_PLACEHOLDER}
# Pods are found by their stable DNS names (the headless Service), not by IPs that change when a pod moves.
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip {ANNOUNCE_PLACEHOLDER}
sentinel announce-port {port}
sentinel monitor {MASTER_SET} {MASTER_HOST_PLACEHOLDER} {MASTER_PORT_PLACEHOLDER} {q}
sentinel auth-pass {MASTER_SET} {PASSWORD_PLACEHOLDER}
sentinel down-after-milliseconds {MASTER_SET} {DOWN_AFTER_MS}
sentinel failover-timeout {MASTER_SET} {FAILOVER_TIMEOUT_MS}
sentinel parallel-syncs {MASTER_SET} 1
"""


# Sourced by the other scripts. Every path and address comes from the environment, set on the containers
# (and by the real-process test, which runs these same scripts on loopback ports).
COMMON_SH = f"""\
# Rendered by prefect-stack. Sourced by start-redis.sh, start-sentinel.sh, probe.sh.
# Environment: POD_NAME (ends in the StatefulSet ordinal), ANNOUNCE_HOST (this pod's DNS name), REDIS_PORT,
# SENTINEL_PORT, REDIS_NODES and SENTINELS ("host:port ..." in ordinal order; SENTINELS empty: standalone),
# SCRIPTS_DIR, SECRET_DIR, RUN_DIR.
set -eu
umask 077
ordinal=${{POD_NAME##*-}}

read_secret() {{
    value=$(cat "$SECRET_DIR/$1")
    # Generated secrets are URL-safe; anything else could break the configuration files or the URLs.
    case $value in
        ''|*[!A-Za-z0-9._~-]*)
            echo "$SECRET_DIR/$1 is empty or has characters other than A-Z a-z 0-9 . _ ~ -: recreate the" \\
                 "Secret with invoke deploy --target kubernetes" >&2
            exit 1 ;;
    esac
    printf '%s' "$value"
}}
password=$(read_secret {SECRET_KEY_PASSWORD})
export REDISCLI_AUTH="$password"

# fill TEMPLATE OUT [NAME=VALUE...]: the template with its placeholders replaced; the values go through a sed
# script file written by the shell's printf, never through a command line (ps would show them).
fill() {{
    template=$1 out=$2
    shift 2
    # Named after the output: the redis and sentinel containers share RUN_DIR and start at the same moment
    # (and $$ is no help: each container has its own process ids).
    script="$out.sed"
    printf 's|{PASSWORD_PLACEHOLDER}|%s|g\\n' "$password" > "$script"
    for pair in "$@"; do
        printf 's|@%s@|%s|g\\n' "${{pair%%=*}}" "${{pair#*=}}" >> "$script"
    done
    sed -f "$script" "$template" > "$out.tmp"
    rm -f "$script"
    mv "$out.tmp" "$out"
}}

# The primary as "host port": what the other pods' Sentinels answer, else pod 0 (nobody has failed over yet).
find_primary() {{
    i=0
    for sentinel in ${{SENTINELS:-}}; do
        if [ "$i" -ne "$ordinal" ]; then
            answer=$(timeout 3 redis-cli -h "${{sentinel%:*}}" -p "${{sentinel##*:}}" --raw \\
                     sentinel get-master-addr-by-name {MASTER_SET} 2>/dev/null || true)
            set -- $answer
            if [ "$#" -eq 2 ] && [ "$2" -eq "$2" ] 2>/dev/null; then
                echo "$1 $2"
                return
            fi
        fi
        i=$((i + 1))
    done
    set -- $REDIS_NODES
    echo "${{1%:*}} ${{1##*:}}"
}}
"""

START_REDIS_SH = f"""\
# Rendered by prefect-stack. Starts this pod's Redis: the primary, or a replica of the primary the Sentinels name.
. "$SCRIPTS_DIR/common.sh"
monitor_password=$(read_secret {SECRET_KEY_MONITOR})
fill "$SCRIPTS_DIR/redis.conf" "$RUN_DIR/redis.conf" "MONITOR_PASSWORD=$monitor_password" \\
     "ANNOUNCE_HOST=$ANNOUNCE_HOST"
if [ -n "${{SENTINELS:-}}" ]; then
    primary=$(find_primary)
    if [ "$primary" = "$ANNOUNCE_HOST $REDIS_PORT" ]; then
        echo "start-redis: starting as the primary"
    else
        echo "start-redis: starting as a replica of $primary"
        echo "replicaof $primary" >> "$RUN_DIR/redis.conf"
    fi
fi
exec redis-server "$RUN_DIR/redis.conf"
"""

START_SENTINEL_SH = """\
# Rendered by prefect-stack. Starts this pod's Sentinel, monitoring the primary the other Sentinels name.
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
fill "$SCRIPTS_DIR/sentinel.conf" "$RUN_DIR/sentinel.conf" "ANNOUNCE_HOST=$ANNOUNCE_HOST" \\
     "MASTER_HOST=$host" "MASTER_PORT=$port"
echo "sentinel myid $myid" >> "$RUN_DIR/sentinel.conf"
echo "start-sentinel: monitoring $primary"
exec redis-server "$RUN_DIR/sentinel.conf" --sentinel
"""

PRE_STOP_SH = f"""\
# Rendered by prefect-stack. preStop of the redis container (rollout, drain, eviction): a primary about to stop
# first hands its role to a replica, so clients wait about a second instead of down-after-milliseconds plus a
# failover, and no acknowledged write is lost.
. "$SCRIPTS_DIR/common.sh"
cli() {{ timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }}
[ -n "${{SENTINELS:-}}" ] || exit 0
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
    answer=$(timeout 3 redis-cli -h "${{sentinel%:*}}" -p "${{sentinel##*:}}" sentinel failover {MASTER_SET} \\
             2>/dev/null || true)
    if [ "$answer" = OK ]; then
        accepted=yes
        break
    fi
done
# The primary every answering Sentinel names, once they agree, the failover is over and it is not this pod
# (nothing until then): clients ask any of them, and one still naming this pod would send them back here.
agreed_primary() {{
    agreed=
    for sentinel in $SENTINELS; do
        # SENTINEL MASTER, as clients (redis-py) ask: it names the new primary only once the failover is over
        # (get-master-addr-by-name names it earlier, while the replicas are still being reconfigured).
        answer=$(timeout 2 redis-cli -h "${{sentinel%:*}}" -p "${{sentinel##*:}}" --raw \\
                 sentinel master {MASTER_SET} 2>/dev/null \\
                 | awk 'NR % 2 == 1 {{ key = $0 }} NR % 2 == 0 {{ value[key] = $0 }}
                        END {{ print value["ip"], value["port"], value["flags"] }}' || true)
        set -- $answer
        [ "$#" -eq 3 ] || continue
        if [ "$3" != master ] || [ "$1 $2" = "$ANNOUNCE_HOST $REDIS_PORT" ] || \\
           {{ [ -n "$agreed" ] && [ "$agreed" != "$1 $2" ]; }}; then
            return
        fi
        agreed="$1 $2"
    done
    echo "$agreed"
}}
if [ -n "$accepted" ]; then
    waited=0
    while [ "$waited" -lt 40 ]; do
        primary=$(agreed_primary)
        if [ -n "$primary" ]; then
            # Follow the promoted replica at once rather than when a Sentinel gets round to it.
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
"""


PROBE_SH = """\
# Rendered by prefect-stack. probe.sh redis-ready|redis-alive|sentinel
. "$SCRIPTS_DIR/common.sh"
case $1 in
    redis-alive)
        # Any answer will do (LOADING while a large AOF loads is alive).
        timeout 4 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping > /dev/null ;;
    redis-ready)
        [ "$(timeout 4 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping)" = PONG ]
        # A replica serves only once it follows its primary.
        info=$(timeout 4 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info replication | tr -d '\\r')
        case $info in
            *role:slave*) case $info in *master_link_status:up*) ;; *) exit 1 ;; esac ;;
        esac ;;
    sentinel)
        [ "$(timeout 4 redis-cli -h 127.0.0.1 -p "$SENTINEL_PORT" ping)" = PONG ] ;;
    *)
        echo "usage: probe.sh redis-ready|redis-alive|sentinel" >&2
        exit 2 ;;
esac
"""


def start_exporter_sh(port: int = REDIS_PORT, listen_port: int = EXPORTER_PORT) -> str:
    streams = ",".join(f"db{MESSAGING_DB}={s}" for s in STREAMS)
    address = f"redis://127.0.0.1:{port}"
    return f"""\
# Rendered by prefect-stack. redis_exporter as the read-only monitor user; its password stays in a file.
set -eu
umask 077
password=$(cat "$SECRET_DIR/{SECRET_KEY_MONITOR}")
printf '{{"{address}": "%s"}}\\n' "$password" > "$EXPORTER_RUN_DIR/passwords.json"
exec prometheus-redis-exporter -redis.addr={address} -redis.user={MONITOR_USER} \\
    -redis.password-file="$EXPORTER_RUN_DIR/passwords.json" -web.listen-address=:{listen_port} \\
    -check-single-streams={streams}
"""


def config_files(config: StackConfig, *, sentinel: bool, redis_port: int = REDIS_PORT,
                 sentinel_port: int = SENTINEL_PORT, exporter_port: int = EXPORTER_PORT, bind: str = "* -::*",
                 data_dir: str = DATA_DIR, run_dir: str = RUN_DIR) -> dict[str, str]:
    """The ConfigMap's files. The parameters exist for the real-process test (loopback ports, temp dirs)."""
    files = {
        "common.sh": COMMON_SH,
        "start-redis.sh": START_REDIS_SH,
        "probe.sh": PROBE_SH,
        "redis.conf": redis_conf_template(config, sentinel=sentinel, port=redis_port, bind=bind, data_dir=data_dir),
    }
    if sentinel:
        files["start-sentinel.sh"] = START_SENTINEL_SH
        files["pre-stop.sh"] = PRE_STOP_SH
        files["sentinel.conf"] = sentinel_conf_template(config, port=sentinel_port, bind=bind, run_dir=run_dir)
    if config.monitoring.enabled:
        files["start-exporter.sh"] = start_exporter_sh(redis_port, exporter_port)
    return files


# --- addresses ---------------------------------------------------------------------------------------------------


def pod_names(config: StackConfig) -> list[str]:
    names = Names.of(config)
    replicas = config.kubernetes.redis.replicas if config.kubernetes.redis.mode == "sentinel" else 1
    return [f"{names.redis}-{i}" for i in range(replicas)]


def pod_host(config: StackConfig, pod: str) -> str:
    """A pod's stable DNS name through the headless Service. Without the cluster domain: it is not in the model,
    and every pod's resolv.conf search list completes ``<pod>.<service>.<namespace>.svc``."""
    return f"{pod}.{Names.of(config).redis_headless}.{config.kubernetes.namespace}.svc"


def sentinel_members(config: StackConfig) -> list[str]:
    return [f"{pod_host(config, pod)}:{SENTINEL_PORT}" for pod in pod_names(config)]


# --- Prefect's environment ---------------------------------------------------------------------------------------


def redis_environment(config: StackConfig, secrets: Secrets) -> dict[str, str]:
    """Prefect's Redis settings for this mode, with the password in the URLs: the prefect-redis backends, the
    connection URLs, a connect timeout.

    One URL per database: ``PREFECT_REDIS_MESSAGING_URL`` (prefect-redis: messaging, ordering, lease storage) and
    ``PREFECT_SERVER_DOCKET_URL``; both libraries parse ``redis+sentinel://`` the same way. The Sentinel URL lists
    every pod's Sentinel rather than the Sentinel Service: the client tries them in turn, so no Service endpoint
    state (a pod not ready during a failover) stands between a client and a Sentinel that can answer.
    """
    password = secrets.get("redis")
    mode = config.kubernetes.redis.mode
    if mode == "sentinel":
        members = ",".join(sentinel_members(config))
        # prefect-redis and docket read the Sentinels' password from this query option; the userinfo is the data
        # nodes' (the same password here).
        query = urlencode({"sentinel_password": password})
        urls = {db: f"redis+sentinel://:{quote(password, safe='')}@{members}/{MASTER_SET}/{db}?{query}"
                for db in (MESSAGING_DB, DOCKET_DB)}
    elif mode == "standalone":
        host = f"{Names.of(config).redis}.{config.kubernetes.namespace}.svc"
        urls = {db: f"redis://:{quote(password, safe='')}@{host}:{REDIS_PORT}/{db}" for db in (MESSAGING_DB, DOCKET_DB)}
    else:
        urls = {db: _external_url(config, password, db) for db in (MESSAGING_DB, DOCKET_DB)}
    return {
        **REDIS_BACKENDS,
        "PREFECT_REDIS_MESSAGING_URL": urls[MESSAGING_DB],
        "PREFECT_SERVER_DOCKET_URL": urls[DOCKET_DB],
        # prefect-redis connects without a timeout by default: a connection to the address of a pod that is
        # gone would hang for minutes of SYN retries instead of moving on to the next Sentinel or the new
        # primary. (Docket bounds its connects itself.)
        "PREFECT_REDIS_MESSAGING_SOCKET_CONNECT_TIMEOUT": "5",
    }


def _external_url(config: StackConfig, password: str, db: int) -> str:
    """kubernetes.redis.external_url with the password (for the data nodes) and the database number.

    A Sentinel URL gets no ``sentinel_password``: Sentinels without a password reject an AUTH, and the model
    keeps no second password; Sentinels that require one need the URL given in full to Prefect instead.
    """
    url = config.kubernetes.redis.external_url or ""  # the config validator requires it in external mode
    scheme, _, rest = url.partition("://")
    netloc, _, path_and_query = rest.partition("/")
    path, question, query = path_and_query.partition("?")
    segments = [s for s in path.split("/") if s]
    wanted = 1 if scheme.endswith("+sentinel") else 0
    if len(segments) != wanted:
        example = "redis+sentinel://host1:26379,host2:26379/<name>" if wanted else "redis://host:6379"
        raise UserError(f"kubernetes.redis.external_url {url!r} must not name a database: the stack uses "
                        f"databases {MESSAGING_DB} (messaging) and {DOCKET_DB} (Docket)",
                        fix=f"set it to {example}")
    tail = f"?{query}" if question else ""
    return f"{scheme}://:{quote(password, safe='')}@{netloc}/{'/'.join([*segments, str(db)])}{tail}"


# --- objects -----------------------------------------------------------------------------------------------------


def redis_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    mode = config.kubernetes.redis.mode
    if mode == "external":
        return []
    sentinel = mode == "sentinel"
    component: Component | None = "redis-sentinel" if sentinel else None
    names = Names.of(config)
    files = config_files(config, sentinel=sentinel)
    scripts = Manifest({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": metadata(config, names("redis-scripts"), COMPONENT),
                        "data": files}, "data", component)
    manifests = [scripts]
    if sentinel:
        manifests += [
            Manifest(_headless_service(config), "data", component),
            Manifest(_sentinel_service(config), "data", component),
            Manifest(_stateful_set(config, images.system, files), "data", component),
            Manifest(_disruption_budget(config), "data", component),
        ]
    else:
        manifests += [
            Manifest(_standalone_service(config), "data", component),
            Manifest(_stateful_set(config, images.system, files), "data", component),
        ]
    if config.kubernetes.network_policies:
        manifests.append(Manifest(_network_policy(config), "namespace", "network-policies"))
    if config.monitoring.enabled:
        manifests.append(Manifest(_pod_monitor(config), "monitoring", "monitoring"))
    return manifests


def _service_port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


def _headless_service(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(config, Names.of(config).redis_headless, COMPONENT),
            "spec": {"clusterIP": "None",
                     # Every pod's DNS name exists from its start, ready or not: the bootstrap and the Sentinels
                     # find each other by these names before anything is ready.
                     "publishNotReadyAddresses": True,
                     "selector": selector(config, COMPONENT),
                     "ports": [_service_port("redis", REDIS_PORT), _service_port("sentinel", SENTINEL_PORT)]}}


def _sentinel_service(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(config, Names.of(config).redis_sentinel, COMPONENT),
            "spec": {"type": "ClusterIP",
                     # A replica is not ready while its primary is down: during a failover every pod may be
                     # unready, exactly when clients ask the Sentinels where the new primary is.
                     "publishNotReadyAddresses": True,
                     "selector": selector(config, COMPONENT),
                     "ports": [_service_port("sentinel", SENTINEL_PORT)]}}


def _standalone_service(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(config, Names.of(config).redis, COMPONENT),
            "spec": {"type": "ClusterIP", "selector": selector(config, COMPONENT),
                     "ports": [_service_port("redis", REDIS_PORT)]}}


def _script_env(config: StackConfig, sentinel: bool) -> list[dict[str, Any]]:
    """What the scripts read (COMMON_SH). POD_NAME first: the others refer to it."""
    names = Names.of(config)
    announce = pod_host(config, "$(POD_NAME)") if sentinel else names.redis
    values = {
        "ANNOUNCE_HOST": announce,
        "REDIS_PORT": str(REDIS_PORT),
        "SENTINEL_PORT": str(SENTINEL_PORT),
        "REDIS_NODES": " ".join(f"{pod_host(config, pod)}:{REDIS_PORT}" for pod in pod_names(config))
        if sentinel else f"{names.redis}:{REDIS_PORT}",
        "SENTINELS": " ".join(sentinel_members(config)) if sentinel else "",
        "SCRIPTS_DIR": SCRIPTS_DIR,
        "SECRET_DIR": SECRET_DIR,
        "RUN_DIR": RUN_DIR,
        "EXPORTER_RUN_DIR": EXPORTER_RUN_DIR,
    }
    return [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *({"name": k, "value": v} for k, v in values.items())]


def _probe(check: str, **timing: int) -> dict[str, Any]:
    return exec_probe(["sh", f"{SCRIPTS_DIR}/probe.sh", check], **timing)


def _stateful_set(config: StackConfig, image: str, files: dict[str, str]) -> dict[str, Any]:
    names = Names.of(config)
    redis_config = config.kubernetes.redis
    sentinel = redis_config.mode == "sentinel"
    env = _script_env(config, sentinel)
    mounts = {"scripts": SCRIPTS_DIR, "secret": SECRET_DIR, "run": RUN_DIR}
    read_only = frozenset({"scripts", "secret"})
    # command None: the image's entrypoint (tini) stays PID 1 and forwards SIGTERM to redis-server.
    redis = container("redis", image, None, redis_config.resources, args=["sh", f"{SCRIPTS_DIR}/start-redis.sh"],
                      ports={"redis": REDIS_PORT}, mounts={**mounts, "data": DATA_DIR}, read_only_mounts=read_only,
                      readinessProbe=_probe("redis-ready", period_s=5, timeout_s=5, failures=2),
                      livenessProbe=_probe("redis-alive", period_s=10, timeout_s=5, failures=6))
    if sentinel:
        redis["lifecycle"] = {"preStop": {"exec": {"command": ["sh", f"{SCRIPTS_DIR}/pre-stop.sh"]}}}
    containers = [redis]
    if sentinel:
        containers.append(container(
            "sentinel", image, None, SENTINEL_RESOURCES, args=["sh", f"{SCRIPTS_DIR}/start-sentinel.sh"],
            ports={"sentinel": SENTINEL_PORT}, mounts=mounts, read_only_mounts=read_only,
            readinessProbe=_probe("sentinel", period_s=5, timeout_s=5, failures=2),
            livenessProbe=_probe("sentinel", period_s=10, timeout_s=5, failures=6)))
    if config.monitoring.enabled:
        containers.append(container(
            "exporter", image, None, EXPORTER_RESOURCES, args=["sh", f"{SCRIPTS_DIR}/start-exporter.sh"],
            ports={"metrics": EXPORTER_PORT},
            mounts={"scripts": SCRIPTS_DIR, "secret": SECRET_DIR, "exporter-run": EXPORTER_RUN_DIR},
            read_only_mounts=read_only,
            readinessProbe={"tcpSocket": {"port": "metrics"}, "periodSeconds": 10, "timeoutSeconds": 3,
                            "failureThreshold": 3}))
    for c in containers:
        c["env"] = env
    volumes = [config_map_volume("scripts", names("redis-scripts")),
               secret_volume("secret", names.secret_redis,
                             {SECRET_KEY_PASSWORD: SECRET_KEY_PASSWORD, SECRET_KEY_MONITOR: SECRET_KEY_MONITOR}),
               empty_dir("run", "16Mi")]
    if config.monitoring.enabled:
        volumes.append(empty_dir("exporter-run", "1Mi"))
    # Room for pre-stop.sh (at most about 25 s, usually 2) and then Redis's own shutdown (it waits for replicas).
    spec = pod_spec(containers, volumes, enableServiceLinks=False, terminationGracePeriodSeconds=45)
    if sentinel:
        spec["topologySpreadConstraints"] = topology_spread(config, COMPONENT)
        spec["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                "labelSelector": {"matchLabels": selector(config, COMPONENT)}}}]}}
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                  "resources": {"requests": {"storage": redis_config.storage_size}}}
    if config.kubernetes.storage_class:
        claim_spec["storageClassName"] = config.kubernetes.storage_class
    # A change of the scripts or templates restarts the pods (one at a time) to take effect.
    files_hash = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": metadata(config, names.redis, COMPONENT),
        "spec": {
            "serviceName": names.redis_headless if sentinel else names.redis,
            "replicas": len(pod_names(config)),
            # The bootstrap does not need pod 0 first (see the module docstring): all pods start at once.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector(config, COMPONENT)},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": labels(config, COMPONENT),
                             "annotations": {"prefect-stack/config-hash": files_hash}},
                "spec": spec,
            },
            "volumeClaimTemplates": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                      "metadata": {"name": "data", "labels": labels(config, COMPONENT)},
                                      "spec": claim_spec}],
        },
    }


def _disruption_budget(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(config, Names.of(config).redis, COMPONENT),
            # A drain takes one Redis at a time: the quorum of Sentinels and a replica to promote always remain.
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(config, COMPONENT)}}}


def _port(port: int, protocol: str = "TCP") -> dict[str, Any]:
    return {"port": port, "protocol": protocol}


def _network_policy(config: StackConfig) -> dict[str, Any]:
    sentinel = config.kubernetes.redis.mode == "sentinel"
    redis_ports = [_port(REDIS_PORT), *([_port(SENTINEL_PORT)] if sentinel else [])]
    own_pods = {"podSelector": {"matchLabels": selector(config, COMPONENT)}}
    # Prefect's processes, and with monitoring the project's exporter (stream lengths and consumer-group lag).
    users = ("api", "services", *(("exporter",) if config.monitoring.enabled else ()))
    clients = [{"podSelector": {"matchLabels": selector(config, name)}} for name in users]
    ingress: list[dict[str, Any]] = [
        # Prefect's processes, and the Redis pods themselves (replication, Sentinel gossip and bootstrap).
        {"from": [*clients, own_pods], "ports": redis_ports},
    ]
    if config.monitoring.enabled:
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": config.kubernetes.prometheus_namespace}}}],
            "ports": [_port(EXPORTER_PORT)]})
    egress: list[dict[str, Any]] = [
        # DNS wherever the cluster serves it (kube-dns, or a node-local cache on a link-local address).
        {"ports": [_port(53, "UDP"), _port(53, "TCP")]},
    ]
    if sentinel:
        egress.append({"to": [own_pods], "ports": redis_ports})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(config, Names.of(config).redis, COMPONENT),
            "spec": {"podSelector": {"matchLabels": selector(config, COMPONENT)},
                     "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress}}


def _pod_monitor(config: StackConfig) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": metadata(config, Names.of(config).redis, COMPONENT,
                                 extra_labels={"release": config.kubernetes.prometheus_release}),
            "spec": {"selector": {"matchLabels": selector(config, COMPONENT)},
                     "podMetricsEndpoints": [{"port": "metrics", "interval": "30s"}]}}

