"""Handing a running Redis new passwords without restarting it (ACL SETUSER), for the rotation of its credentials.

A restart would drop every client's connection and, on a standalone Redis, make the stack's messaging unavailable for
its duration; ``ACL SETUSER`` changes which passwords a user accepts at once and keeps every authenticated connection.
redis.conf is rewritten with the same passwords by the caller, so a later restart keeps them.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from infra.render.redis import MONITOR_USER
from infra.secrets import Secrets

Connect = Callable[[str], "redis.Redis"]


def apply_passwords(connect: Connect, secrets: Secrets) -> bool:
    """Make Redis accept exactly the passwords the secrets say (both values mid-rotation). ``connect(password)``
    opens a connection authenticated as the default user; it is tried with every value Redis may still accept (the
    retiring one before phase one, the new one after). False when none is accepted (the caller restarts Redis)."""
    for password in secrets.accepted("redis"):
        client = connect(password)
        try:
            client.ping()
        except redis.AuthenticationError:
            client.close()
            continue
        try:
            # resetpass first: the set becomes exactly the listed values. The connection stays authenticated.
            # Only the passwords change (SETUSER is incremental): the users' keys, channels and commands stay.
            client.acl_setuser("default", enabled=True, reset_passwords=True,
                               passwords=[f"+{p}" for p in secrets.accepted("redis")])
            client.acl_setuser(MONITOR_USER, enabled=True, reset_passwords=True,
                               passwords=[f"+{p}" for p in secrets.accepted("redis_monitor")])
        finally:
            client.close()
        return True
    return False
