"""What a deploy remembers between runs: the ports it holds, also across a failed deploy or an older state file."""

from __future__ import annotations

from typing import Any

import pytest

from infra.local.deploy import _claimed_ports


@pytest.mark.parametrize(
    ("previous", "expected"),
    [
        ({}, set()),
        ({"ports": {"redis.port": 16379}}, {16379}),  # state written before claims existed
        ({"claimed_ports": [4200, 16379]}, {4200, 16379}),  # a deploy that failed half-way
        ({"ports": {"redis.port": 16379}, "claimed_ports": [26379]}, {16379, 26379}),  # a port being changed
    ],
    ids=["fresh", "older-state-file", "failed-deploy", "port-change-in-progress"],
)
def test_claimed_ports(previous: dict[str, Any], expected: set[int]) -> None:
    assert _claimed_ports(previous) == expected
