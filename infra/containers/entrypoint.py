"""Start a Prefect process with its environment read from a mounted secret file.

Prefect reads its database URL, Redis password and API credentials from environment variables. Put in the compose
file, they would show in ``docker inspect``; here they live in a compose secret (JSON) and only this process's
environment holds them. Usage::

    python -m infra.containers.entrypoint ENV_FILE [--follow-redis] -- COMMAND [ARGS...]

``--follow-redis`` is for the background services: after Redis restarts (a crash, a new container) they keep
running but silently stop consuming its streams (a known Prefect failure; the local target restarts them with
Redis). Here the entrypoint watches Redis's run id and, when it changes, stops the services and exits non-zero,
so Docker's restart policy starts them afresh against the new Redis. On Kubernetes, with a ``redis+sentinel://``
URL, the watched server is the current primary: after a Sentinel failover the services restart against the
promoted replica (the kubelet restarts the container).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

WATCH_INTERVAL_S = 2.0
STOP_TIMEOUT_S = 20
EXIT_REDIS_RESTARTED = 75  # EX_TEMPFAIL: start again


def _redis_run_id(env: dict[str, str]) -> str | None:
    """Redis's run id (new at every server start), or None while it cannot be reached.

    Given ``PREFECT_REDIS_MESSAGING_URL`` (the Kubernetes target), it is the run id of the server that URL leads
    to: with ``redis+sentinel://``, the current primary, so a failover (a different server) counts as a restart.
    """
    import redis

    url = env.get("PREFECT_REDIS_MESSAGING_URL")
    try:
        if url:
            # prefect-redis ships no py.typed marker.
            from prefect_redis.connection import (  # type: ignore[import-untyped]
                close_redis_client,
                redis_from_url,
            )

            client = redis_from_url(url, socket_timeout=3, socket_connect_timeout=3)
            try:
                return str(client.info("server")["run_id"])
            finally:
                close_redis_client(client)
        client = redis.Redis(host=env["PREFECT_REDIS_MESSAGING_HOST"], port=int(env["PREFECT_REDIS_MESSAGING_PORT"]),
                             password=env.get("PREFECT_REDIS_MESSAGING_PASSWORD"), socket_timeout=3,
                             socket_connect_timeout=3)
        with client:
            return str(client.info("server")["run_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def follow_redis(command: list[str], env: dict[str, str]) -> int:
    """Run ``command``; stop it and return EXIT_REDIS_RESTARTED once Redis comes back as a new server."""
    first = _redis_run_id(env)
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            return child.wait(WATCH_INTERVAL_S)
        except subprocess.TimeoutExpired:
            pass
        current = _redis_run_id(env)
        if first is None:
            first = current
        elif current is not None and current != first:
            sys.stderr.write("entrypoint: Redis restarted (new run id): restarting the background services with it\n")
            _stop(child)
            return EXIT_REDIS_RESTARTED


def main(argv: list[str]) -> int:
    follow = len(argv) > 1 and argv[1] == "--follow-redis"
    args = [argv[0], *argv[2:]] if follow else argv
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: python -m infra.containers.entrypoint ENV_FILE [--follow-redis] -- "
                         "COMMAND [ARGS...]\n")
        return 2
    env_file, command = Path(args[0]), args[2:]
    try:
        extra = json.loads(env_file.read_text())
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"cannot read the environment file {env_file}: {exc}; redeploy to render it again\n")
        return 1
    env = {**os.environ, **{str(k): str(v) for k, v in extra.items()}}
    if follow:
        started = time.monotonic()
        code = follow_redis(command, env)
        sys.stderr.write(f"entrypoint: {command[0]} exited {code} after {time.monotonic() - started:.0f}s\n")
        return code
    os.execvpe(command[0], command, env)  # noqa: S606


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
