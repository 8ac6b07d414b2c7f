"""docs/configuration.md: the configuration reference, generated from the model in infra/config.py.

The page is owned by this module, intro included (``INTRO``): it walks ``StackConfig`` and every nested section
model and writes one table per section, one row per leaf field, with its dotted key, type (and numeric bounds),
default, environment variable and the field's ``description``. Defaults are the model's own (a section's nested
defaults included, e.g. ``kubernetes.api_resources``), never the operator's YAML file or environment. A secret
(``SecretStr``) never shows its default: secrets are generated at deploy. ``invoke docs`` rewrites the page; a
unit test fails when the committed page differs from what this module renders.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from infra.config import ENV_PREFIX, REPO_ROOT, StackConfig

PAGE = REPO_ROOT / "docs" / "configuration.md"

INTRO = f"""\
# Configuration

Read this to change a setting: every key of the configuration, with its type, default, environment variable and
what it does. This page is generated from the model (`infra/config.py`) by `invoke docs`; edit a field's
`description` there, not this page (a unit test fails when the two differ).

## How the configuration is loaded

There is one typed model (`infra/config.py`, pydantic-settings) for every target. It is loaded from the commented
file [`infra/stack.yaml`](../infra/stack.yaml) (or the file named by `PREFECT_STACK_CONFIG`) and from environment
variables `{ENV_PREFIX}<SECTION>__<KEY>` (`__` between nested keys), which take precedence:

```bash
{ENV_PREFIX}API__REPLICAS=3 .venv/bin/invoke deploy
```

Deploy checks everything before it starts anything. Text where a number belongs, replicas < 1, a port out of
range, an unknown key, two components on one port, or a port already taken by another process stops the deploy
with the field's name and the fix:

```
error: ports taken by another process:
  redis.port: port 16379 is already in use on 127.0.0.1; choose a free port ({ENV_PREFIX}REDIS__PORT=...)
  fix: free those ports or change them in the configuration
```

