"""A hash of the Secrets each pod reads, in its pod template: a changed Secret rolls exactly the pods that read it.

Prefect reads its environment once at start, and a mounted Secret changes under a running process without it
noticing; a Deployment only rolls when its template changes. So deploy stamps every pod template with a digest of
the values of the Secrets (and keys) it reads among those deploy makes: a rotated secret changes the digest of the
pods that use it, and only theirs. Secrets others make (CloudNativePG's CA, cert-manager's certificate) are not
ours to hash: their owners roll what they serve.

The digest is a SHA-256 over SHA-256s of high-entropy values: it says that a value changed, never what it is.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

ANNOTATION = "prefect-stack.io/secrets-hash"
_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

# (Secret name, key); key None: every key of the Secret.
Reference = tuple[str, str | None]


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload object (a CronJob's through its job template), or None."""
    if obj.get("kind") in _WORKLOADS:
        template = obj.get("spec", {}).get("template")
    elif obj.get("kind") == "CronJob":
        template = obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")
    else:
        return None
    return template if isinstance(template, dict) else None


def _volume_references(volume: dict[str, Any]) -> Iterable[Reference]:
    sources = [volume["secret"]] if "secret" in volume else [
        s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
    for source in sources:
        name = source.get("secretName") or source.get("name")
        items = source.get("items")
        if items:
            yield from ((name, item["key"]) for item in items)
        else:
            yield name, None


def _container_references(container: dict[str, Any]) -> Iterable[Reference]:
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            yield ref["name"], ref["key"]
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            yield source["secretRef"]["name"], None


def secret_references(pod_spec: dict[str, Any]) -> set[Reference]:
    """Every Secret (and key) a pod reads: volumes, env, envFrom, of every container and init container."""
    refs: set[Reference] = set()
    for volume in pod_spec.get("volumes", []):
        refs.update(_volume_references(volume))
    for container in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
        refs.update(_container_references(container))
    return refs


def _values(secret: dict[str, Any]) -> dict[str, bytes]:
    values = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
    values.update({key: value.encode() for key, value in (secret.get("stringData") or {}).items()})
    return values


def digest(refs: set[Reference], secrets: Sequence[dict[str, Any]]) -> str | None:
    """The digest of the referenced values of ``secrets`` (deploy's own); None when the pod reads none of them."""
    ours = {str(s["metadata"]["name"]): _values(s) for s in secrets}
    parts: list[str] = []
    for name, key in sorted(refs, key=lambda r: (r[0], r[1] or "")):
        values = ours.get(name)
        if values is None:
            continue
        for k in sorted(values) if key is None else [key]:
            if k in values:
                parts.append(f"{name}/{k}={hashlib.sha256(values[k]).hexdigest()}")
    if not parts:
        return None
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def stamp(objects: Sequence[dict[str, Any]], secrets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``objects`` whose pod templates carry the digest of the Secrets they read (the rest unchanged)."""
    stamped: list[dict[str, Any]] = []
    for obj in objects:
        template = pod_template(obj)
        value = digest(secret_references(template.get("spec", {})), secrets) if template else None
        if value is None:
            stamped.append(obj)
            continue
        copied = copy.deepcopy(obj)
        copied_template = pod_template(copied) or {}
        copied_template.setdefault("metadata", {}).setdefault("annotations", {})[ANNOTATION] = value
        stamped.append(copied)
    return stamped
