"""HAProxy's runtime API (the admin socket): drain a replica before restarting it, read server states."""

from __future__ import annotations

import socket
from pathlib import Path

from infra.render.haproxy import BACKEND


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
