"""Offline checks of rendered Kubernetes objects, for tests: strict schema validation and the stack's invariants.

No cluster is reachable here, so everything a cluster would reject, and everything the project promises about its
objects (secure by default, every Service and PDB wired to one workload, nothing referenced that is not created),
is checked on the plain dicts the renderers produce:

- ``schema_problems(obj, version)``: built-in kinds against kubernetes-validate's strict schemas, custom resources
  against their CRD's ``openAPIV3Schema`` (from the CRD folder, see ``crd_folder``), made strict the way kubectl's
  field validation is. CEL rules (``x-kubernetes-validations``) are not checked.
- One function per invariant, each taking the object list and returning its problems (empty: fine), so a test can
  parametrize over them and show every problem at once: ``INVARIANTS`` holds those that need nothing else;
  ``references_exist`` and ``no_secret_values`` take what only the caller knows.
- ``kustomize_build(directory)`` and ``compare_objects(expected, actual)``: the kustomize tree gives back the
  rendered objects.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.protocols
import kubernetes_validate
import yaml

from infra.config import cpu_cores, size_bytes

Obj = dict[str, Any]
Key = tuple[str, str, str | None, str]  # apiVersion, kind, namespace, name

# Not PREFECT_STACK_*: the unit tests' hermetic fixture clears that prefix, and the stack's configuration owns it.
CRDS_ENV = "K8S_CRDS_DIR"

# What the CRD folder must hold, and where each file comes from (unchanged upstream files; see its SOURCE).
REQUIRED_CRDS: dict[str, str] = {
    "postgresql.cnpg.io_clusters.yaml": "cloudnative-pg v1.30.0, config/crd/bases",
    "postgresql.cnpg.io_poolers.yaml": "cloudnative-pg v1.30.0, config/crd/bases",
    "postgresql.cnpg.io_scheduledbackups.yaml": "cloudnative-pg v1.30.0, config/crd/bases",
    "barmancloud.cnpg.io_objectstores.yaml": "plugin-barman-cloud v0.14.0, config/crd/bases",
    "monitoring.coreos.com_servicemonitors.yaml": "prometheus-operator v0.93.0, example/prometheus-operator-crd",
    "monitoring.coreos.com_podmonitors.yaml": "prometheus-operator v0.93.0, example/prometheus-operator-crd",
    "monitoring.coreos.com_prometheusrules.yaml": "prometheus-operator v0.93.0, example/prometheus-operator-crd",
    "gateway.networking.k8s.io_httproutes.yaml": "gateway-api v1.6.1, config/crd/standard",
}

REPO_ROOT = Path(__file__).resolve().parents[1]  # the directory holding tasks.py

_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1.3 MB: libyaml when present


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace"), meta.get("name", ""))


def describe(obj: Obj) -> str:
    """``Kind/namespace/name``: how every problem names its object."""
    _, kind, namespace, name = key_of(obj)
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


# --- Schemas -------------------------------------------------------------------------------------------------------


class CrdsMissing(Exception):
    """The CRD folder is absent or incomplete: custom resources cannot be validated."""


def _origin_checkout() -> Path | None:
    """The local repository this one was cloned from (a fresh clone in a temporary folder, as CI makes)."""
    try:
        url = subprocess.run(["git", "-C", str(REPO_ROOT), "remote", "get-url", "origin"], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip()
    except OSError:
        return None
    path = Path(url.removeprefix("file://"))
    return path if url and path.is_absolute() and path.is_dir() else None


def _beside_the_repository() -> Path:
    """../shared/k8s-crds beside this checkout, else beside the checkout it was cloned from."""
    own = REPO_ROOT.parent / "shared" / "k8s-crds"
    origin = _origin_checkout()
    if own.is_dir() or origin is None:
        return own
    return origin.parent / "shared" / "k8s-crds"


def crd_folder() -> Path:
    """``$K8S_CRDS_DIR``, else ``<repo root>/../shared/k8s-crds`` (of this checkout or the one it was cloned from);
    raises ``CrdsMissing`` saying what it must hold."""
    override = os.environ.get(CRDS_ENV)
    folder = Path(override) if override else _beside_the_repository()
    missing = [name for name in REQUIRED_CRDS if not (folder / name).is_file()]
    if missing:
        where = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        files = "\n".join(f"  {name}   ({source})" for name, source in REQUIRED_CRDS.items())
        raise CrdsMissing(
            f"The CustomResourceDefinitions for offline validation are missing: {folder} {where}.\n"
            f"That folder (or ${CRDS_ENV}) must hold these CRD files, copied unchanged from the operators' upstream "
            f"repositories at the releases the Kubernetes target pins:\n{files}\n"
            "They are data for the tests, never committed to this repository.")
    return folder


def _structural_to_json_schema(schema: Obj) -> Obj:
    """A CRD's structural schema as jsonschema reads it, strict as kubectl's field validation: an object with
    ``properties`` accepts no other field unless it says ``x-kubernetes-preserve-unknown-fields`` or has its own
    ``additionalProperties``; ``x-kubernetes-int-or-string`` is an integer or a string; ``nullable`` accepts null."""
    result = dict(schema)
    if result.pop("x-kubernetes-int-or-string", False):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])  # upstream usually spells it out
    if result.get("nullable") and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    if "properties" in result:
        properties = {name: _structural_to_json_schema(sub) for name, sub in result["properties"].items()}
        if result.get("x-kubernetes-embedded-resource"):
            # An embedded object always has these, whether or not its schema lists them.
            for name in ("apiVersion", "kind", "metadata"):
                properties.setdefault(name, {})
        result["properties"] = properties
        if not result.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in result:
            result["additionalProperties"] = False
    if isinstance(result.get("items"), dict):
        result["items"] = _structural_to_json_schema(result["items"])
    if isinstance(result.get("additionalProperties"), dict):
        result["additionalProperties"] = _structural_to_json_schema(result["additionalProperties"])
    # allOf/anyOf/oneOf/not only restrict values in a structural schema; their properties are not the object's
    # fields, so they are left as they are.
    return result


@dataclass(frozen=True, eq=False)  # hashed by identity: the validators are cached per instance
class CrdSchemas:
    """The custom resources' schemas of one CRD folder, by (apiVersion, kind)."""

    folder: Path
    schemas: dict[tuple[str, str], Obj]

    @classmethod
    def load(cls, folder: Path) -> CrdSchemas:
        schemas: dict[tuple[str, str], Obj] = {}
        for path in sorted(folder.glob("*.yaml")):
            for doc in yaml.load_all(path.read_text(), Loader=_YAML_LOADER):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    schema = version.get("schema", {}).get("openAPIV3Schema")
                    if schema and version.get("served", True):
                        schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
        return cls(folder, schemas)

    def __contains__(self, api_version_kind: tuple[str, str]) -> bool:
        return api_version_kind in self.schemas

    def validator(self, api_version: str, kind: str) -> jsonschema.protocols.Validator:
        return _crd_validator(self, api_version, kind)

    def problems(self, obj: Obj) -> list[str]:
        """Every violation of the object's CRD schema, path first; a kind with no CRD here is one problem."""
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        if (api_version, kind) not in self:
            known = ", ".join(f"{k} ({v})" for v, k in sorted(self.schemas))
            return [f"{describe(obj)}: {kind} ({api_version}) is neither a built-in kind nor defined by a CRD in "
                    f"{self.folder} (it defines: {known})"]
        errors = self.validator(api_version, kind).iter_errors(obj)
        return sorted(f"{describe(obj)}: {_path(error)}: {error.message}" for error in errors)


