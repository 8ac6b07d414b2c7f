"""The planned maintenance window: HAProxy's rule answers every API request 503 with the headers Prefect's client
waits on, only while the runtime flag is set; the window helper sets it, clears it also when the work fails, and
says so when HAProxy cannot take it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.config import StackConfig, load_config
from infra.haproxy_runtime import command, maintenance_commands, maintenance_window
from infra.layout import StateLayout
from infra.local.plan import build_plan
from infra.render import Addresses
from infra.render.haproxy import MAINTENANCE_KEY, MAINTENANCE_MAP, haproxy_cfg
from infra.secrets import ensure_secrets


def test_the_window_is_opened_then_closed_and_closed_also_when_the_work_fails(tmp_path: Path) -> None:
    sent: list[str] = []

    def send(line: str) -> str:
        sent.append(line)
        return "\n"

    map_path = tmp_path / MAINTENANCE_MAP
    with pytest.raises(RuntimeError), maintenance_window(send, map_path, "the schema migrates"):
        assert sent == maintenance_commands(map_path, on=True)
        raise RuntimeError("the migration failed")
    assert sent[-1] == f"del map {map_path} {MAINTENANCE_KEY}"


def test_no_window_when_haproxy_refuses_it(tmp_path: Path) -> None:
    sent: list[str] = []

    def refusing(line: str) -> str:
        sent.append(line)
        return "Unknown map identifier. Please use #<id> or <file>.\n" if line.startswith("add") else "\n"

    with maintenance_window(refusing, tmp_path / MAINTENANCE_MAP, "PostgreSQL restarts"):
        pass
    assert [line.split()[0] for line in sent] == ["del", "add"]  # never a close of a window that did not open


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def haproxy(layout: StateLayout) -> Iterator[StackConfig]:
    """The rendered HAProxy, running for real in the foreground on free ports, with no replica behind it."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    config = load_config(local={"state_dir": str(layout.root)},
                         load_balancer={"port": _free_port(), "stats_port": _free_port()})
    secrets = ensure_secrets(layout.secrets)
    plan = build_plan(config, secrets)
    for rendered in plan.program("haproxy").files:
        rendered.path.parent.mkdir(parents=True, exist_ok=True)
        rendered.path.write_text(rendered.content)
    layout.haproxy_socket.parent.mkdir(parents=True, exist_ok=True)
    text = haproxy_cfg(config, secrets, layout, Addresses()).content.replace("    master-worker\n", "")
    (layout.etc / "haproxy-test.cfg").write_text(text)
    process = subprocess.Popen(["haproxy", "-db", "-f", str(layout.etc / "haproxy-test.cfg")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not layout.haproxy_socket.exists():
            assert process.poll() is None and time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.1)
        yield config
    finally:
        process.terminate()
        process.wait(10)


def test_haproxy_answers_maintenance_only_inside_the_window(haproxy: StackConfig) -> None:
    layout = StateLayout(haproxy.state_dir)
    url = f"http://127.0.0.1:{haproxy.load_balancer.port}/api/flows/filter"

    def send(line: str) -> str:
        return command(layout.haproxy_socket, line)

    outside = httpx.post(url, timeout=10)
    assert outside.status_code == 503 and "Prefect-Maintenance" not in outside.headers  # no replica: a plain 503
    with maintenance_window(send, layout.etc / MAINTENANCE_MAP, "a test"):
        inside = httpx.post(url, timeout=10)
        assert inside.status_code == 503
        assert inside.headers["Prefect-Maintenance"] == "true"
        assert inside.headers["Retry-After"] == str(haproxy.load_balancer.maintenance_retry_after_s)
        assert "Planned maintenance" in inside.json()["detail"]
    after = httpx.post(url, timeout=10)
    assert "Prefect-Maintenance" not in after.headers
