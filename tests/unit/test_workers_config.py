"""The workers section of the model: pools, their queues and the workers serving them, checked at load."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from infra.config import StackConfig


def _config(target: str = "local", **workers: Any) -> StackConfig:
    return StackConfig(target=target, workers=workers)  # type: ignore[arg-type]


def test_the_default_is_one_process_pool_with_one_worker_on_local_and_a_kubernetes_pool_on_a_cluster() -> None:
    local = _config()
    assert [(pool.name, local.pool_type(pool)) for pool in local.workers.pools] == [("default", "process")]
    assert [name for name, _ in local.workers.numbered()] == ["default-1"]
    cluster = _config("kubernetes")
    assert cluster.pool_type(cluster.workers.pools[0]) == "kubernetes"


def test_workers_are_numbered_per_pool_and_get_their_own_health_ports() -> None:
    config = _config(pools=[{"name": "etl"}, {"name": "ml"}],
                     workers=[{"pool": "etl", "count": 2}, {"pool": "ml"}], health_base_port=18100)
    assert [name for name, _ in config.workers.numbered()] == ["etl-1", "etl-2", "ml-1"]
    ports = {field: port for field, port in config.port_fields().items() if field.startswith("workers.")}
    assert sorted(ports.values()) == [18100, 18101, 18102]


@pytest.mark.parametrize(
    ("target", "workers", "named"),
    [
        ("local", {"workers": [{"pool": "nope"}]}, "workers.workers[0].pool 'nope' is not one of workers.pools"),
        ("local", {"workers": [{"pool": "default", "queues": ["fast"]}]}, "'fast', not a queue of pool 'default'"),
        ("local", {"pools": [{"name": "a"}, {"name": "a"}], "workers": []}, "lists pool 'a' twice"),
        ("local", {"pools": [{"name": "a", "queues": [{"name": "q"}, {"name": "q"}]}], "workers": []},
         "lists queue 'q' twice"),
        ("local", {"pools": [{"name": "k", "type": "kubernetes"}], "workers": []}, "which the local target cannot"),
        ("compose", {"pools": [{"name": "d", "type": "docker"}], "workers": []}, "set workers.docker_socket: true"),
        ("kubernetes", {"pools": [{"name": "p", "type": "process"}], "workers": []}, "use kubernetes"),
        ("local", {"health_base_port": 14200}, "workers.health_base_port (worker default-1) and api.base_port"),
        ("local", {"flow_heartbeat_s": 10}, "greater than or equal to 30"),
    ],
)
def test_a_bad_workers_section_is_refused_naming_the_field(target: str, workers: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as refused:
        _config(target, **workers)
    assert named in str(refused.value)


def test_docker_pools_are_accepted_on_compose_once_the_socket_is_opted_in() -> None:
    config = _config("compose", pools=[{"name": "d", "type": "docker"}], workers=[{"pool": "d"}], docker_socket=True)
    assert config.pool_type(config.workers.pools[0]) == "docker"


def test_a_disabled_section_checks_no_pool_against_the_target() -> None:
    config = _config("local", enabled=False, pools=[{"name": "k", "type": "kubernetes"}], workers=[])
    assert not config.workers.enabled