@functools.cache
def _crd_validator(crds: CrdSchemas, api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = _structural_to_json_schema(crds.schemas[(api_version, kind)])  # copies what it changes
    # OpenAPI v3.0's schema object is draft 4's (boolean exclusiveMinimum), not 2020-12's.
    return jsonschema.Draft4Validator(schema)


@functools.cache
def _load_crds(folder: Path) -> CrdSchemas:
    return CrdSchemas.load(folder)


def crd_schemas(folder: Path | None = None) -> CrdSchemas:
    """The CRD folder's schemas, loaded once per process (1.3 MB of YAML)."""
    return _load_crds((folder or crd_folder()).resolve())


def _path(error: jsonschema.ValidationError) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "<root>"


def is_built_in(api_version: str) -> bool:
    """Core (``v1``), the unqualified groups (apps, batch, policy...) and *.k8s.io are Kubernetes' own."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def schema_problems(obj: Obj, version: str, crds: CrdSchemas | None = None) -> list[str]:
    """What a strict API server of Kubernetes ``version`` would reject in ``obj`` (``[]``: nothing).

    Built-in kinds: kubernetes-validate's strict schemas (it stops at the first error). Custom resources, and
    kinds this Kubernetes version does not have: their CRD (``crds``, default the CRD folder's, which must then
    exist), every error; a kind no CRD defines is a problem."""
    api_version = obj.get("apiVersion", "")
    if not is_built_in(api_version):
        return (crds or crd_schemas()).problems(obj)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{describe(obj)}: {_path(error)}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        # Not a kind of this Kubernetes version: a CRD in a *.k8s.io group (Gateway API), or no kind at all.
        return (crds or crd_schemas()).problems(obj)
    return []


def validate_objects(objects: Iterable[Obj], version: str, crds: CrdSchemas | None = None) -> list[str]:
    """``schema_problems`` of every object, in order."""
    return [problem for obj in objects for problem in schema_problems(obj, version, crds)]


# --- Pods and selectors --------------------------------------------------------------------------------------------

# Kinds whose spec.template is a pod template (CronJob: spec.jobTemplate.spec.template).
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet"})
REPLICATED_KINDS = frozenset({"Deployment", "StatefulSet"})
ANY = None  # a label whose value the operator decides per pod (CNPG's instance role, instance name)

# The labels a label set may carry: value -> the values it may take (ANY: whatever).
PossibleLabels = dict[str, frozenset[str] | None]


def pod_template(obj: Obj) -> Obj | None:
    """The pod template of a workload we render (``None`` for any other kind)."""
    template: Obj | None = None
    if obj.get("kind") == "CronJob":
        template = obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")
    elif obj.get("kind") in POD_TEMPLATE_KINDS:
        template = obj.get("spec", {}).get("template")
    return template


def _is_cnpg(obj: Obj, kind: str) -> bool:
    return obj.get("kind") == kind and obj.get("apiVersion", "").startswith("postgresql.cnpg.io/")


def pod_labels(obj: Obj) -> PossibleLabels | None:
    """The labels of the pods ``obj`` runs, ``None`` if it runs none. CloudNativePG's Cluster and Pooler count as
    workloads: their operator makes the pods, with the labels it documents plus the ones the spec adds."""
    template = pod_template(obj)
    if template is not None:
        return {k: frozenset({v}) for k, v in template.get("metadata", {}).get("labels", {}).items()}
    name, spec = obj.get("metadata", {}).get("name", ""), obj.get("spec", {})
    if _is_cnpg(obj, "Cluster"):
        roles = frozenset({"primary", "replica"})
        inherited = spec.get("inheritedMetadata", {}).get("labels", {})
        return {**{k: frozenset({v}) for k, v in inherited.items()}, **_cnpg_labels(name, "database"),
                "cnpg.io/cluster": frozenset({name}), "cnpg.io/podRole": frozenset({"instance"}),
                "cnpg.io/instanceRole": roles, "role": roles, "cnpg.io/instanceName": ANY}
    if _is_cnpg(obj, "Pooler"):
        cluster = spec.get("cluster", {}).get("name", "")
        extra = spec.get("template", {}).get("metadata", {}).get("labels", {})
        return {**{k: frozenset({v}) for k, v in extra.items()}, **_cnpg_labels(cluster, "pooler"),
                "cnpg.io/poolerName": frozenset({name}), "cnpg.io/podRole": frozenset({"pooler"}),
                "cnpg.io/cluster": frozenset({cluster})}
    return None


def _cnpg_labels(cluster: str, component: str) -> PossibleLabels:
    """The recommended labels CloudNativePG puts on its pods (pkg/utils/labels_annotations.go)."""
    return {"app.kubernetes.io/name": frozenset({"postgresql"}), "app.kubernetes.io/instance": frozenset({cluster}),
            "app.kubernetes.io/component": frozenset({component}),
            "app.kubernetes.io/managed-by": frozenset({"cloudnative-pg"})}


def replicas(obj: Obj) -> int:
    spec = obj.get("spec", {})
    if _is_cnpg(obj, "Cluster") or _is_cnpg(obj, "Pooler"):
        return int(spec.get("instances", 1))
    if obj.get("kind") in REPLICATED_KINDS:
        return int(spec.get("replicas", 1))
    return 1


def _may_match_expression(labels: PossibleLabels, expression: Obj) -> bool:
    key, operator, values = expression["key"], expression["operator"], set(expression.get("values", []))
    present = key in labels
    possible = labels.get(key)
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator == "In":
        return present and (possible is ANY or bool(possible & values))
    if operator == "NotIn":
        return not present or possible is ANY or bool(possible - values)
    raise ValueError(f"unknown selector operator {operator!r}")


def selects(selector: Obj | None, labels: PossibleLabels, *, match_labels_only: bool = False) -> bool:
    """Whether a label selector (a LabelSelector, or a Service's plain map when ``match_labels_only``) may select
    pods with these labels. An empty LabelSelector selects everything; a missing one nothing."""
    if selector is None:
        return False
    match_labels = selector if match_labels_only else selector.get("matchLabels", {}) or {}
    expressions = [] if match_labels_only else selector.get("matchExpressions", []) or []
    for key, value in match_labels.items():
        possible = labels.get(key, frozenset())
        if possible is not ANY and value not in possible:
            return False
    return all(_may_match_expression(labels, e) for e in expressions)


def _namespace(obj: Obj) -> str | None:
    namespace: str | None = obj.get("metadata", {}).get("namespace")
    return namespace


def workloads(objects: Iterable[Obj]) -> Iterator[tuple[Obj, PossibleLabels]]:
    for obj in objects:
        labels = pod_labels(obj)
        if labels is not None:
            yield obj, labels


def _selected(objects: list[Obj], owner: Obj, selector: Obj | None, *, match_labels_only: bool = False) -> list[Obj]:
    return [w for w, labels in workloads(objects)
            if _namespace(w) == _namespace(owner) and selects(selector, labels, match_labels_only=match_labels_only)]


def _names(objs: Iterable[Obj]) -> str:
    return ", ".join(describe(o) for o in objs) or "none"


# --- Invariants: each returns its problems, [] when all is well ----------------------------------------------------


def services_select_one_workload(objects: list[Obj]) -> list[str]:
    """Every rendered Service selects the pods of exactly one workload (the Services CloudNativePG makes itself,
    ``<cluster>-rw`` and the Poolers', are not rendered, so not checked)."""
    problems = []
    for svc in objects:
        if svc.get("kind") != "Service" or svc.get("spec", {}).get("type") == "ExternalName":
            continue
        selector = svc.get("spec", {}).get("selector")
        if not selector:
            problems.append(f"{describe(svc)}: has no selector")
            continue
        selected = _selected(objects, svc, selector, match_labels_only=True)
        if len(selected) != 1:
            problems.append(f"{describe(svc)}: selects {len(selected)} workloads ({_names(selected)}), not one")
    return problems


def pdbs_match_replicated_workloads(objects: list[Obj]) -> list[str]:
    """Every PodDisruptionBudget covers exactly one workload, which runs 2+ replicas; every Deployment and
    StatefulSet with 2+ replicas has one (CloudNativePG makes its Clusters' own)."""
    problems, covered = [], []
    for pdb in objects:
        if pdb.get("kind") != "PodDisruptionBudget":
            continue
        selected = _selected(objects, pdb, pdb.get("spec", {}).get("selector"))
        covered += selected
        if len(selected) != 1:
            problems.append(f"{describe(pdb)}: selects {len(selected)} workloads ({_names(selected)}), not one")
        elif replicas(selected[0]) < 2:
            problems.append(f"{describe(pdb)}: guards {describe(selected[0])}, which runs "
                            f"{replicas(selected[0])} replica: a PDB there only blocks node drains")
    for obj in objects:
        if obj.get("kind") in REPLICATED_KINDS and replicas(obj) >= 2 and not any(obj is c for c in covered):
            problems.append(f"{describe(obj)}: runs {replicas(obj)} replicas and no PodDisruptionBudget covers it")
    return problems


def _references(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(kind, name) of every Secret and ConfigMap a spec refers to, by the field names Kubernetes, CloudNativePG,
    the Barman Cloud plugin and prometheus-operator use (``optional: true`` references are skipped)."""
    lowered = key.lower()
    if isinstance(value, dict):
        if value.get("optional") is True:
            return
        name = value.get("name")
        if isinstance(name, str):
            if key in ("secret", "secretRef", "secretKeyRef") or lowered.endswith("secret"):
                yield "Secret", name
            elif key in ("configMap", "configMapRef", "configMapKeyRef") or lowered.endswith("configmap"):
                yield "ConfigMap", name
            elif key in ("accessKeyId", "secretAccessKey", "sessionToken", "region", "endpointCA",
                         "connectionString", "storageAccount", "storageKey", "storageSasToken",
                         "applicationCredentials", "username", "password", "credentials") and "key" in value:
                yield "Secret", name  # a SecretKeySelector under another name (ObjectStore, basicAuth)
        if isinstance(value.get("secretName"), str):
            yield "Secret", value["secretName"]
        for sub_key, sub in value.items():
            if sub_key != "secretName":
                yield from _references(sub, sub_key)
    elif isinstance(value, list):
        for item in value:
            if key == "imagePullSecrets" and isinstance(item, dict):
                yield "Secret", item["name"]
            else:
                yield from _references(item, key)
    elif isinstance(value, str) and lowered.endswith("secret") and key != "secretName":
        yield "Secret", value  # CloudNativePG's certificates.serverTLSSecret and friends are plain names


def references(obj: Obj) -> set[tuple[str, str]]:
    """The Secrets and ConfigMaps ``obj`` needs to exist, as (kind, name)."""
    if obj.get("kind") in ("Secret", "ConfigMap"):
        return set()
    return set(_references(obj.get("spec", {}), "spec"))


def references_exist(objects: list[Obj], external_secrets: Iterable[str] = (),
                     external_config_maps: Iterable[str] = ()) -> list[str]:
    """Every Secret and ConfigMap an object refers to is rendered, or declared as made elsewhere (by deploy, by
    an operator)."""
    present = {(o.get("kind"), _namespace(o), o.get("metadata", {}).get("name")) for o in objects}
    external = {("Secret", n) for n in external_secrets} | {("ConfigMap", n) for n in external_config_maps}
    problems = []
    for obj in objects:
        for kind, name in sorted(references(obj)):
            if (kind, _namespace(obj), name) not in present and (kind, name) not in external:
                problems.append(f"{describe(obj)}: refers to {kind} {name}, which is neither rendered nor external")
    return problems


def pods_selected_by_network_policies(objects: list[Obj]) -> list[str]:
    """When NetworkPolicies are rendered, each workload's pods are selected by at least one (CloudNativePG's too):
    a pod no policy selects is open to everything."""
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    if not policies:
        return []
    return [f"{describe(w)}: no NetworkPolicy selects its pods"
            for w, labels in workloads(objects)
            if not any(_namespace(p) == _namespace(w) and selects(p.get("spec", {}).get("podSelector", {}), labels)
                       for p in policies)]


def _peer_matches(peer: Obj, labels: PossibleLabels, namespace: str | None, peer_namespace: str | None) -> bool:
    """Whether a NetworkPolicy peer admits pods with ``labels`` in ``namespace`` (the policy's own is
    ``peer_namespace``). An ipBlock admits any address: the checks here are about pods, not CIDRs."""
    if "ipBlock" in peer:
        return True
    namespaces = peer.get("namespaceSelector")
    if namespaces is None:
        same = namespace == peer_namespace
    else:
        same = selects(namespaces, {"kubernetes.io/metadata.name": frozenset({namespace or ""})})
    pods = peer.get("podSelector")
    return same and (pods is None or selects(pods, labels))


def _port_allowed(rule: Obj, port: int) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    def covers(entry: Obj) -> bool:
        start = entry.get("port")
        in_range = start is None or start == port or (
            isinstance(start, int) and start <= port <= entry.get("endPort", start))
        return in_range and entry.get("protocol", "TCP") == "TCP"

    return any(covers(entry) for entry in ports)


def flow_problems(objects: list[Obj], source: Obj, destination: Obj, port: int) -> list[str]:
    """Whether the NetworkPolicies let ``source``'s pods reach ``destination``'s pods on TCP ``port`` (both its
    egress and the destination's ingress); no policy selecting a side leaves that side open."""
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    src, dst = pod_labels(source), pod_labels(destination)
    assert src is not None and dst is not None, "flows are between workloads"
    problems = []
    for direction, side, other, other_obj, key, peers in (
            ("Egress", src, dst, destination, "egress", "to"), ("Ingress", dst, src, source, "ingress", "from")):
        owner = source if direction == "Egress" else destination
        applying = [p for p in policies if _namespace(p) == _namespace(owner)
                    and selects(p["spec"].get("podSelector", {}), side)
                    and direction in p["spec"].get("policyTypes", ["Ingress"])]
        if not applying:
            continue
        allowed = any(_port_allowed(rule, port) and (peers not in rule or any(
            _peer_matches(peer, other, _namespace(other_obj), _namespace(p)) for peer in rule[peers]))
            for p in applying for rule in p["spec"].get(key, []) or [])
        if not allowed:
            problems.append(f"{describe(source)} -> {describe(destination)}:{port}: no {direction.lower()} rule of "
                            f"{_names(applying)} allows it")
    return problems


def _image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def container_problems(pod: Obj, container: Obj) -> list[str]:
    """Pod Security "restricted", a read-only root filesystem, requests and a memory limit, a pinned image."""
    pod_context = pod.get("securityContext", {})
    context = container.get("securityContext", {})
    problems = []
    if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
        problems.append("runAsNonRoot is not true")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if "ALL" not in context.get("capabilities", {}).get("drop", []):
        problems.append("capabilities.drop lacks ALL")
    seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
    if seccomp.get("type") != "RuntimeDefault":
        problems.append("seccompProfile is not RuntimeDefault")
    resources = container.get("resources", {})
    for field in ("cpu", "memory"):
        if field not in resources.get("requests", {}):
            problems.append(f"no {field} request")
    if "memory" not in resources.get("limits", {}):
        problems.append("no memory limit")
    if not _image_pinned(container.get("image", "")):
        problems.append(f"image {container.get('image', '')!r} is not pinned (a tag other than latest, or a digest)")
    return problems


def pods_hardened(objects: list[Obj]) -> list[str]:
    """Every container and init container of every pod template we render is hardened, and no pod mounts a
    service-account token unless it names a service account (the operators' own pods are theirs to harden)."""
    problems = []
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        pod = template.get("spec", {})
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            problems += [f"{describe(obj)}: container {container.get('name')}: {problem}"
                         for problem in container_problems(pod, container)]
        if not pod.get("serviceAccountName") and pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{describe(obj)}: mounts a service-account token without naming a service account")
    return problems


def _repository(image: str) -> str:
    """``registry/repo/name`` of an image reference, without its tag or digest."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def init_is_pid_1(objects: list[Obj], entrypoints: dict[str, list[str]]) -> list[str]:
    """Every container of the images in ``entrypoints`` (repository, matched at the end of the image's, so a registry
    prefix does not matter -> the image's ENTRYPOINT, an init like ``["/usr/bin/tini", "--"]``) runs that init as
    PID 1: it sets no ``command`` (which would replace the ENTRYPOINT) or one that starts with it, and its pod does
    not share a process namespace (PID 1 would be the pause container's)."""
    problems = []
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        pod = template.get("spec", {})
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            repository = _repository(container.get("image", ""))
            init = next((entry for repo, entry in entrypoints.items() if repository.endswith(repo)), None)
            if init is None:
                continue
            where = f"{describe(obj)}: container {container.get('name')}"
            command = container.get("command")
            if command is not None and list(command[:len(init)]) != list(init):
                problems.append(f"{where}: command {command[:3]}... replaces the image's entrypoint {init}: put the "
                                "program in args")
            if pod.get("shareProcessNamespace"):
                problems.append(f"{where}: the pod shares its process namespace, so {init[0]} is not PID 1")
    return problems


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
DNS_LABEL = re.compile(rf"^{_DNS_LABEL}$")
# A Service's name is an RFC 1035 label: it becomes a DNS name and environment variables, so it starts with a letter.
RFC1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return f"label key {key!r}: prefix is not a DNS subdomain"
    if not name or len(name) > 63 or not LABEL_VALUE.match(name):
        return f"label key {key!r}: name is not 1-63 alphanumerics, '-', '_', '.'"
    return None


def _label_sets(obj: Obj) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "metadata.labels", obj.get("metadata", {}).get("labels", {}) or {}
    template = pod_template(obj)
    if template is not None:
        yield "pod template labels", template.get("metadata", {}).get("labels", {}) or {}


def names_valid(objects: list[Obj]) -> list[str]:
    """Object names are DNS-1123 subdomains (Services: RFC 1035 labels, Namespaces: DNS labels); label keys and
    values are what the API server accepts."""
    problems = []
    for obj in objects:
        name = obj.get("metadata", {}).get("name", "")
        kind = obj.get("kind")
        if kind == "Service" and not (len(name) <= 63 and RFC1035_LABEL.match(name)):
            problems.append(f"{describe(obj)}: a Service name must be an RFC 1035 label (a-z first, <= 63)")
        elif kind == "Namespace" and not (len(name) <= 63 and DNS_LABEL.match(name)):
            problems.append(f"{describe(obj)}: a Namespace name must be a DNS label (<= 63)")
        elif not (len(name) <= 253 and DNS_SUBDOMAIN.match(name)):
            problems.append(f"{describe(obj)}: the name is not a DNS-1123 subdomain (<= 253)")
        for where, labels in _label_sets(obj):
            for key, value in labels.items():
                key_problem = _label_key_problem(key)
                if key_problem:
                    problems.append(f"{describe(obj)}: {where}: {key_problem}")
                if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
                    problems.append(f"{describe(obj)}: {where}: {key}={value!r} is not a valid label value "
                                    "(a string of <= 63 alphanumerics, '-', '_', '.')")
    return problems


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield path, str(k)
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif value is not None:
        yield path, str(value)


def no_secret_values(objects: list[Obj], secrets: Iterable[str]) -> list[str]:
    """No secret value (nor its base64) appears in any object but a Secret. Problems name the secret by its
    position in ``secrets``, never by its value: test reports are not a place for credentials."""
    needles = [(i, s, base64.b64encode(s.encode()).decode()) for i, s in enumerate(secrets) if s]
    problems = []
    for obj in objects:
        if obj.get("kind") == "Secret":
            continue
        for path, text in _strings(obj):
            problems += [f"{describe(obj)}: {path or '<root>'} holds secret #{i} (or its base64)"
                         for i, plain, encoded in needles if plain in text or encoded in text]
    return problems


PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


def namespace_restricted(objects: list[Obj]) -> list[str]:
    """Every namespace the objects live in is rendered, labelled Pod Security "restricted" (enforced)."""
    rendered = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Namespace"}
    used = {ns for o in objects if (ns := _namespace(o))} | set(rendered)
    if not used:
        return ["no Namespace is rendered and no object names one"]
    problems = []
    for ns in sorted(used):
        if ns not in rendered:
            problems.append(f"namespace {ns}: objects live there but no Namespace object is rendered")
            continue
        value = rendered[ns].get("metadata", {}).get("labels", {}).get(PSA_ENFORCE)
        if value != "restricted":
            problems.append(f"Namespace/{ns}: label {PSA_ENFORCE} is {value!r}, not 'restricted'")
    return problems


# Egress to what is not a pod of ours, by port alone: DNS (kube-dns pods, a node-local cache on the host network,
# OpenShift's openshift-dns: no selector matches them all) and the API server (CIDR rules miss it on some CNIs).
PORT_ONLY_EGRESS = {53: "DNS", 6443: "the Kubernetes API server"}


def cluster_services_reached_by_port(objects: list[Obj]) -> list[str]:
    """Every egress rule that allows DNS or the API server's port names no peer."""
    problems = []
    for policy in (o for o in objects if o.get("kind") == "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []) or []:
            ports = {entry.get("port") for entry in rule.get("ports", [])}
            for port, what in PORT_ONLY_EGRESS.items():
                if port in ports and rule.get("to"):
                    problems.append(f"{describe(policy)}: egress to {what} (port {port}) is limited to peers "
                                    f"{rule['to']}: allow the port alone")
    return problems


def _spec_of_pods(obj: Obj) -> Obj:
    """The pod spec of a workload, a CloudNativePG Pooler's included (its template is at spec.template too)."""
    template = obj.get("spec", {}).get("template") if _is_cnpg(obj, "Pooler") else pod_template(obj)
    spec: Obj = (template or {}).get("spec", {})
    return spec


def replicas_spread_over_nodes(objects: list[Obj]) -> list[str]:
    """Replicated pods of ours never share a node while another could take one: Deployments and Poolers spread over
    hostnames with DoNotSchedule; StatefulSets (Redis with its Sentinels) require pod anti-affinity by hostname.
    CloudNativePG's Cluster has its own (podAntiAffinityType required when replicated)."""
    problems = []
    for obj in objects:
        kind = obj.get("kind")
        if kind not in ("Deployment", "StatefulSet", "Pooler") or replicas(obj) < 2:
            continue
        spec = _spec_of_pods(obj)
        if kind == "StatefulSet":
            terms = spec.get("affinity", {}).get("podAntiAffinity", {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution", [])
            if not any(t.get("topologyKey") == "kubernetes.io/hostname" for t in terms):
                problems.append(f"{describe(obj)}: {replicas(obj)} replicas without required pod anti-affinity "
                                "by kubernetes.io/hostname")
            continue
        spread = [c for c in spec.get("topologySpreadConstraints", [])
                  if c.get("topologyKey") == "kubernetes.io/hostname" and c.get("whenUnsatisfiable") == "DoNotSchedule"]
        if not spread:
            problems.append(f"{describe(obj)}: {replicas(obj)} replicas without a DoNotSchedule topology spread "
                            "over kubernetes.io/hostname")
    return problems


def _unequal_requests_and_limits(resources: Obj) -> list[str]:
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    problems = []
    for name, amount in (("cpu", cpu_cores), ("memory", size_bytes)):
        request, limit = requests.get(name), limits.get(name)
        if request is None or limit is None or amount(str(request)) != amount(str(limit)):
            problems.append(f"{name} request {request} and limit {limit} differ")
    return problems


def data_pods_guaranteed(objects: list[Obj]) -> list[str]:
    """Pods that keep data (the StatefulSets: Redis with its sidecars; CloudNativePG's instances, with the Barman
    Cloud plugin's sidecar) have requests equal to limits in every container: Guaranteed QoS, the last pods the
    kubelet evicts and the kernel OOM-kills under node pressure. A pod is Guaranteed only if every container is."""
    problems = []
    for obj in objects:
        sources: list[tuple[str, Obj]] = []
        if obj.get("kind") == "StatefulSet":
            pod = _spec_of_pods(obj)
            sources = [(f"container {c.get('name')}", c.get("resources", {}))
                       for c in [*pod.get("initContainers", []), *pod.get("containers", [])]]
        elif _is_cnpg(obj, "Cluster"):
            sources = [("instances", obj.get("spec", {}).get("resources", {}))]
        elif obj.get("kind") == "ObjectStore":
            sources = [("the instances' sidecar", obj.get("spec", {}).get("instanceSidecarConfiguration", {})
                        .get("resources", {}))]
        for where, resources in sources:
            problems += [f"{describe(obj)}: {where}: {p}" for p in _unequal_requests_and_limits(resources)]
    return problems


def metrics_sidecars_do_not_gate_readiness(objects: list[Obj]) -> list[str]:
    """A container beside others that only serves metrics (its one port is named metrics) has no readiness probe:
    a failing one would make the whole pod NotReady (out of its Services, counted as disrupted by its
    PodDisruptionBudget) for the exporter's sake."""
    problems = []
    for obj in objects:
        containers = _spec_of_pods(obj).get("containers", [])
        if len(containers) < 2:
            continue
        for container in containers:
            ports = [p.get("name") for p in container.get("ports", [])]
            if ports == ["metrics"] and "readinessProbe" in container:
                problems.append(f"{describe(obj)}: the metrics sidecar {container.get('name')} has a readiness "
                                "probe: it decides whether the pod is Ready")
    return problems


# The invariants that need nothing but the objects (references_exist and no_secret_values take what the caller
# knows): parametrize a test over these and each failure names its invariant.
INVARIANTS: dict[str, Callable[[list[Obj]], list[str]]] = {
    "services_select_one_workload": services_select_one_workload,
    "pdbs_match_replicated_workloads": pdbs_match_replicated_workloads,
    "pods_selected_by_network_policies": pods_selected_by_network_policies,
    "pods_hardened": pods_hardened,
    "names_valid": names_valid,
    "namespace_restricted": namespace_restricted,
    "cluster_services_reached_by_port": cluster_services_reached_by_port,
    "replicas_spread_over_nodes": replicas_spread_over_nodes,
    "data_pods_guaranteed": data_pods_guaranteed,
    "metrics_sidecars_do_not_gate_readiness": metrics_sidecars_do_not_gate_readiness,
}


def invariant_problems(objects: list[Obj], *, external_secrets: Iterable[str] = (),
                       external_config_maps: Iterable[str] = (), secrets: Iterable[str] = ()) -> dict[str, list[str]]:
    """Every invariant's problems by its name, the two that need the caller's knowledge included."""
    result = {name: check(objects) for name, check in INVARIANTS.items()}
    result["references_exist"] = references_exist(objects, external_secrets, external_config_maps)
    result["no_secret_values"] = no_secret_values(objects, secrets)
    return result


# --- kustomize ------------------------------------------------------------------------------------------------------


class KustomizeFailed(Exception):
    pass


def kustomize_build(directory: Path | str) -> list[Obj]:
    """``kubectl kustomize DIRECTORY`` as plain dicts (offline; no cluster is contacted)."""
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False,
                            timeout=60)
    if result.returncode != 0:
        raise KustomizeFailed(f"kubectl kustomize {directory} failed ({result.returncode}): {result.stderr.strip()}")
    return [doc for doc in yaml.load_all(result.stdout, Loader=_YAML_LOADER) if doc]


def _differences(expected: Any, actual: Any, path: str = "") -> Iterator[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for k in sorted(set(expected) | set(actual), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in actual:
                yield f"{sub} missing"
            elif k not in expected:
                yield f"{sub} unexpected"
            else:
                yield from _differences(expected[k], actual[k], sub)
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            yield from _differences(e, a, f"{path}[{i}]")
    elif expected != actual:
        yield f"{path or '<root>'} differs"  # values left out: they may be credentials


def _by_key(objects: Iterable[Obj], side: str, problems: list[str]) -> dict[Key, Obj]:
    result: dict[Key, Obj] = {}
    for obj in objects:
        key = key_of(obj)
        if key in result:
            problems.append(f"{side}: {key} appears twice")
        result[key] = obj
    return result


def compare_objects(expected: Iterable[Obj], actual: Iterable[Obj], *, max_paths: int = 5) -> list[str]:
    """Two object lists as sets keyed by (apiVersion, kind, namespace, name): each key only one side has, and each
    key whose content differs (with the first differing field paths). ``[]``: the same objects."""
    problems: list[str] = []
    left, right = _by_key(expected, "expected", problems), _by_key(actual, "actual", problems)
    problems += [f"{key}: only expected" for key in sorted(set(left) - set(right), key=str)]
    problems += [f"{key}: only actual" for key in sorted(set(right) - set(left), key=str)]
    for key in sorted(set(left) & set(right), key=str):
        if json.dumps(left[key], sort_keys=True) != json.dumps(right[key], sort_keys=True):
            paths = list(_differences(left[key], right[key]))
            problems.append(f"{key}: differs at {', '.join(paths[:max_paths])}"
                            + (f" (and {len(paths) - max_paths} more)" if len(paths) > max_paths else ""))
    return problems
