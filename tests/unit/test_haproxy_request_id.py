"""The rendered haproxy.cfg run by the real HAProxy in front of a replica stand-in that echoes the headers it gets:
the request id reaches the replica and HAProxy's log line, which is one JSON object in the common line format.

Starts HAProxy (and the stand-in) on free loopback ports; skipped where HAProxy is not installed."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.config import load_config
from infra.layout import StateLayout
from infra.logs import fields
from infra.render import Addresses
from infra.render.haproxy import haproxy_cfg, maintenance_map
from infra.secrets import ensure_secrets
from tests.conftest import free_ports

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")

ECHOED = fields.REQUEST_ID_HEADER.lower()
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class EchoHeaders(BaseHTTPRequestHandler):
    """Answers every GET with the request's headers as JSON (names in lower case, as HAProxy sends them); /fail
    with a 500."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({name.lower(): value for name, value in self.headers.items()}).encode()
        self.send_response(500 if self.path == "/fail" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # HAProxy's health checks close their connections without reading the answer


@pytest.fixture(scope="module")
def replica() -> Iterator[int]:
    server = QuietServer(("127.0.0.1", 0), EchoHeaders)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class Balancer:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def get(self, path: str, headers: Any = None) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers, timeout=10)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def line_for(self, path: str, timeout_s: float = 10) -> dict[str, Any]:
        """The JSON line of the request to ``path`` (HAProxy writes it as the request ends, maybe just after)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines():
                if line.startswith("{") and json.loads(line).get("path") == path:
                    return dict(json.loads(line))
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line for {path} in:\n" + "\n".join(self.lines()))
            time.sleep(0.05)


@pytest.fixture(scope="module")
def start_balancer(tmp_path_factory: pytest.TempPathFactory, replica: int) -> Iterator[Callable[..., Balancer]]:
    """Starts HAProxy with a configuration rendered with these ``logs`` settings; stopped after the module."""
    tmp_path = tmp_path_factory.mktemp("haproxy")
    processes: list[subprocess.Popen[bytes]] = []

    def start(**logs: Any) -> Balancer:
        lb_port, stats_port = free_ports(2)
        layout = StateLayout(tmp_path / f"state{len(processes)}")
        config = load_config(local={"state_dir": str(layout.root)}, api={"replicas": 1, "base_port": replica},
                             load_balancer={"port": lb_port, "stats_port": stats_port},
                             monitoring={"enabled": False}, logs=logs)
        rendered = haproxy_cfg(config, ensure_secrets(layout.secrets), layout, Addresses())
        layout.run.mkdir(parents=True, exist_ok=True)
        for file in (rendered, maintenance_map(layout)):  # the configuration and the map it reads
            file.path.parent.mkdir(parents=True, exist_ok=True)
            file.path.write_text(file.content)
        log = tmp_path / f"haproxy{len(processes)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(["haproxy", "-db", "-f", str(rendered.path)], stdout=out,
                                       stderr=subprocess.STDOUT)
        processes.append(process)
        balancer = Balancer(f"http://127.0.0.1:{lb_port}", log)
        deadline = time.monotonic() + 20
        while True:  # up, and the replica checked up (rise 2): a 200 through the load balancer
            try:
                if balancer.get("/api/ready").status_code == 200:
                    return balancer
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("HAProxy did not serve:\n" + log.read_text())
            time.sleep(0.1)

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def balancer(start_balancer: Callable[..., Balancer]) -> Balancer:
    """The default settings' load balancer, shared: each test asks for a path of its own."""
    return start_balancer()


def test_a_chosen_id_reaches_the_replica_and_the_log(balancer: Balancer) -> None:
    response = balancer.get("/api/chosen", headers={fields.REQUEST_ID_HEADER: "chosen-id.1_A"})
    assert response.json()[ECHOED] == "chosen-id.1_A"
    assert balancer.line_for("/api/chosen")[fields.REQUEST_ID] == "chosen-id.1_A"


def test_without_an_id_a_new_one_is_passed_and_logged(balancer: Balancer) -> None:
    sent = balancer.get("/api/none").json()[ECHOED]
    assert uuid.UUID(sent)
    assert balancer.line_for("/api/none")[fields.REQUEST_ID] == sent


