"""The deployed Prefect processes write the stack's JSON lines (logs.format json, the default)."""

from __future__ import annotations

import json
import time
from typing import Any

from infra.logs import fields
from tests.integration.conftest import Stack

WAIT_S = 60


def _json_lines(stack: Stack, program: str) -> list[dict[str, Any]]:
    text = stack.layout.log_file(program).read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_an_api_replica_logs_json_lines_with_its_name(stack: Stack) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        with stack.client() as client:
            client.get("/health").raise_for_status()
        lines = _json_lines(stack, "api-1")
        if lines or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert lines, f"no JSON line in {stack.layout.log_file('api-1')}"
    for line in lines:
        assert line[fields.COMPONENT] == "api-1"
        assert line[fields.TIME].endswith("Z")
        assert {fields.LEVEL, fields.MESSAGE, fields.LOGGER} <= set(line)
