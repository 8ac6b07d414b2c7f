"""kubernetes.scheduling: node selector, tolerations and priority class on every pod of the stack (CloudNativePG's
instances and poolers included), image pull secrets on the pods of the project's images; nothing when unset."""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.kubernetes.render import reference_rendering
from infra.kubernetes.scheduling import template_pod_spec

SCHEDULING = {"node_selector": {"node-pool": "prefect"}, "priority_class": "prefect-high",
              "tolerations": [{"key": "dedicated", "value": "prefect", "effect": "NoSchedule"},
                              {"operator": "Exists", "effect": "NoExecute", "toleration_seconds": 30}],
              "image_pull_secrets": ["registry-credentials"]}
TOLERATIONS = [{"key": "dedicated", "operator": "Equal", "value": "prefect", "effect": "NoSchedule"},
               {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]


def _objects(**kubernetes: Any) -> list[dict[str, Any]]:
    config: StackConfig = load_config(target="kubernetes", backups={"physical": {"enabled": True}},
                                      kubernetes=kubernetes)
    return reference_rendering(config).objects()


def _pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", pod) for o in objects if (pod := template_pod_spec(o)) is not None]


def test_every_pod_of_the_stack_runs_where_the_model_says() -> None:
    pods = _pods(_objects(scheduling=SCHEDULING))
    kinds = {name.split("/")[0] for name, _ in pods}
    assert {"Deployment", "StatefulSet", "Job", "CronJob", "Pooler"} <= kinds
    for name, pod in pods:
        assert pod["nodeSelector"] == {"node-pool": "prefect"}, name
        assert pod["tolerations"] == TOLERATIONS, name
        assert pod["priorityClassName"] == "prefect-high", name


def test_the_project_images_pull_with_the_secrets_the_poolers_with_their_operators() -> None:
    for name, pod in _pods(_objects(scheduling=SCHEDULING)):
        expected = None if name.startswith("Pooler/") else [{"name": "registry-credentials"}]
        assert pod.get("imagePullSecrets") == expected, name


def test_cloudnativepg_places_its_instances_the_same_way() -> None:
    [cluster] = [o for o in _objects(scheduling=SCHEDULING) if o["kind"] == "Cluster"]
    assert cluster["spec"]["affinity"]["nodeSelector"] == {"node-pool": "prefect"}
    assert cluster["spec"]["affinity"]["tolerations"] == TOLERATIONS
    assert cluster["spec"]["priorityClassName"] == "prefect-high"


def test_nothing_is_rendered_when_unset() -> None:
    objects = _objects()
    for name, pod in _pods(objects):
        assert not {"nodeSelector", "tolerations", "priorityClassName", "imagePullSecrets"} & set(pod), name
    [cluster] = [o for o in objects if o["kind"] == "Cluster"]
    assert "priorityClassName" not in cluster["spec"]
    assert not {"nodeSelector", "tolerations"} & set(cluster["spec"]["affinity"])


@pytest.mark.parametrize(("toleration", "message"), [
    ({"key": "a", "operator": "Exists", "value": "b"}, "takes no value"),
    ({"key": "a", "value": "b", "effect": "NoSchedule", "toleration_seconds": 5}, "NoExecute only"),
])
def test_an_inconsistent_toleration_is_refused(toleration: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(target="kubernetes", kubernetes={"scheduling": {"tolerations": [toleration]}})
