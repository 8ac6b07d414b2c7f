"""Fixtures for the unit tests: a hermetic environment and a private state directory. Nothing here starts a
process or opens a port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.config import ENV_PREFIX
from infra.layout import StateLayout


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's PREFECT_STACK_* variables (and config file) must not leak into any test."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def layout(state_dir: Path) -> StateLayout:
    return StateLayout(state_dir)