@pytest.mark.parametrize("header", ["bad id", "a,b", "x" * 129, '"}{"level":"ERROR'])
def test_a_malformed_id_is_replaced(balancer: Balancer, header: str) -> None:
    path = f"/api/malformed/{uuid.uuid4()}"
    sent = balancer.get(path, headers={fields.REQUEST_ID_HEADER: header}).json()[ECHOED]
    assert uuid.UUID(sent)
    assert balancer.line_for(path)[fields.REQUEST_ID] == sent


def test_two_ids_are_replaced_by_one(balancer: Balancer) -> None:
    headers = [(fields.REQUEST_ID_HEADER, "a"), (fields.REQUEST_ID_HEADER, "b")]
    assert uuid.UUID(balancer.get("/api/two", headers=headers).json()[ECHOED])


def test_the_line_is_in_the_common_format(balancer: Balancer) -> None:
    balancer.get("/api/flows/?limit=1", headers={fields.REQUEST_ID_HEADER: "abc"})
    line = balancer.line_for("/api/flows/")
    assert RFC3339_MS.fullmatch(line[fields.TIME])
    assert (line[fields.LEVEL], line[fields.COMPONENT], line[fields.MESSAGE]) == ("INFO", "haproxy",
                                                                                  "GET /api/flows/ 200")
    assert (line["method"], line["status"], line["server"], line["termination_state"]) == ("GET", 200, "api-1",
                                                                                           "----")
    assert all(isinstance(line[key], int) for key in ("TR", "Tw", "Tc", "Tr", "duration_ms", "bytes_read"))


def test_every_line_is_json(balancer: Balancer) -> None:
    # A path a client chose with a character JSON must escape, and a request HAProxy cannot parse (its fields "-").
    balancer.get("/api/we%22ird\\path")
    balancer.line_for("/api/we%22ird\\path")
    with socket.create_connection(("127.0.0.1", int(balancer.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(b'not "http"\r\n\r\n')
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    deadline = time.monotonic() + 10
    while not any('"status":400' in line for line in balancer.lines()):  # the only unparsable request here
        assert time.monotonic() < deadline, balancer.lines()
        time.sleep(0.05)
    lines = [json.loads(line) for line in balancer.lines() if not line.startswith("[NOTICE]")]
    assert [line[fields.LEVEL] for line in lines if line["status"] == 400] == ["INFO"]


def test_a_server_error_is_logged_as_error(balancer: Balancer) -> None:
    assert balancer.get("/fail").status_code == 500
    assert balancer.line_for("/fail")[fields.LEVEL] == "ERROR"


def test_warning_logs_only_failed_requests(start_balancer: Callable[..., Balancer]) -> None:
    balancer = start_balancer(levels={"haproxy": "WARNING"})
    balancer.get("/api/flows/")
    balancer.get("/fail")
    balancer.line_for("/fail")
    assert [json.loads(line)["path"] for line in balancer.lines() if line.startswith("{")] == ["/fail"]


def test_text_keeps_haproxys_own_lines(start_balancer: Callable[..., Balancer]) -> None:
    balancer = start_balancer(format="text")
    assert balancer.get("/api/flows/", headers={fields.REQUEST_ID_HEADER: "abc"}).json()[ECHOED] == "abc"
    deadline = time.monotonic() + 10
    while not any('"GET /api/flows/ HTTP/1.1"' in line for line in balancer.lines()):
        assert time.monotonic() < deadline, balancer.lines()
        time.sleep(0.05)
    assert not any(line.startswith("{") for line in balancer.lines())


def test_a_redispatched_request_still_logs_a_json_line() -> None:
    """HAProxy writes the retry count as "+1" when the request went to another replica (a replica died under it):
    the line must still be JSON, or `invoke logs` and a log shipper drop exactly the lines a failover leaves."""
    from infra.render.haproxy import _JSON_LINE

    def emitted(value: str) -> str:
        # What HAProxy writes for a field: the retry count as after a redispatch; any other field a plain value,
        # quoted where the format quotes it.
        if value.startswith('"'):
            return '"+1"' if "%rc" in value else '"x"'
        return "+1" if value == "%rc" else "0"

    line = "{" + ",".join(f'"{key}":{emitted(value)}' for key, value in _JSON_LINE) + "}"
    assert json.loads(line)["retries"] == "+1"
