"""Pushing the project's images to the registry a Kubernetes cluster pulls from (``kubernetes.image_registry``).

The images are the compose target's (``invoke images.build``): tags are content hashes, so the manifests pin
exactly what was built, and a push of an image the registry already has transfers nothing.
"""

from __future__ import annotations

from typing import Any

from infra.config import StackConfig
from infra.containers.images import image_refs
from infra.errors import UserError
from infra.progress import Progress


def push_images(config: StackConfig, client: Any, progress: Progress) -> list[str]:
    """Tag the built system and prefect images under the registry and push them; the references pushed."""
    registry = config.kubernetes.image_registry
    if not registry:
        raise UserError("kubernetes.image_registry is not set: there is no registry to push to",
                        fix="set kubernetes.image_registry (e.g. registry.example.com/platform), log in with "
                            "docker login, then run invoke images.push")
    import docker.errors

    refs = image_refs(config)
    pushed = []
    for local in (refs.system, refs.prefect):
        repository, tag = local.rsplit(":", 1)
        remote = f"{registry}/{repository}"
        try:
            client.images.get(local).tag(remote, tag)
        except docker.errors.ImageNotFound:
            raise UserError(f"image {local} is not built on this Docker engine",
                            fix="run invoke images.build first (the tag is a hash of the current code)") from None
        progress(f"pushing {remote}:{tag}")
        for line in client.images.push(remote, tag, stream=True, decode=True):
            if "error" in line:
                detail = line.get("errorDetail", {}).get("message") or line["error"]
                raise UserError(f"pushing {remote}:{tag} failed: {detail}",
                                fix="check docker login for the registry and that it accepts this repository")
        pushed.append(f"{remote}:{tag}")
    return pushed
