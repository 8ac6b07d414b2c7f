"""Shared test helpers: free ports and the environment that points the stack at a private state directory."""

from __future__ import annotations

import socket

import httpx

# Never used by tests, so a deployment running on the defaults is never disturbed.
DEFAULT_PORTS = {4200, 8404, 15432, 16432, 16379, 19000, 14200, 14201, 14202, 19090, 19093, 19100, 19121, 19187, 19200}


def free_ports(count: int, consecutive: int = 1) -> list[int]:
    """Distinct free loopback ports; the last ``consecutive`` of them are a contiguous run (API replicas)."""
    ports: list[int] = []
    while len(ports) < count - consecutive:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in ports and port not in DEFAULT_PORTS:
            ports.append(port)
    for base in range(21000, 30000, 7):
        run = list(range(base, base + consecutive))
        if any(p in ports for p in run):
            continue
        ok = True
        for p in run:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return ports + run
    raise RuntimeError("no free run of ports")


# What Prefect's own client retries (prefect/client/base.py): a connection that broke after the request went out,
# e.g. a replica killed between its response headers and body, which the load balancer can no longer retry. With an
# idempotency key the retry returns the run the first attempt created, never a second one.
PREFECT_CLIENT_RETRIES = (httpx.RemoteProtocolError, httpx.ReadError)


async def post_like_prefect_client(client: httpx.AsyncClient, path: str, body: dict[str, object],
                                   retried: list[str], attempts: int = 3) -> httpx.Response:
    """POST as Prefect's client does: the same request again on a broken connection (recorded in ``retried``)."""
    for attempt in range(1, attempts + 1):
        try:
            return await client.post(path, json=body)
        except PREFECT_CLIENT_RETRIES as exc:
            retried.append(f"{type(exc).__name__}: {exc}")
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")
