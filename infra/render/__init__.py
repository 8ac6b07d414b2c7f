"""Rendered configuration: every file a component reads, derived from the model and never edited by hand.

Renderers are pure functions of (configuration, secrets, addresses). ``Addresses`` is what differs between
targets: on the local target every component is on loopback; compose and Kubernetes pass service names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Addresses:
    """Where each component is reachable from the others."""

    postgres: str = "127.0.0.1"
    pgbouncer: str = "127.0.0.1"
    redis: str = "127.0.0.1"
    api: tuple[str, ...] = ()  # one host per replica; empty means loopback for all
    load_balancer: str = "127.0.0.1"
    prometheus: str = "127.0.0.1"
    alertmanager: str = "127.0.0.1"
    node_exporter: str = "127.0.0.1"
    exporters: str = "127.0.0.1"  # postgres, redis and the project's own exporter, unless named below
    postgres_exporter: str | None = None
    redis_exporter: str | None = None
    prefect_exporter: str | None = None
    # What servers bind to. None: the host's own addresses (loopback, or the load balancer's bind_address).
    # Containers bind every interface ("0.0.0.0"): their network is the boundary, and a name resolves to one
    # network's address only.
    listen: str | None = None
    # Clients of other components connect from these networks (pg_hba.conf); loopback on a single host.
    client_networks: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # A DNS server the load balancer asks again at run time ("127.0.0.11:53", Docker's): a replaced container
    # comes back with a new address, which a name resolved once at start would never learn.
    dns_resolver: str | None = None

    def bind(self, host: str) -> str:
        """The address a server whose clients reach it at ``host`` listens on."""
        return self.listen or host

    def exporter(self, name: str) -> str:
        """Host of the ``postgres``, ``redis`` or ``prefect`` exporter."""
        specific = {"postgres": self.postgres_exporter, "redis": self.redis_exporter,
                    "prefect": self.prefect_exporter}[name]
        return specific or self.exporters

    def api_host(self, replica: int) -> str:
        """Host of API replica ``replica`` (1-based)."""
        return self.api[replica - 1] if self.api else "127.0.0.1"


@dataclass(frozen=True)
class RenderedFile:
    """One file a component reads. ``secret`` files get mode 0600; the rest 0644."""

    path: Path
    content: str
    secret: bool = False
    # The credential values the text embeds that its component can take at runtime (Redis: ACL SETUSER), so a
    # change of only these is applied without a restart (see ``settings``).
    credentials: tuple[str, ...] = ()

    @property
    def mode(self) -> int:
        return 0o600 if self.secret else 0o644

    @property
    def settings(self) -> str:
        """The text with every line that carries a runtime credential blanked: what still needs a restart when it
        changes. Whole lines, because the form of a line can follow the number of credentials (Redis: one password
        is ``requirepass``, two are an ACL user line)."""
        return "\n".join("<credentials>" if any(value in line for value in self.credentials) else line
                         for line in self.content.split("\n"))
