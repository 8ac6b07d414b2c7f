"""The whole Kubernetes rendering for one configuration, and the kustomize tree it is written as.

``render(config, images)`` is pure: every object, the kustomize component it belongs to and its deploy phase.
``kustomize_tree`` lays the objects out as the repository's ``k8s/`` folder: ``base/`` (always applied),
``components/<name>/`` (optional features, kustomize Components) and an overlay that selects the components the
configuration turns on; ``kubectl kustomize`` of that overlay gives back exactly the rendered objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from infra.compose import images as project_images
from infra.config import StackConfig
from infra.kubernetes import database, monitoring, namespace, prefect, redis
from infra.kubernetes.objects import Manifest


class Images(Protocol):
    """The project's image references (system: Debian packages; prefect: Prefect and this project's code)."""

    @property
    def system(self) -> str: ...

    @property
    def prefect(self) -> str: ...


@dataclass(frozen=True)
class KubernetesImages:
    system: str
    prefect: str


def kubernetes_images(config: StackConfig) -> KubernetesImages:
    """The images `invoke images.build` makes for this configuration, as the cluster pulls them."""
    refs = project_images.image_refs(config)
    registry = config.kubernetes.image_registry
    if registry is None:
        return KubernetesImages(system=refs.system, prefect=refs.prefect)
    return KubernetesImages(system=f"{registry}/{refs.system}", prefect=f"{registry}/{refs.prefect}")


@dataclass(frozen=True)
class PlaceholderImages:
    """References of a rendering made without building (the repository's k8s/): the example overlay's kustomize
    ``images:`` entry is where an operator sets the real ones."""

    system: str = "prefect-stack/system:content-hash"
    prefect: str = "prefect-stack/prefect:content-hash"


@dataclass
class Rendering:
    config: StackConfig
    manifests: list[Manifest] = field(default_factory=list)
    # Secrets the manifests reference but no file holds: `invoke deploy` creates them (infra/kubernetes/secrets.py).
    external_secrets: dict[str, str] = field(default_factory=dict)

    def objects(self) -> list[dict]:  # type: ignore[type-arg]
        return [m.obj for m in self.manifests]


def render(config: StackConfig, images: Images) -> Rendering:
    """Every object of the stack for ``config`` (target kubernetes), in deploy order within each phase."""
    rendering = Rendering(config)
    rendering.manifests += namespace.namespace_manifests(config)
    rendering.manifests += database.database_manifests(config, images)
    rendering.manifests += redis.redis_manifests(config, images)
    rendering.manifests += prefect.prefect_manifests(config, images)
    rendering.manifests += monitoring.monitoring_manifests(config, images)
    rendering.external_secrets.update(monitoring.external_secrets(config))
    return rendering
