"""`invoke secrets.rotate` applied through a target (infra/rotation.py): one deploy, or two around the end of a
two-phase rotation; what each deploy sees on disk; a warning before a rotation clients notice; an unhealthy deploy
stops the rotation with the old value still accepted. A recording target stands in for deploy (no stack needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.layout import StateLayout
from infra.progress import Progress, QuietProgress
from infra.rotation import rotate
from infra.secrets import ensure_secrets
from infra.status import ComponentStatus
from infra.targets import DeployOutcome


class _RecordingTarget:
    """Records, at each deploy, which values of the rotated secret its server would accept."""

    def __init__(self, config: StackConfig, name: str, healthy: bool = True) -> None:
        self.config, self.name, self.healthy = config, name, healthy
        self.accepted: list[tuple[str, ...]] = []

    def deploy(self, progress: Progress) -> DeployOutcome:
        self.accepted.append(ensure_secrets(StateLayout(self.config.state_dir).secrets).accepted(self.name))
        status = ComponentStatus(self.name, self.name, self.healthy, "RUNNING", None, None)
        return DeployOutcome(statuses=[status], summary="deployed")


@pytest.fixture
def config(tmp_path: Path) -> StackConfig:
    config = load_config(local={"state_dir": str(tmp_path / "state")})
    ensure_secrets(StateLayout(config.state_dir).secrets)
    return config


def _rotate(target: _RecordingTarget, name: str) -> list[str]:
    steps: list[str] = []
    rotate(target, name, QuietProgress(), steps.append)  # type: ignore[arg-type]
    return steps


def test_a_redis_password_is_accepted_old_and_new_then_new_only(config: StackConfig) -> None:
    old = ensure_secrets(StateLayout(config.state_dir).secrets).get("redis")
    target = _RecordingTarget(config, "redis")
    _rotate(target, "redis")
    new = ensure_secrets(StateLayout(config.state_dir).secrets).get("redis")
    assert target.accepted == [(new, old), (new,)]


def test_a_database_password_is_one_deploy_with_a_warning_first(config: StackConfig) -> None:
    target = _RecordingTarget(config, "postgres_prefect")
    steps = _rotate(target, "postgres_prefect")
    assert len(target.accepted) == 1
    assert steps[0].startswith("warning: rotating postgres_prefect is not seamless")


def test_a_seamless_rotation_warns_of_nothing(config: StackConfig) -> None:
    assert not [s for s in _rotate(_RecordingTarget(config, "redis"), "redis") if s.startswith("warning")]


def test_an_unhealthy_first_phase_stops_with_the_old_value_still_accepted(config: StackConfig) -> None:
    directory = StateLayout(config.state_dir).secrets
    old = ensure_secrets(directory).get("redis")
    with pytest.raises(UserError, match="first phase") as caught:
        _rotate(_RecordingTarget(config, "redis", healthy=False), "redis")
    assert "invoke secrets.rotate redis again" in caught.value.fix
    assert old in ensure_secrets(directory).accepted("redis")


def test_nothing_deployed_is_refused(tmp_path: Path) -> None:
    config = load_config(local={"state_dir": str(tmp_path / "empty")})
    with pytest.raises(UserError, match="nothing is deployed"):
        _rotate(_RecordingTarget(config, "redis"), "redis")
