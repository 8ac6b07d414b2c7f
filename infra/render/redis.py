"""redis.conf: password-protected, persistent, never evicting Prefect's streams."""

from __future__ import annotations

from collections.abc import Sequence

from infra.config import StackConfig
from infra.layout import StateLayout
from infra.render import RenderedFile
from infra.secrets import Secrets

# Prefect's messaging streams live in db 0 (prefect-redis); Docket's task queue in db 1.
MESSAGING_DB = 0
DOCKET_DB = 1
MONITOR_USER = "monitor"
# What redis_exporter and the Prefect exporter run; nothing that writes or reads values.
MONITOR_COMMANDS = (
    "-@all +ping +info +config|get +client|list +client|info +client|setname +slowlog|get +slowlog|len "
    "+latency|latest +select +dbsize +type +exists +scan +xinfo +xlen +cluster|info +memory|usage +auth +hello "
    "+role +echo"
)


def default_user_line(passwords: Sequence[str]) -> str:
    """The line that protects Redis: ``requirepass`` for one password; mid-rotation, the default user with both
    (what requirepass means, as an ACL rule: every key, channel and command)."""
    if len(passwords) == 1:
        return f"requirepass {passwords[0]}"
    return f"user default on {' '.join(f'>{p}' for p in passwords)} ~* &* +@all"


# logs.levels.redis on Redis's own scale: notice is its default, and it has nothing above warning.
LOGLEVEL = {"DEBUG": "debug", "INFO": "notice", "WARNING": "warning", "ERROR": "warning", "CRITICAL": "warning"}


def monitor_user_rules(passwords: Sequence[str]) -> str:
    """The exporters' user as ACL SETUSER rules: reads INFO, CONFIG maxmemory, client and stream state."""
    return f"on {' '.join(f'>{p}' for p in passwords)} ~* resetchannels {MONITOR_COMMANDS}"


def redis_settings(config: StackConfig, *, password: str | Sequence[str], monitor_password: str | Sequence[str],
                   data_dir: str, bind: str, port: int) -> str:
    """The text of redis.conf. The Kubernetes target renders it with placeholders for the passwords (its pods
    fill them in at start from the mounted Secret), so every target runs the same settings. Mid-rotation a password
    is a sequence: the new value and the old one, both accepted until the clients have moved."""
    passwords = (password,) if isinstance(password, str) else tuple(password)
    monitor_passwords = (monitor_password,) if isinstance(monitor_password, str) else tuple(monitor_password)
    return f"""\
# Rendered by prefect-stack from the configuration model; edit the model, not this file.
bind {bind}
port {port}
protected-mode yes
{default_user_line(passwords)}
# The exporters' user: reads INFO, CONFIG maxmemory, client and stream state; can write nothing.
user {MONITOR_USER} {monitor_user_rules(monitor_passwords)}
daemonize no
logfile ""
loglevel {LOGLEVEL[config.logs.levels.redis]}
dir {data_dir}
# Streams and leases must survive a restart: append-only file, fsync every second.
appendonly yes
appendfsync everysec
save 300 10
# At most half the container's memory limit (the model checks it on compose and Kubernetes): the rest is room
# for the fork of a rewrite or a save and for the replication buffers, which maxmemory does not count.
maxmemory {config.redis.maxmemory}
# Evicting keys would silently drop Prefect events and leases; fail writes loudly instead.
maxmemory-policy noeviction
"""


def redis_conf(config: StackConfig, secrets: Secrets, layout: StateLayout, bind: str = "127.0.0.1") -> RenderedFile:
    text = redis_settings(config, password=secrets.accepted("redis"),
                          monitor_password=secrets.accepted("redis_monitor"),
                          data_dir=str(layout.redis_data), bind=bind, port=config.redis.port)
    credentials = (*secrets.accepted("redis"), *secrets.accepted("redis_monitor"))
    return RenderedFile(layout.etc / "redis.conf", text, secret=True, credentials=credentials)
