"""Where the stack's pods run and how they pull their images (kubernetes.scheduling): node selector, tolerations and
priority class on every pod of the stack, CloudNativePG's instances and poolers included; image pull secrets on the
pods of the project's images. Applied once, to the whole rendering, so no part can forget them."""

from __future__ import annotations

from typing import Any

from infra.config import StackConfig
from infra.kubernetes.objects import Manifest

# Kinds whose pod template is at spec.template (a Pooler's too), and the CronJob's one level down.
TEMPLATE_KINDS = ("Deployment", "StatefulSet", "Job", "Pooler")


def template_pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind, spec = obj.get("kind"), obj.get("spec", {})
    if kind == "CronJob":
        found: dict[str, Any] = spec["jobTemplate"]["spec"]["template"]["spec"]
        return found
    if kind in TEMPLATE_KINDS and "template" in spec:
        found = spec["template"].setdefault("spec", {})
        return found
    return None


def apply_scheduling(config: StackConfig, manifests: list[Manifest]) -> None:
    """Set the model's scheduling on every pod template of ``manifests`` and on the CloudNativePG Cluster."""
    scheduling = config.kubernetes.scheduling
    tolerations = [t.as_kubernetes() for t in scheduling.tolerations]
    for manifest in manifests:
        obj = manifest.obj
        if obj.get("kind") == "Cluster":
            # CloudNativePG takes them in the Cluster's own terms and puts them on every instance and Job.
            affinity = obj["spec"].setdefault("affinity", {})
            if scheduling.node_selector:
                affinity["nodeSelector"] = dict(scheduling.node_selector)
            if tolerations:
                affinity["tolerations"] = [dict(t) for t in tolerations]
            if scheduling.priority_class:
                obj["spec"]["priorityClassName"] = scheduling.priority_class
            continue
        pod = template_pod_spec(obj)
        if pod is None:
            continue
        if scheduling.node_selector:
            pod["nodeSelector"] = dict(scheduling.node_selector)
        if tolerations:
            pod["tolerations"] = [dict(t) for t in tolerations]
        if scheduling.priority_class:
            pod["priorityClassName"] = scheduling.priority_class
        # The operator's PgBouncer image is its own (public); ours come from kubernetes.image_registry.
        if scheduling.image_pull_secrets and obj.get("kind") != "Pooler":
            pod["imagePullSecrets"] = [{"name": name} for name in scheduling.image_pull_secrets]
