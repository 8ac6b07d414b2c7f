"""Redis: a StatefulSet with Sentinel beside every Redis, a standalone Redis, or an external one. (Being written.)"""

from __future__ import annotations

from typing import Any

from infra.config import StackConfig
from infra.kubernetes.objects import Manifest
from infra.secrets import Secrets


def redis_environment(config: StackConfig, secrets: Secrets) -> dict[str, str]:
    """Prefect's Redis settings (messaging, Docket...) for this mode, with the password in the URLs."""
    raise NotImplementedError


def redis_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    return []