Every file a component reads (`postgresql.conf`, `pg_hba.conf`, `pgbouncer.ini`, `redis.conf`, `haproxy.cfg`,
`supervisord.conf`, the compose file, the Kubernetes objects) is rendered from the model. Do not edit rendered
files by hand: the next deploy overwrites them. TLS at the load balancer (`load_balancer.tls`) is explained in
[architecture.md](architecture.md#tls-at-the-load-balancer). There are no default passwords: every credential is
generated at the first deploy and kept in `<state>/secrets`, never in this configuration.

## Reference

One table per section. A list value in an environment variable is JSON
(`{ENV_PREFIX}LOAD_BALANCER__TLS__EXTRA_NAMES='["prefect.internal"]'`); `null` is YAML's null.
"""

# What each section is for, in the operator's words: the heading of its table.
SECTION_TITLES: dict[str, str] = {
    "": "the target",
    "postgres": "the stack's own PostgreSQL (local and compose targets)",
    "pgbouncer": "PgBouncer in front of PostgreSQL (local and compose targets)",
    "redis": "Redis, Prefect's messaging (local and compose targets)",
    "api": "the Prefect API replicas",
    "services": "Prefect's background services",
    "load_balancer": "HAProxy, the one entry to the API",
    "load_balancer.tls": "TLS at the load balancer",
    "local": "the local target",
    "compose": "the Docker Compose target",
    "kubernetes": "the Kubernetes target",
    "kubernetes.postgres": "PostgreSQL on Kubernetes (CloudNativePG or external)",
    "kubernetes.postgres.resources": "resources of each PostgreSQL instance",
    "kubernetes.postgres.recovery": "point-in-time recovery of the CloudNativePG Cluster",
    "kubernetes.redis": "Redis on Kubernetes (Sentinel, standalone or external)",
    "kubernetes.redis.resources": "resources of each Redis pod",
    "kubernetes.ingress": "the Ingress in front of the API",
    "kubernetes.api_resources": "resources of each API pod",
    "kubernetes.services_resources": "resources of each background services pod",
    "kubernetes.backup_resources": "resources of the backup CronJob's pod",
    "backups": "logical backups, the nightly schedule and its alert",
    "backups.s3": "the backup bucket",
    "backups.physical": "physical backups and WAL archiving",
    "backups.retention": "retention of logical backups (grandfather-father-son)",
    "monitoring": "Prometheus, Alertmanager and the exporters",
    "monitoring.receivers": "where Alertmanager sends notifications",
    "tracing": "OpenTelemetry traces",
}


@dataclass(frozen=True)
class Setting:
    """One leaf field of the model, as the page shows it."""

    key: str
    type: str
    default: str
    env: str
    description: str


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(arg) for arg in get_args(annotation))


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(f"`{json.dumps(value)}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        named = [_type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin is list:
        (item,) = get_args(annotation)
        return f"list of {_type_name(item)}"
    if annotation is Path:
        return "path"
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    """Numeric bounds of a field, as ``1 to 65535``, ``> 0, ≤ 64`` or ``≥ 0``; empty when it has none."""
    # pydantic keeps ge=, gt=, le= and lt= as annotated_types objects, each with an attribute of that name
    rules = {name: getattr(rule, name) for rule in field.metadata for name in ("ge", "gt", "le", "lt")
             if getattr(rule, name, None) is not None}
    if "ge" in rules and "le" in rules:
        return f"{rules['ge']} to {rules['le']}"
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(f"{signs[name]} {bound}" for name, bound in rules.items())


def _default(field: FieldInfo, value: Any) -> str:
    if _is_secret(field.annotation):
        return "generated"  # never printed, whatever it is: secrets are generated at deploy
    # A list of sections (workers.pools) shows as the YAML an operator would write: its items' set fields.
    plain = [item.model_dump(mode="json", exclude_defaults=True) if isinstance(item, BaseModel) else item
             for item in value] if isinstance(value, list) else value
    return f"`{json.dumps(str(plain) if isinstance(plain, Path) else plain)}`"


def _cell(text: str, markdown: bool = False) -> str:
    """Text safe inside a table cell: no pipe ends the cell; in prose (``markdown``), ``<state>`` is not taken for
    an HTML tag (code spans show a backslash literally, so they are left alone)."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text.replace("<", "\\<") if markdown else text


def settings(model: type[BaseModel] = StackConfig, values: BaseModel | None = None,
             prefix: tuple[str, ...] = ()) -> list[Setting]:
    """Every leaf field under ``model`` in declaration order; ``values`` holds the defaults of a nested section
    (its parent's default instance), else each field's own default is used."""
    found: list[Setting] = []
    for name, field in model.model_fields.items():
        value = getattr(values, name) if values is not None else field.get_default(call_default_factory=True)
        path = (*prefix, name)
        if isinstance(value, BaseModel):
            found += settings(type(value), value, path)
            continue
        kind = _type_name(field.annotation)
        bounds = _bounds(field)
        found.append(Setting(
            key=".".join(path),
            type=f"{kind}, {bounds}" if bounds else kind,
            default=_default(field, value),
            env=ENV_PREFIX + "__".join(part.upper() for part in path),
            description=field.description or "",
        ))
    return found


def _section(key: str) -> str:
    return key.rpartition(".")[0]


def render_configuration_page() -> str:
    """The whole page: the intro, then one table per section in the model's order."""
    by_section: dict[str, list[Setting]] = {}
    for setting in settings():
        by_section.setdefault(_section(setting.key), []).append(setting)
    parts = [INTRO]
    for section, rows in by_section.items():
        title = SECTION_TITLES.get(section, section)
        heading = f"### `{section}`: {title}" if section else f"### Top level: {title}"
        lines = [heading, "", "| key | type | default | environment variable | description |",
                 "| --- | --- | --- | --- | --- |"]
        lines += [f"| `{s.key}` | {_cell(s.type)} | {_cell(s.default)} | `{s.env}` | "
                  f"{_cell(s.description, markdown=True)} |" for s in rows]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write_configuration_page(path: Path = PAGE) -> Path:
    """Write the page; return where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_configuration_page())
    return path
