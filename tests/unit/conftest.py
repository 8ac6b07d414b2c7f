"""Fixtures for the unit tests: a hermetic environment and a private state directory. Nothing here starts a
process or opens a port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infra.backup.storage import BackupStore
from infra.config import ENV_PREFIX, load_config
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


@pytest.fixture
def store() -> Iterator[BackupStore]:
    """A backup store on an in-memory S3 (moto): the default configuration's bucket, nothing in it."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="prefect-backups")
        yield BackupStore(load_config(), client)
