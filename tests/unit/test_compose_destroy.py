"""destroy on the compose target finishes what `compose down` leaves: a network Docker 20.10 still thinks has an
endpoint (a stale one, after a killed container) is disconnected by force and removed; what cannot be removed is
reported, not ignored."""

from __future__ import annotations

from typing import Any

import docker.errors

from infra.compose.operate import _remove_by_label


class _Network:
    def __init__(self, owner: _Engine, stale: bool) -> None:
        self.owner, self.stale, self.name = owner, stale, "pstest_backend"
        self.attrs: dict[str, Any] = {"Containers": {"ep-1": {"Name": "pstest-api-1"}} if stale else {}}
        self.disconnected: list[tuple[str, bool]] = []

    def reload(self) -> None:
        pass

    def disconnect(self, name: str, force: bool = False) -> None:
        self.disconnected.append((name, force))
        if force:
            self.attrs["Containers"] = {}

    def remove(self) -> None:
        if self.attrs["Containers"] or self.owner.stuck:
            raise docker.errors.APIError("error while removing network: network pstest_backend has active endpoints")
        self.owner.networks_left.remove(self)


class _Engine:
    """Just enough of docker.DockerClient: containers, networks and volumes by label."""

    def __init__(self, stale: bool, stuck: bool = False) -> None:
        self.stuck = stuck
        self.networks_left = [_Network(self, stale)]
        self.containers = self._Listing([])
        self.volumes = self._Listing([])
        self.networks = self._Listing(self.networks_left)

    class _Listing:
        def __init__(self, items: list[Any]) -> None:
            self.items = items

        def list(self, **_: Any) -> list[Any]:
            return list(self.items)


def test_a_stale_endpoint_is_disconnected_and_the_network_removed() -> None:
    engine = _Engine(stale=True)
    network = engine.networks_left[0]
    assert _remove_by_label(engine, {"label": "com.docker.compose.project=pstest"}, timeout_s=5)  # type: ignore[arg-type]
    assert network.disconnected == [("pstest-api-1", True)]
    assert engine.networks_left == []


def test_what_cannot_be_removed_is_reported() -> None:
    engine = _Engine(stale=False, stuck=True)
    assert not _remove_by_label(engine, {"label": "com.docker.compose.project=pstest"}, timeout_s=0)  # type: ignore[arg-type]
