"""Prefect: the API and background services Deployments, the migration Job, the backup CronJob. (Being written.)"""

from __future__ import annotations

from typing import Any

from infra.config import StackConfig
from infra.kubernetes.objects import Manifest


def prefect_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    return []
