"""PostgreSQL: a CloudNativePG Cluster and its two Poolers, or an external PostgreSQL. (Being written.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.config import StackConfig
from infra.kubernetes.objects import Manifest


@dataclass(frozen=True)
class DatabaseEndpoints:
    """Where each kind of Prefect process connects: host, port; sslmode for every connection."""

    api: tuple[str, int]        # transaction pooling (the API replicas)
    services: tuple[str, int]   # session pooling (the background services LISTEN)
    direct: tuple[str, int]     # the primary itself (migrations, pg_dump, restores)
    sslmode: str = "require"


def database_endpoints(config: StackConfig) -> DatabaseEndpoints:
    from infra.kubernetes.objects import Names

    pg = config.kubernetes.postgres
    if pg.mode == "external":
        host = pg.host or ""
        return DatabaseEndpoints((host, pg.port), (host, pg.port), (host, pg.port), pg.sslmode)
    names = Names.of(config)
    return DatabaseEndpoints((names.pooler_transaction, 5432), (names.pooler_session, 5432), (names.database_rw, 5432))


def database_manifests(config: StackConfig, images: Any) -> list[Manifest]:
    return []
