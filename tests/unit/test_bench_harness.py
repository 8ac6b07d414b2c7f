"""What the benchmarks share: clean-up, log tails, credentials, ports, the temporary directory. Nothing deploys."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.bench import harness
from infra.bench.harness import (
    DEFAULT_PORTS,
    StackPorts,
    basic_auth,
    cleaned_up,
    format_ms,
    free_port,
    log_tail,
    stack_config,
    temporary_workdir,
)

PORTS = StackPorts(load_balancer=21001, stats=21002, postgres=21003, pgbouncer=21004, redis=21005, s3=21006,
                   api_base=21010, monitoring=(21020, 21021, 21022, 21023, 21024, 21025, 21026))


def test_cleaned_up_runs_its_action_after_success() -> None:
    done: list[str] = []
    with cleaned_up("record", lambda: done.append("cleaned")):
        done.append("body")
    assert done == ["body", "cleaned"]


def test_cleaned_up_raises_its_own_failure_after_success() -> None:
    def fail() -> None:
        raise RuntimeError("cleanup broke")

    with pytest.raises(RuntimeError, match="cleanup broke"), cleaned_up("fail", fail):
        pass


def test_cleaned_up_keeps_the_block_error() -> None:
    def fail() -> None:
        raise RuntimeError("cleanup broke")

    with pytest.raises(ValueError, match="the block's"), cleaned_up("fail", fail):
        raise ValueError("the block's")


@pytest.mark.parametrize(("text", "expected"), [
    ("one\ntwo\nthree\n", "two\n    three"),
    ("", "(empty log)"),
])
def test_log_tail(tmp_path: Path, text: str, expected: str) -> None:
    log = tmp_path / "server.log"
    log.write_text(text)
    assert log_tail(log, lines=2) == expected


def test_log_tail_of_a_missing_log(tmp_path: Path) -> None:
    assert log_tail(tmp_path / "absent.log") == "(no log)"


@pytest.mark.parametrize(("text", "expected"), [
    ("admin:s3cr:et", ("admin", "s3cr:et")),
    ("admin", ("admin", "")),
])
def test_basic_auth(text: str, expected: tuple[str, str]) -> None:
    assert basic_auth(text) == expected


@pytest.mark.parametrize(("value", "expected"), [(12.345, "12.3 ms"), (None, "-")])
def test_format_ms(value: float | None, expected: str) -> None:
    assert format_ms(value) == expected


def test_free_port_avoids_taken_and_default_ports() -> None:
    taken: set[int] = set()
    first = free_port(taken, run=3)
    assert taken == {first, first + 1, first + 2}
    assert not taken & DEFAULT_PORTS
    assert free_port(taken) not in {first, first + 1, first + 2}


def test_stack_config_uses_the_given_ports(tmp_path: Path) -> None:
    config = stack_config(tmp_path / "stack", PORTS, replicas=3)
    assert (config.load_balancer.port, config.postgres.port, config.api.base_port, config.api.replicas) == (
        21001, 21003, 21010, 3)
    assert not config.monitoring.enabled


def test_temporary_workdir_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "TEMP_ROOT", tmp_path)
    with temporary_workdir("bench-") as workdir:
        (workdir / "file").write_text("x")
        assert workdir.parent == tmp_path
        assert workdir.stat().st_mode & 0o777 == 0o755
    assert not workdir.exists()
