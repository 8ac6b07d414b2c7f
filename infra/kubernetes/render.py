"""The whole Kubernetes rendering for one configuration, and the kustomize tree it is written as.

``render(config, images)`` is pure: every object, the kustomize component it belongs to and its deploy phase.
``kustomize_tree`` lays the objects out as the repository's ``k8s/`` folder: ``base/`` (always applied),
``components/<name>/`` (optional features, kustomize Components) and an overlay that selects the components the
configuration turns on; ``kubectl kustomize`` of that overlay gives back exactly the rendered objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from infra.config import StackConfig
from infra.containers import images as project_images
from infra.kubernetes import database, monitoring, namespace, prefect, redis, secrets, workers
from infra.kubernetes.objects import COMPONENTS, Manifest
from infra.kubernetes.scheduling import apply_scheduling


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
    rendering.manifests += workers.manifests(config, images, prefect.prefect_version())
    rendering.manifests += monitoring.monitoring_manifests(config, images)
    apply_scheduling(config, rendering.manifests)
    rendering.external_secrets = secrets.external_secrets(config)
    return rendering


HEADER = ("# Rendered by prefect-stack from the configuration model (infra/config.py): edit the model and run\n"
          "# `invoke render --target kubernetes` or `invoke deploy --target kubernetes`, not this file.\n")
OVERLAY = "overlays/example"
KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
COMPONENT_API = "kustomize.config.k8s.io/v1alpha1"
COMPONENT_README = {
    "gateway-api": "The Gateway API's HTTPRoute for the API and UI, attached to your Gateway (kubernetes.gateway; "
                   "needs the Gateway API CRDs, v1.0 or later).",
    "monitoring": "ServiceMonitors, PodMonitors, the PrometheusRule and the dashboard ConfigMaps for "
                  "kube-prometheus-stack, the project's exporter, Jaeger and (kubernetes.loki) Loki with its Grafana "
                  "datasource (monitoring.enabled).",
    "network-policies": "Default-deny NetworkPolicies plus exactly the flows the stack needs "
                        "(kubernetes.network_policies; needs a CNI that enforces them).",
    "physical-backups": "The Barman Cloud plugin's ObjectStore and a ScheduledBackup: WAL archiving and base backups "
                        "to S3, point-in-time recovery (backups.physical.enabled).",
    "redis-sentinel": "Redis with replicas and a Sentinel beside each (kubernetes.redis.mode: sentinel).",
}


def _dump(obj: object) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=120)


def kustomize_tree(rendering: Rendering) -> dict[str, str]:
    """The kustomize layout of ``rendering``: relative path -> file content. Building the example overlay gives the
    rendered objects back (a test proves it)."""
    files: dict[str, str] = {}
    resources: dict[str, list[str]] = {}
    for manifest in rendering.manifests:
        path = f"{manifest.directory}/{manifest.file_name}"
        if path in files:
            raise ValueError(f"two rendered objects want {path}")
        files[path] = HEADER + _dump(manifest.obj)
        resources.setdefault(manifest.directory, []).append(manifest.file_name)
    files["base/kustomization.yaml"] = HEADER + _dump(
        {"apiVersion": KUSTOMIZE_API, "kind": "Kustomization", "resources": resources.get("base", [])})
    components = [c for c in COMPONENTS if f"components/{c}" in resources]
    for component in components:
        directory = f"components/{component}"
        files[f"{directory}/kustomization.yaml"] = HEADER + _dump(
            {"apiVersion": COMPONENT_API, "kind": "Component", "resources": resources[directory]})
        files[f"{directory}/README.md"] = f"# {component}\n\n{COMPONENT_README[component]}\n"
    overlay: dict[str, object] = {"apiVersion": KUSTOMIZE_API, "kind": "Kustomization", "resources": ["../../base"]}
    if components:
        overlay["components"] = [f"../../components/{c}" for c in components]
    files[f"{OVERLAY}/kustomization.yaml"] = HEADER + (
        "# The example environment: the base plus the components this configuration turns on. Copy it for each\n"
        "# environment; `kubectl kustomize` of it gives exactly what `invoke deploy --target kubernetes` applies.\n"
    ) + _dump(overlay)
    return files


def reference_rendering(config: StackConfig) -> Rendering:
    """What the repository's k8s/ folder holds: the objects for ``config`` with placeholder image references."""
    return render(config, PlaceholderImages())


def write_tree(rendering: Rendering, directory: Path) -> list[Path]:
    """Write the kustomize tree into ``directory``; rendered files that are no longer rendered are removed (the
    hand-written READMEs at the top are kept)."""
    wanted = {directory / relative: content for relative, content in kustomize_tree(rendering).items()}
    for sub in ("base", "components", "overlays"):
        for stale in (directory / sub).rglob("*") if (directory / sub).exists() else []:
            if stale.is_file() and stale not in wanted:
                stale.unlink()
    for path, content in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
    for sub in ("components", "overlays"):
        for empty in sorted((directory / sub).glob("*"), reverse=True) if (directory / sub).exists() else []:
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
    return sorted(wanted)
