"""The load a fault drill runs: flow runs created and taken through their states exactly as Prefect's own client
does it, then read back to count what was lost or applied twice.

Each client is Prefect's ``PrefectHttpxAsyncClient`` (``prefect/client/base.py``), so the retry policy judged is
Prefect's own, not a copy of it: 408/429/502/503 and transport errors retried 5 times with a 2^n s back-off and
jitter, ``Retry-After`` honoured, a 503 with ``Prefect-Maintenance: true`` waited out without limit. A request
counts as a client error only when it still fails after that. Each creation carries an idempotency key and each
state change a transition id, as Prefect's engine sends them, so a retried request that had already been committed
returns what it created instead of creating it again; a lost or doubled write is then the stack's fault.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

# A client's operation: create a run (PENDING), then RUNNING, then COMPLETED, as a flow run reports itself.
STATES = ("RUNNING", "COMPLETED")


@dataclass
class LoadRecord:
    """What the clients saw, and what the stack acknowledged to them."""

    created: dict[str, str] = field(default_factory=dict)  # the run's key (its name) -> run id (acknowledged)
    completed: set[str] = field(default_factory=set)  # run ids whose COMPLETED was acknowledged
    errors: list[str] = field(default_factory=list)  # what a client saw fail after Prefect's retries
    attempts_retried: Counter[str] = field(default_factory=Counter)  # retried answers and errors, by kind
    maintenance_answers: int = 0  # 503s that carried Prefect-Maintenance: true
    operations: int = 0  # requests acknowledged


@dataclass(frozen=True)
class Verification:
    """What the stack holds for the runs the clients were told exist."""

    runs_lost: int  # creations acknowledged and not stored
    runs_doubled: int  # runs stored more than once (same key)
    states_lost: int  # COMPLETED acknowledged, run not COMPLETED
    states_doubled: int  # runs with a state of one type recorded twice


class _CountingTransport(httpx.AsyncHTTPTransport):
    """Counts every attempt that Prefect's client will retry: the retryable answers and the transport errors."""

    def __init__(self, record: LoadRecord, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            self.record.attempts_retried[type(exc).__name__] += 1
            raise
        if response.status_code in (408, 429, 502, 503):
            self.record.attempts_retried[str(response.status_code)] += 1
            if response.headers.get("Prefect-Maintenance") == "true":
                self.record.maintenance_answers += 1
        return response


class PrefectClientLoad:
    """``clients`` closed-loop clients through the load balancer, until ``stop`` is set; each finishes the operation
    it is in (never cancelled: a cancelled request's outcome is unknown, and would be counted as nothing)."""

    def __init__(self, base_url: str, auth: tuple[str, str], verify: ssl.SSLContext | bool, clients: int = 20,
                 idempotency_keys: bool = True):
        self.base_url = base_url
        self.auth = auth
        self.tls_verify = verify
        self.clients = clients
        # False: runs are created as Prefect's create_flow_run does by default, without a key; each still carries a
        # unique name, by which a run stored twice is counted.
        self.idempotency_keys = idempotency_keys
        self.record = LoadRecord()
        self.flow_id = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def _client(self) -> httpx.AsyncClient:
        from prefect.client.base import PrefectHttpxAsyncClient

        transport = _CountingTransport(self.record, verify=self.tls_verify)
        # 30 s per attempt, stricter than Prefect's own 60 s (PREFECT_API_REQUEST_TIMEOUT): a request held longer
        # by a fault counts against the stack.
        return PrefectHttpxAsyncClient(base_url=self.base_url, auth=self.auth, transport=transport, timeout=30,
                                       raise_on_all_errors=False, trust_env=False)

    async def _request(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = await client.post(path, json=body)
        except httpx.HTTPError as exc:
            self._error(f"{type(exc).__name__} on POST /{path.split('/')[1]}: {exc}")
            return None
        if not response.is_success:
            self._error(f"HTTP {response.status_code} on POST /{path.split('/')[1]}: {response.text[:160]}")
            return None
        self.record.operations += 1
        answer: dict[str, Any] = response.json()
        return answer

    def _error(self, what: str) -> None:
        self.record.errors.append(what)

    async def _one_client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            key = str(uuid.uuid4())
            create = {"flow_id": self.flow_id, "name": key}
            if self.idempotency_keys:
                create["idempotency_key"] = key
            run = await self._request(client, "/flow_runs/", create)
            if run is None:
                continue
            self.record.created[key] = run["id"]
            for state in STATES:
                change = {"state": {"type": state, "state_details": {"transition_id": str(uuid.uuid4())}},
                          "force": False}
                result = await self._request(client, f"/flow_runs/{run['id']}/set_state", change)
                if result is None:
                    break
                # REJECT with the proposed type is the server's answer to a retried transition it had committed.
                if (result.get("state") or {}).get("type") != state:
                    self._error(f"set_state {state} answered {result.get('status')}: {result.get('details')}")
                    break
                if state == "COMPLETED":
                    self.record.completed.add(run["id"])

    async def _run(self, started: threading.Event) -> None:
        async with self._client() as client:
            answer = await self._request(client, "/flows/", {"name": f"fault-drill-{uuid.uuid4().hex[:8]}"})
            if answer is None:
                raise RuntimeError(f"the drill's flow could not be created: {self.record.errors[-1]}")
            self.flow_id = answer["id"]
            started.set()
            await asyncio.gather(*(self._one_client(client) for _ in range(self.clients)))

    def start(self) -> None:
        """Start the clients in a thread of their own; returns once the drill's flow exists."""
        started = threading.Event()

        def main() -> None:
            try:
                asyncio.run(self._run(started))
            except BaseException as exc:
                self._failure = exc
                started.set()

        self._thread = threading.Thread(target=main, name="fault-drill-load", daemon=True)
        self._thread.start()
        started.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self, timeout_s: float = 300) -> LoadRecord:
        """Let every client finish its operation (Prefect's back-off can take a minute), then return the record."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(f"the drill's clients did not finish within {timeout_s:.0f} s")
        if self._failure is not None:
            raise self._failure
        return self.record

    def verify(self, client: httpx.Client) -> Verification:
        """Read back every run of the drill's flow and its state history."""
        runs: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = client.post("/flow_runs/filter", json={"flows": {"id": {"any_": [self.flow_id]}},
                                                           "limit": 200, "offset": offset})
            page.raise_for_status()
            batch = page.json()
            runs += batch
            if len(batch) < 200:
                break
            offset += 200
        by_key = Counter(run["name"] for run in runs)
        stored = set(by_key)
        current = {run["id"]: (run.get("state") or {}).get("type") for run in runs}
        histories = _histories(client, [run["id"] for run in runs])
        return Verification(
            runs_lost=sum(1 for key in self.record.created if key not in stored),
            runs_doubled=sum(1 for count in by_key.values() if count > 1),
            states_lost=sum(1 for run_id in self.record.completed if current.get(run_id) != "COMPLETED"),
            states_doubled=sum(1 for types in histories.values() if any(n > 1 for n in Counter(types).values())),
        )


def _histories(client: httpx.Client, run_ids: list[str]) -> dict[str, list[str]]:
    """Each run's recorded state types, oldest first."""
    histories = {}
    for run_id in run_ids:
        response = client.get("/flow_run_states/", params={"flow_run_id": run_id})
        response.raise_for_status()
        histories[run_id] = [state["type"] for state in response.json()]
    return histories
