"""``invoke logs --target compose``: the containers' logs (Docker's timestamps) through the shared reader, with a
stand-in for the Docker SDK's containers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from infra.compose import operate
from infra.config import load_config
from infra.errors import UserError
from infra.logs.read import LogQuery


class FakeContainer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.asked: dict[str, Any] = {}

    def logs(self, **kwargs: Any) -> bytes:
        self.asked = kwargs
        return self.text.encode()


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeContainer]:
    found = {
        "api-1": FakeContainer("2026-12-06T19:00:03.000000000Z 19:00:03.000 | INFO    | prefect.x - third\n"
                               "2026-12-06T19:00:01.000000000Z 19:00:01.000 | ERROR   | prefect.x - first\n"),
        "pgbouncer": FakeContainer("2026-12-06T19:00:02.5Z 2026-12-06 19:00:02.500 UTC [1] LOG stats: 1 xacts/s\n"),
    }
    monkeypatch.setattr(operate, "docker_client", lambda config: object())
    monkeypatch.setattr(operate, "containers", lambda client, project: found)
    return found


def _read(query: LogQuery, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert operate.logs(load_config(target="compose"), query) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_every_container_merged_in_time_order(running: dict[str, FakeContainer],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    records = _read(LogQuery(json=True), capsys)
    assert [(r["component"], r["message"]) for r in records] == [
        ("api-1", "first"), ("pgbouncer", "stats: 1 xacts/s"), ("api-1", "third")]


def test_one_container(running: dict[str, FakeContainer], capsys: pytest.CaptureFixture[str]) -> None:
    assert {r["component"] for r in _read(LogQuery(component="pgbouncer", json=True), capsys)} == {"pgbouncer"}


def test_asks_docker_for_timestamps_and_the_range(running: dict[str, FakeContainer],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    since = datetime(2026, 12, 6, 19, 0, tzinfo=UTC)
    _read(LogQuery(component="api-1", since=since, json=True), capsys)
    asked = running["api-1"].asked
    assert (asked["timestamps"], asked["since"], asked["tail"]) == (True, since, "all")


def test_tail_is_passed_to_docker(running: dict[str, FakeContainer], capsys: pytest.CaptureFixture[str]) -> None:
    _read(LogQuery(component="api-1", lines=7, json=True), capsys)
    assert running["api-1"].asked["tail"] == 7


def test_unknown_service_names_the_choices(running: dict[str, FakeContainer]) -> None:
    with pytest.raises(UserError) as raised:
        operate.logs(load_config(target="compose"), LogQuery(component="nope"))
    assert raised.value.fix is not None and "api-1" in raised.value.fix
