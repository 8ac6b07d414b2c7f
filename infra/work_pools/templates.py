"""Each model pool's base job template: its type's default, the model's variable defaults and configuration merged in.

Prefect replaces (does not merge) a pool's template on update, and a worker creating its own pool would use the
bare default: the deploy always sends the whole computed template, so the pool on the server is exactly the model.
A bad variable name, a value its schema refuses or an unknown configuration key is refused here, before any API
call, naming the field to fix.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from infra.config import StackConfig, WorkPoolConfig
from infra.errors import UserError


@dataclass(frozen=True)
class QueueSpec:
    name: str
    priority: int
    concurrency_limit: int | None


@dataclass(frozen=True)
class PoolSpec:
    """What the server should hold for one pool of the model."""

    name: str
    type: str
    description: str
    concurrency_limit: int | None
    base_job_template: dict[str, Any]
    queues: tuple[QueueSpec, ...] = field(default=())


def default_template(pool_type: str) -> dict[str, Any]:
    """The pinned worker package's default base job template of a pool type (the one its worker would create)."""
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    if pool_type == "kubernetes":
        from prefect_kubernetes.worker import KubernetesWorker

        template: dict[str, Any] = KubernetesWorker.get_default_base_job_template()
        return template
    if pool_type == "docker":
        from prefect_docker.worker import DockerWorker

        docker_template: dict[str, Any] = DockerWorker.get_default_base_job_template()
        return docker_template
    raise UserError(f"unknown work pool type {pool_type!r}", fix="use process, docker or kubernetes")


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, mappings merged key by key, anything else replaced."""
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def pool_template(config: StackConfig, index: int, pool: WorkPoolConfig,
                  target_variables: Mapping[str, Any] | None = None,
                  target_configuration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The pool's base job template: the type's default, then what the target adds (the Kubernetes target's
    hardened job manifest, its image and namespace), then the model's own overrides, which win."""
    field_name = f"workers.pools[{index}] ({pool.name})"
    template = default_template(config.pool_type(pool))
    template["job_configuration"] = merged(template["job_configuration"], target_configuration or {})
    for key in pool.job_configuration:
        if key not in template["job_configuration"]:
            raise UserError(
                f"{field_name}.job_configuration.{key} is not part of a {config.pool_type(pool)} pool's job "
                f"configuration", fix=f"use one of: {', '.join(sorted(template['job_configuration']))}")
    template["job_configuration"] = merged(template["job_configuration"], pool.job_configuration)
    properties: dict[str, Any] = template["variables"]["properties"]
    for source, variables in (("the target", target_variables or {}), (f"{field_name}.job_variables",
                                                                       pool.job_variables)):
        for name, value in variables.items():
            if name not in properties:
                raise UserError(
                    f"{source} sets job variable {name!r}, which a {config.pool_type(pool)} pool does not have",
                    fix=f"use one of: {', '.join(sorted(properties))}")
            schema = {**properties[name], "definitions": template["variables"].get("definitions", {})}
            try:
                jsonschema.validate(value, schema)
            except jsonschema.ValidationError as refused:
                raise UserError(f"{source}.{name} = {value!r} is refused by the pool type's schema: "
                                f"{refused.message}", fix=f"give {name} a value of its schema "
                                f"({_schema_summary(properties[name])})") from None
            properties[name] = {**properties[name], "default": copy.deepcopy(value)}
    return template


def _schema_summary(schema: Mapping[str, Any]) -> str:
    kinds = schema.get("type") or [option.get("type") for option in schema.get("anyOf", [])]
    return f"type {kinds}" if kinds else "see the pool type's documentation"


def desired_pools(config: StackConfig, target_variables: Mapping[str, Mapping[str, Any]] | None = None,
                  target_configuration: Mapping[str, Mapping[str, Any]] | None = None) -> list[PoolSpec]:
    """Every pool of the model as the server should hold it; raises UserError for the first bad field.

    ``target_variables`` and ``target_configuration`` are keyed by pool type: what a target adds to every pool of
    that type (Kubernetes: the image, namespace and hardened pod spec)."""
    if not config.workers.enabled:
        return []
    pools = []
    for index, pool in enumerate(config.workers.pools):
        kind = config.pool_type(pool)
        template = pool_template(config, index, pool, (target_variables or {}).get(kind),
                                 (target_configuration or {}).get(kind))
        pools.append(PoolSpec(
            name=pool.name,
            type=kind,
            description=pool.description,
            concurrency_limit=pool.concurrency_limit,
            base_job_template=template,
            queues=tuple(QueueSpec(q.name, q.priority, q.concurrency_limit) for q in pool.queues),
        ))
    return pools
