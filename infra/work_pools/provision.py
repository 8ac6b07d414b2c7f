"""Apply the model's pools, queues and automations through Prefect's API: create what is missing, put back what
drifted (a pool edited in the UI), leave alone and list what the model does not name.

Everything is planned before the first write: a pool of the model that exists with another type (Prefect cannot
change a pool's type) stops the deploy with nothing changed. Requests follow Prefect's own client's retry policy
(transport errors, 502 and 503, with back-off), so provisioning right after a rolling deploy does not fail on a
replica that is still starting.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from infra.api_client import load_balancer_verify
from infra.config import StackConfig
from infra.errors import UserError
from infra.work_pools.automations import NAME_PREFIX
from infra.work_pools.templates import PoolSpec, QueueSpec

RETRIED_STATUSES = (408, 429, 502, 503)
ATTEMPTS = 6
PAGE = 200


@dataclass
class ProvisionReport:
    created: list[str] = field(default_factory=list)  # pools
    put_back: dict[str, list[str]] = field(default_factory=dict)  # pool -> the fields that had drifted
    unchanged: list[str] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)  # pools on the server the model does not name
    queues: list[str] = field(default_factory=list)  # "pool/queue: created" or "...: priority put back"
    automations: list[str] = field(default_factory=list)  # "name: created|put back|removed"
    paused: list[str] = field(default_factory=list)  # model pools an operator paused (left paused)

    def lines(self) -> list[str]:
        """What an operator reads after the deploy: every change, and what was left alone on purpose."""
        out = [f"work pool {name}: created" for name in self.created]
        out += [f"work pool {name}: put back to the model ({', '.join(fields)} differed: changed in the model, or "
                "edited outside it)"
                for name, fields in self.put_back.items()]
        out += [f"work queue {line}" for line in self.queues]
        out += [f"automation {line}" for line in self.automations]
        out += [f"work pool {name} is paused (left paused: resume it with prefect work-pool resume {name})"
                for name in self.paused]
        if self.unmanaged:
            out.append(f"work pools not in the model, left alone: {', '.join(sorted(self.unmanaged))}")
        if self.unchanged:
            out.append(f"work pools as in the model, unchanged: {', '.join(self.unchanged)}")
        return out


class PrefectApi:
    """The few calls provisioning needs, with Prefect's client retry policy and errors that name the call."""

    def __init__(self, client: httpx.Client, sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self._sleep = sleep

    def call(self, method: str, path: str, body: Any = None, missing_ok: bool = False) -> Any:
        for attempt in range(ATTEMPTS):
            try:
                response = self._client.request(method, path, json=body)
            except httpx.TransportError as error:
                if attempt == ATTEMPTS - 1:
                    raise UserError(f"the Prefect API did not answer {method} {path}: {error}",
                                    fix="check invoke status; the API replicas and the load balancer must be "
                                        "up") from None
                self._sleep(2 ** attempt)
                continue
            if response.status_code in RETRIED_STATUSES and attempt < ATTEMPTS - 1:
                retry_after = response.headers.get("Retry-After", "")
                self._sleep(float(retry_after) if retry_after.isdigit() else 2 ** attempt)
                continue
            if response.status_code == 404 and missing_ok:
                return None
            if response.status_code >= 300:  # a redirect too: every path here is exact
                raise UserError(f"the Prefect API refused {method} {path}: {response.status_code} "
                                f"{response.text[:500]}",
                                fix="check the workers section of the configuration against the message; "
                                    "invoke logs api-1 shows the server's side")
            return response.json() if response.content else None
        raise AssertionError("unreachable")  # pragma: no cover


def _pool_drift(spec: PoolSpec, current: dict[str, Any]) -> list[str]:
    drifted = []
    if (current.get("description") or "") != spec.description:
        drifted.append("description")
    if current.get("concurrency_limit") != spec.concurrency_limit:
        drifted.append("concurrency_limit")
    if current.get("base_job_template") != spec.base_job_template:
        drifted.append("base_job_template")
    return drifted


def _queue_drift(spec: QueueSpec, current: dict[str, Any]) -> list[str]:
    return [name for name, value in (("priority", spec.priority), ("concurrency_limit", spec.concurrency_limit))
            if current.get(name) != value]


def _comparable(automation: dict[str, Any]) -> dict[str, Any]:
    """An automation as the model states it (the server adds ids and defaults): compared field by field."""
    return {key: automation.get(key) for key in ("name", "description", "enabled")}


def provision(api: PrefectApi, pools: list[PoolSpec], automations: list[dict[str, Any]]) -> ProvisionReport:
    """Bring the server's pools, queues and the stack's automations to ``pools`` and ``automations`` (computed by
    ``desired_pools`` with the target's additions, and ``desired_automations``)."""
    specs = pools
    report = ProvisionReport()
    existing = {pool["name"]: pool for pool in api.call("POST", "/work_pools/filter", {"limit": PAGE})}
    # Plan first: a refusal leaves the server untouched.
    for spec in specs:
        current = existing.get(spec.name)
        if current is not None and current["type"] != spec.type:
            raise UserError(f"work pool {spec.name} exists with type {current['type']}, the model says {spec.type}; "
                            "Prefect cannot change a pool's type",
                            fix=f"rename the pool in workers.pools, or delete it (prefect work-pool delete "
                                f"{spec.name}) once no deployment uses it")
    wanted = {spec.name for spec in specs}
    report.unmanaged = sorted(name for name in existing if name not in wanted)
    for spec in specs:
        body = {"description": spec.description, "concurrency_limit": spec.concurrency_limit,
                "base_job_template": spec.base_job_template}
        current = existing.get(spec.name)
        if current is None:
            api.call("POST", "/work_pools/", {"name": spec.name, "type": spec.type, **body})
            report.created.append(spec.name)
        else:
            drifted = _pool_drift(spec, current)
            if drifted:
                api.call("PATCH", f"/work_pools/{spec.name}", body)
                report.put_back[spec.name] = drifted
            else:
                report.unchanged.append(spec.name)
            if current.get("is_paused"):
                report.paused.append(spec.name)
        _provision_queues(api, spec, report)
    _provision_automations(api, automations, report)
    return report


def _provision_queues(api: PrefectApi, spec: PoolSpec, report: ProvisionReport) -> None:
    queues = {queue["name"]: queue for queue in
              api.call("POST", f"/work_pools/{spec.name}/queues/filter", {"limit": PAGE})}
    for queue in spec.queues:
        body = {"priority": queue.priority, "concurrency_limit": queue.concurrency_limit}
        current = queues.get(queue.name)
        if current is None:
            api.call("POST", f"/work_pools/{spec.name}/queues", {"name": queue.name, **body})
            report.queues.append(f"{spec.name}/{queue.name}: created")
            continue
        drifted = _queue_drift(queue, current)
        if drifted:
            api.call("PATCH", f"/work_pools/{spec.name}/queues/{queue.name}", body)
            report.queues.append(f"{spec.name}/{queue.name}: put back ({', '.join(drifted)})")


def _provision_automations(api: PrefectApi, automations: list[dict[str, Any]], report: ProvisionReport) -> None:
    ours = {automation["name"]: automation
            for automation in api.call("POST", "/automations/filter", {"limit": PAGE})
            if automation["name"].startswith(NAME_PREFIX)}
    for automation in automations:
        current = ours.pop(automation["name"], None)
        if current is None:
            api.call("POST", "/automations/", automation)
            report.automations.append(f"{automation['name']!r}: created")
        elif _comparable(current) != _comparable(automation) or not _same_rules(current, automation):
            api.call("PUT", f"/automations/{current['id']}", automation)
            report.automations.append(f"{automation['name']!r}: put back")
    for name, stale in ours.items():  # the model no longer asks for it (crashed_run_retries: 0)
        api.call("DELETE", f"/automations/{stale['id']}", missing_ok=True)
        report.automations.append(f"{name!r}: removed")


def _same_rules(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether the server's trigger and actions say what the model does (ignoring ids and added defaults)."""
    def covers(have: Any, want: Any) -> bool:
        if isinstance(want, dict):
            return isinstance(have, dict) and all(covers(have.get(key), value) for key, value in want.items())
        if isinstance(want, list):
            if not isinstance(have, list) or len(have) != len(want):
                return False
            if all(isinstance(item, str) for item in want):  # sets on the server: order is not kept
                return sorted(have) == sorted(want)
            return all(covers(h, w) for h, w in zip(have, want, strict=True))
        if isinstance(want, (int, float)) and isinstance(have, (int, float)):
            return float(have) == float(want)
        return bool(have == want)

    return covers(current.get("trigger"), wanted["trigger"]) and covers(current.get("actions"), wanted["actions"])


def api_session(url: str, auth_string: str, verify: Any) -> PrefectApi:
    """A PrefectApi for the API at ``url`` with the stack's basic-auth credentials."""
    user, _, password = auth_string.partition(":")
    client = httpx.Client(base_url=url, auth=(user, password), verify=verify, trust_env=False, timeout=30)
    return PrefectApi(client)


def plan_document(pools: list[PoolSpec], automations: list[dict[str, Any]]) -> dict[str, Any]:
    """Pools and automations as JSON, for provisioning from elsewhere (the Kubernetes Job reads it from a
    ConfigMap: the templates are computed where the configuration is, never in the cluster)."""
    return {"pools": [dataclasses.asdict(pool) for pool in pools], "automations": automations}


def from_document(document: dict[str, Any]) -> tuple[list[PoolSpec], list[dict[str, Any]]]:
    pools = [PoolSpec(**{**pool, "queues": tuple(QueueSpec(**queue) for queue in pool["queues"])})
             for pool in document["pools"]]
    return pools, list(document["automations"])


def load_balancer_api(config: StackConfig, auth_string: str) -> PrefectApi:
    """The API through the stack's load balancer, as the deploying host reaches it (local and compose)."""
    return api_session(config.api_url, auth_string, load_balancer_verify(config))
