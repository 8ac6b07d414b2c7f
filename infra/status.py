"""One component's state as an operator reads it, the same on every target: running, healthy, pid, port, version,
and why not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ComponentStatus:
    name: str
    component: str
    healthy: bool
    state: str
    pid: int | None
    port: int | None
    version: str | None = None
    uptime_s: int | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
