"""HAProxy's runtime API (the admin socket): drain a replica before restarting it, read server states, open and close
a planned maintenance window."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from infra import console
from infra.render.haproxy import BACKEND, MAINTENANCE_KEY


def command(sock_path: Path, line: str, timeout: float = 5.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def set_server_state(sock_path: Path, server: str, state: str) -> None:
    """state: ready, drain (no new requests, current ones finish) or maint."""
    command(sock_path, f"set server {BACKEND}/{server} state {state}")


def server_stats(sock_path: Path) -> dict[str, dict[str, str]]:
    """Per-server rows of ``show stat`` for the API backend, keyed by server name."""
    return parse_server_stats(command(sock_path, "show stat"))


def parse_server_stats(text: str) -> dict[str, dict[str, str]]:
    """The API backend's server rows of a ``show stat`` answer (CSV), keyed by server name; {} for no answer."""
    lines = [line for line in text.splitlines() if line]
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    rows = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", "FRONTEND"):
            rows[row["svname"]] = row
    return rows


def version(sock_path: Path) -> str:
    for line in command(sock_path, "show info").splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def set_all_servers(sock_path: Path, state: str) -> None:
    for server in server_stats(sock_path):
        set_server_state(sock_path, server, state)


def all_servers_up(sock_path: Path) -> bool:
    """Every API server is UP in HAProxy's own view (not 'UP 1/2', which is on its way down)."""
    stats = server_stats(sock_path)
    return bool(stats) and all(row.get("status") == "UP" for row in stats.values())


_STREAM_START = re.compile(r"^0x[0-9a-f]+: \[", re.MULTILINE)


def parse_requests_in_flight(text: str, server: str) -> int:
    """How many streams of a ``show sess all`` answer are HTTP requests on the API server ``server``: websockets
    (Prefect's event and log streams, answered 101 and tunnelled) are not requests and are left out."""
    count = 0
    for block in _STREAM_START.split(text)[1:]:
        on_server = f"backend={BACKEND} " in block and re.search(rf"\bserver={re.escape(server)} ", block)
        if on_server and "req.st=MSG_TUNNEL" not in block:
            count += 1
    return count


def requests_in_flight(sock_path: Path, server: str) -> int:
    """HTTP requests the API server is answering now (draining waits for these, not for websockets, which a
    client such as a worker keeps open for as long as it runs)."""
    return parse_requests_in_flight(command(sock_path, "show sess all"), server)


def close_connections(sock_path: Path, server: str) -> None:
    """Close every connection still open to the server (a drained server's websockets: Prefect's clients reconnect
    to another replica)."""
    command(sock_path, f"shutdown sessions server {BACKEND}/{server}")


def maintenance_commands(map_path: Path, on: bool) -> list[str]:
    """The runtime-API commands that open (``on``) or close the planned maintenance window."""
    if on:
        return [f"del map {map_path} {MAINTENANCE_KEY}", f"add map {map_path} {MAINTENANCE_KEY} on"]
    return [f"del map {map_path} {MAINTENANCE_KEY}"]


@contextmanager
def maintenance_window(send: Callable[[str], str], map_path: Path, why: str) -> Iterator[None]:
    """While inside, HAProxy answers every API request 503 with ``Prefect-Maintenance: true`` and ``Retry-After``:
    Prefect's clients wait and retry without limit (prefect/client/base.py), so a deploy that must take the API away
    costs them time, not errors. Says when it opened and how long it lasted; closed also when the work fails."""
    delete, add = maintenance_commands(map_path, on=True)
    send(delete)
    refused = send(add).strip()
    if refused:
        # An HAProxy started from a configuration without the map (the deploy that adds it reloads it later).
        console.step(f"no maintenance window ({why}): HAProxy refused it ({refused}); clients may see errors")
        yield
        return
    console.step(f"maintenance window open ({why}): clients are answered 503 Prefect-Maintenance and wait")
    started = time.monotonic()
    try:
        yield
    finally:
        for line in maintenance_commands(map_path, on=False):
            send(line)
        console.step(f"maintenance window closed after {time.monotonic() - started:.1f}s ({why})")
