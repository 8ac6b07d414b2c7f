"""A hash of the Secrets each pod reads, in its template (infra/kubernetes/secret_hashes.py): a rotated secret
rolls exactly the pods that read it, and the hash never shows a value."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import SecretStr

from infra.compose.project import placeholder_secrets
from infra.config import StackConfig, load_config
from infra.kubernetes import secret_hashes
from infra.kubernetes.objects import Names
from infra.kubernetes.render import reference_rendering
from infra.kubernetes.secrets import secret_objects
from infra.secrets import Secrets

S3 = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example-secret-key"}


@pytest.fixture(scope="module")
def config() -> StackConfig:
    return load_config(target="kubernetes")


def _stamped(config: StackConfig, secrets: Secrets) -> dict[str, str | None]:
    objects = secret_hashes.stamp([m.obj for m in reference_rendering(config).manifests],
                                  secret_objects(config, secrets, S3))
    hashes: dict[str, str | None] = {}
    for obj in objects:
        template = secret_hashes.pod_template(obj)
        if template is not None:
            hashes[f"{obj['kind']}/{obj['metadata']['name']}"] = (
                template.get("metadata", {}).get("annotations", {}).get(secret_hashes.ANNOTATION))
    return hashes


def _rotated(secrets: Secrets, name: str) -> Secrets:
    return dataclasses.replace(secrets, **{name: SecretStr(secrets.get(name) + "-rotated")})


def test_every_pod_that_reads_a_secret_of_ours_carries_a_hash(config: StackConfig) -> None:
    hashes = _stamped(config, placeholder_secrets())
    names = Names.of(config)
    for workload in (f"Deployment/{names.api}", f"Deployment/{names.services}", f"CronJob/{names.backup}",
                     f"StatefulSet/{names.redis}"):
        assert (hashes[workload] or "").startswith("sha256:"), workload


@pytest.mark.parametrize(("secret", "rolls", "stays"), [
    # Prefect's environment holds the database and Redis passwords and the API auth: every Prefect pod rolls.
    ("prefect_auth", {"api", "services"}, {"redis"}),
    ("redis", {"api", "services", "redis"}, {"backup"}),
    ("backup_encryption", {"backup"}, {"api", "services", "redis"}),
])
def test_a_rotated_secret_rolls_exactly_the_pods_that_read_it(config: StackConfig, secret: str, rolls: set[str],
                                                               stays: set[str]) -> None:
    names = Names.of(config)
    workloads = {"api": f"Deployment/{names.api}", "services": f"Deployment/{names.services}",
                 "backup": f"CronJob/{names.backup}", "redis": f"StatefulSet/{names.redis}"}
    before = _stamped(config, placeholder_secrets())
    after = _stamped(config, _rotated(placeholder_secrets(), secret))
    assert {w for w in rolls | stays if before[workloads[w]] != after[workloads[w]]} == rolls


def test_the_same_secrets_give_the_same_hash(config: StackConfig) -> None:
    """Deploying again without a change rolls nothing."""
    assert _stamped(config, placeholder_secrets()) == _stamped(config, placeholder_secrets())


def test_the_hash_shows_no_value(config: StackConfig) -> None:
    secrets = placeholder_secrets()
    hashes = " ".join(h or "" for h in _stamped(config, secrets).values())
    for name in ("postgres_prefect", "redis", "prefect_auth", "backup_encryption"):
        assert secrets.get(name) not in hashes


def _pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"template": {"spec": spec}}}


def _secret(name: str, **values: str) -> dict[str, Any]:
    return {"kind": "Secret", "metadata": {"name": name}, "stringData": values}


def test_only_the_keys_a_pod_mounts_count() -> None:
    pod = _pod({"volumes": [{"name": "s", "secret": {"secretName": "stack", "items": [{"key": "a", "path": "a"}]}}]})
    one = secret_hashes.stamp([pod], [_secret("stack", a="1", b="1")])
    other = secret_hashes.stamp([pod], [_secret("stack", a="1", b="2")])
    changed = secret_hashes.stamp([pod], [_secret("stack", a="2", b="1")])
    annotation = secret_hashes.ANNOTATION

    def value(objects: list[dict[str, Any]]) -> str:
        return str(objects[0]["spec"]["template"]["metadata"]["annotations"][annotation])

    assert value(one) == value(other) != value(changed)


def test_env_and_env_from_references_count() -> None:
    pod = _pod({"containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {
        "name": "one", "key": "k"}}}], "envFrom": [{"secretRef": {"name": "two"}}]}]})
    assert secret_hashes.secret_references(pod["spec"]["template"]["spec"]) == {("one", "k"), ("two", None)}


def test_a_pod_reading_only_secrets_made_by_others_is_left_alone() -> None:
    """CloudNativePG's CA, cert-manager's certificate: their owners roll what they serve."""
    pod = _pod({"volumes": [{"name": "ca", "secret": {"secretName": "prefect-db-ca"}}]})
    assert secret_hashes.stamp([pod], [_secret("stack", a="1")]) == [pod]
