"""What the deployed stack looks like on the host (testinfra, local://): sockets, processes, file modes.

Also what must be absent: a secret readable by others, a secret in a log, a process running as root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.secrets import SECRET_NAMES, load_secrets
from tests.integration.conftest import REPLICAS, Stack

MONITORING = ["prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter", "prefect-exporter"]
COMPONENTS = ["postgres", "pgbouncer", "redis", "haproxy", *[f"api-{i}" for i in range(1, REPLICAS + 1)], *MONITORING,
              "worker-default-1"]
SECRET_BEARING_FILES = ["supervisord.conf", "pgbouncer-userlist.txt", "redis.conf", "haproxy.cfg",
                        "prometheus-scrape-password", "exporter-postgres-password", "exporter-redis-password",
                        "exporter-redis-passwords.json"]


def _component(stack: Stack, name: str) -> dict[str, object]:
    for component in stack.status()["components"]:  # type: ignore[union-attr]
        if component["name"] == name:  # type: ignore[index]
            return component  # type: ignore[no-any-return]
    raise AssertionError(f"{name} not in status")


@pytest.mark.parametrize("name", COMPONENTS)
def test_listening_on_loopback(stack: Stack, host: object, name: str) -> None:
    port = _component(stack, name)["port"]
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", COMPONENTS)
def test_not_listening_on_all_interfaces(stack: Stack, host: object, name: str) -> None:
    port = _component(stack, name)["port"]
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [*COMPONENTS, "services-1"])
def test_process_runs_unprivileged(stack: Stack, host: object, name: str) -> None:
    pid = _component(stack, name)["pid"]
    process = host.process.get(pid=pid)  # type: ignore[attr-defined]
    expected = stack.config.local.run_as if os.geteuid() == 0 else host.user().name  # type: ignore[attr-defined]
    assert process.user == expected
    assert process.user != "root"


def test_supervisord_is_running(stack: Stack, host: object) -> None:
    pid = int(stack.layout.supervisor_pidfile.read_text())
    assert "supervisord" in host.process.get(pid=pid).args  # type: ignore[attr-defined]


def test_secrets_directory_is_private(stack: Stack, host: object) -> None:
    assert host.file(str(stack.layout.secrets)).mode == 0o700  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(SECRET_NAMES))
def test_secret_file_is_0600(stack: Stack, host: object, name: str) -> None:
    assert host.file(str(stack.layout.secrets / name)).mode == 0o600  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", SECRET_BEARING_FILES)
def test_rendered_file_with_secrets_is_0600(stack: Stack, host: object, name: str) -> None:
    assert host.file(str(stack.layout.etc / name)).mode == 0o600  # type: ignore[attr-defined]


def test_postgres_data_directory_is_private(stack: Stack, host: object) -> None:
    assert host.file(str(stack.layout.postgres_data)).mode == 0o700  # type: ignore[attr-defined]


def test_supervisor_socket_is_private(stack: Stack, host: object) -> None:
    assert host.file(str(stack.layout.supervisor_socket)).mode & 0o077 == 0  # type: ignore[attr-defined]


def _secret_values(stack: Stack) -> dict[str, str]:
    secrets = load_secrets(stack.layout.secrets)
    values = {name: secrets.get(name) for name in SECRET_NAMES}
    # basic-auth secrets are stored as admin:<password>; the password alone must not leak either
    values.update({f"{n}-password": v.partition(":")[2] for n, v in values.items() if ":" in v})
    return values


def _files_below(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_no_file_readable_by_others_holds_a_secret(stack: Stack) -> None:
    values = _secret_values(stack).values()
    exposed = []
    for path in _files_below(stack.layout.root):
        if path.is_relative_to(stack.layout.postgres_data) or path.stat().st_mode & 0o004 == 0:
            continue
        text = path.read_bytes()
        if any(v.encode() in text for v in values):
            exposed.append(str(path))
    assert exposed == []


def test_no_log_contains_a_secret(stack: Stack) -> None:
    leaked = [
        f"{path.name}: {name}"
        for path in _files_below(stack.layout.logs)
        for name, value in _secret_values(stack).items()
        if value.encode() in path.read_bytes()
    ]
    assert leaked == []


@pytest.mark.parametrize("command", [("status",), ("status", "--json"), ("logs", "api-1")])
def test_command_output_never_shows_a_secret(stack: Stack, command: tuple[str, ...]) -> None:
    result = stack.invoke(*command)
    output = result.stdout + result.stderr
    assert [name for name, value in _secret_values(stack).items() if value in output] == []


def test_postgres_refuses_a_password_less_tcp_login(stack: Stack) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host="127.0.0.1", port=stack.config.postgres.port, user="postgres", dbname="postgres",
                        connect_timeout=5)


def test_redis_refuses_commands_without_the_password(stack: Stack) -> None:
    import redis

    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=stack.config.redis.port).ping()


def test_pg_trgm_extension_is_installed(stack: Stack) -> None:
    from infra.database.admin import admin_connect

    with admin_connect(stack.config, stack.layout, stack.config.postgres.database) as conn:
        row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
    assert row == (1,)
