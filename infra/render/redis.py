"""redis.conf: password-protected, persistent, never evicting Prefect's streams."""

from __future__ import annotations

from infra.config import StackConfig
from infra.layout import StateLayout
from infra.render import RenderedFile
from infra.secrets import Secrets

# Prefect's messaging streams live in db 0 (prefect-redis); Docket's task queue in db 1.
MESSAGING_DB = 0
DOCKET_DB = 1


def redis_conf(config: StackConfig, secrets: Secrets, layout: StateLayout, bind: str = "127.0.0.1") -> RenderedFile:
    text = f"""\
# Rendered by prefect-stack from the configuration model; edit the model, not this file.
bind {bind}
port {config.redis.port}
protected-mode yes
requirepass {secrets.get("redis")}
daemonize no
logfile ""
dir {layout.redis_data}
# Streams and leases must survive a restart: append-only file, fsync every second.
appendonly yes
appendfsync everysec
save 300 10
maxmemory {config.redis.maxmemory}
# Evicting keys would silently drop Prefect events and leases; fail writes loudly instead.
maxmemory-policy noeviction
"""
    return RenderedFile(layout.etc / "redis.conf", text, secret=True)
