"""Redis: a StatefulSet with Sentinel beside every Redis, a standalone Redis, or an external one. (Being written.)"""

from __future__ import annotations

from typing import Any

from infra.config import StackConfig
from infra.kubernetes.objects import Manifest
from infra.secrets import Secrets


def redis_environment(config: StackConfig, secrets: Secrets) -> dict[str, str]:
    """Prefect's Redis settings (messaging, Docket...) for this mode, with the password in the URLs."""
    from infra.kubernetes.objects import Names

    host = Names.of(config).redis
    password = secrets.get("redis")
    return {"PREFECT_REDIS_MESSAGING_HOST": host, "PREFECT_REDIS_MESSAGING_PORT": "6379",
            "PREFECT_REDIS_MESSAGING_DB": "0", "PREFECT_REDIS_MESSAGING_PASSWORD": password,
            "PREFECT_SERVER_DOCKET_URL": f"redis://:{password}@{host}:6379/1"}


def redis_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    return []
