"""The namespace, labelled for Pod Security "restricted": the admission controller rejects any pod that is not
non-root, without privilege escalation, with every capability dropped and the runtime's seccomp profile."""

from __future__ import annotations

from infra.config import StackConfig
from infra.kubernetes.objects import Manifest, labels

POD_SECURITY_LEVEL = "restricted"


def namespace_manifests(config: StackConfig) -> list[Manifest]:
    version = f"v{config.kubernetes.version}"
    modes = ("enforce", "audit", "warn")
    pod_security = {f"pod-security.kubernetes.io/{mode}": POD_SECURITY_LEVEL for mode in modes}
    pod_security.update({f"pod-security.kubernetes.io/{mode}-version": version for mode in modes})
    namespace = {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": config.kubernetes.namespace,
                     "labels": {**labels(config, "namespace"), **pod_security}},
    }
    return [Manifest(namespace, "namespace")]
