"""One request followed end to end by its id: through the load balancer with a chosen X-Request-ID, found in
HAProxy's JSON line and in the line of the API replica that served it."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from infra.logs import fields
from tests.integration.conftest import Stack

# HAProxy writes a request's line when it ends, the replica just before: both are there within seconds.
LOG_WAIT_S = 30


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written as we read
    return lines


def _wait_for(what: str, find: Any) -> Any:
    deadline = time.monotonic() + LOG_WAIT_S
    while (found := find()) is None:
        assert time.monotonic() < deadline, f"{what} not found within {LOG_WAIT_S}s"
        time.sleep(0.2)
    return found


def _haproxy_line(stack: Stack, request_id: str) -> dict[str, Any]:
    path = stack.layout.log_file("haproxy")
    return _wait_for(f"HAProxy's line for {request_id}", lambda: next(
        (line for line in _json_lines(path) if line.get(fields.REQUEST_ID) == request_id), None))


def _replica_line(stack: Stack, replica: str, request_id: str) -> str:
    path = stack.layout.log_file(replica)
    return _wait_for(f"{replica}'s line for {request_id}", lambda: next(
        (line for line in path.read_text(errors="replace").splitlines() if request_id in line), None))


def test_a_chosen_request_id_is_in_haproxys_and_the_replicas_lines(stack: Stack) -> None:
    request_id = f"it-{uuid.uuid4().hex}"
    with stack.client() as client:
        response = client.post("/flows/filter", json={"limit": 1}, headers={fields.REQUEST_ID_HEADER: request_id})
    assert response.status_code == 200
    assert response.headers[fields.REQUEST_ID_HEADER] == request_id
    balancer = _haproxy_line(stack, request_id)
    assert (balancer[fields.COMPONENT], balancer["method"], balancer["path"], balancer["status"]) == (
        "haproxy", "POST", "/api/flows/filter", 200)
    replica = balancer["server"]
    assert replica.startswith("api-")
    line = _replica_line(stack, replica, request_id)
    if line.startswith("{"):  # the JSON line format of the Prefect processes
        assert json.loads(line)[fields.REQUEST_ID] == request_id
    assert "POST /api/flows/filter 200" in line


def test_a_malformed_request_id_is_replaced_before_any_log(stack: Stack) -> None:
    forged = "forged id"
    with stack.client() as client:
        response = client.post("/flows/filter", json={"limit": 1}, headers={fields.REQUEST_ID_HEADER: forged})
    replaced = response.headers[fields.REQUEST_ID_HEADER]
    assert uuid.UUID(replaced)
    balancer = _haproxy_line(stack, replaced)
    assert forged not in _replica_line(stack, balancer["server"], replaced)
