"""`invoke bench.api`: flow-run creations per second and their latency at several numbers of concurrent clients.

Three targets are measured one after the other in the same run, so the numbers compared come from the same
host in the same minutes:

- ``load_balancer``: a freshly deployed temporary stack (HAProxy in front of N API replicas, PgBouncer,
  PostgreSQL, Redis, background services), reached through HAProxy as every client reaches it;
- ``one_replica_direct``: the same stack's first API replica, reached on its own port without HAProxy;
- ``sqlite_single``: a default ``prefect server start`` (SQLite, services in the same process, no auth): what a
  single user starts from.

The stack is destroyed before the SQLite server starts, so neither takes CPU from the other. The load generator
runs in this process and shares the host's cores with the servers: the numbers compare targets with each other;
they are not the capacity of a dedicated server.

Each simulated client owns one keep-alive HTTP connection and creates flow runs in a closed loop (one request
in flight at a time), each with its own idempotency key, as Prefect's client would. Requests that start during
the warm-up are not counted; the others are, until the measured window ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infra import console
from infra.api_client import load_balancer_verify
from infra.bench.harness import (
    MAX_API_REPLICAS,
    Verdict,
    VerdictStatus,
    allocate_stack_ports,
    api_auth,
    format_ms,
    free_port,
    log_tail,
    stack_config,
    temporary_stack,
    temporary_workdir,
)
from infra.errors import UserError
from infra.progress import StepMeter

DEFAULT_CONCURRENCY = (1, 20, 50)
DEFAULT_DURATION_S = 15.0
WARMUP_S = 2.0
DEFAULT_REPLICAS = 2

# Bounds: the benchmark must end, and must not turn into a load test of the host.
MAX_CONCURRENCY = 200
MAX_DURATION_S = 600.0
MAX_REQUESTS_PER_LEVEL = 100_000
REQUEST_TIMEOUT_S = 30.0
SQLITE_START_TIMEOUT_S = 120.0
STOP_GRACE_S = 20.0

# The goals from the issue, each measured at its own number of clients.
PEAK_CLIENTS = 50  # 0 errors through the load balancer
MAX_ERRORS_AT_PEAK = 0
THROUGHPUT_CLIENTS = 20  # through the load balancer at least as fast as one replica reached directly
LATENCY_CLIENTS = 1  # p50 through the load balancer no more than 1.5x the SQLite server's
MAX_P50_RATIO = 1.5

LOAD_BALANCER = "load_balancer"
ONE_REPLICA = "one_replica_direct"
SQLITE = "sqlite_single"
LABELS = {
    LOAD_BALANCER: "load balancer", ONE_REPLICA: "one replica direct", SQLITE: "sqlite single",
    # --target compose (infra/bench/compose.py): both load balancers, side by side
    "local_load_balancer": "local load balancer", "compose_load_balancer": "compose load balancer",
}

# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchSettings:
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    duration_s: float = DEFAULT_DURATION_S
    warmup_s: float = WARMUP_S
    replicas: int = DEFAULT_REPLICAS

    def __post_init__(self) -> None:
        if not self.concurrency:
            raise UserError("no concurrency level to measure", fix="pass e.g. --concurrency 1,20,50")
        for level in self.concurrency:
            if not 1 <= level <= MAX_CONCURRENCY:
                raise UserError(
                    f"concurrency {level} is out of range", fix=f"use 1 to {MAX_CONCURRENCY} concurrent clients"
                )
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise UserError(
                f"duration {self.duration_s:g}s is out of range", fix=f"use more than 0 and at most {MAX_DURATION_S:g}"
            )
        if not 0 <= self.warmup_s <= MAX_DURATION_S:
            raise UserError(f"warm-up {self.warmup_s:g}s is out of range", fix=f"use 0 to {MAX_DURATION_S:g}")
        if not 1 <= self.replicas <= MAX_API_REPLICAS:
            raise UserError(f"{self.replicas} replicas is out of range", fix=f"use 1 to {MAX_API_REPLICAS}")

    def estimated_s(self) -> float:
        """Rough wall time: three targets per level, plus deploying the stack and starting the SQLite server."""
        return len(self.concurrency) * 3 * (self.warmup_s + self.duration_s) + 45 + 20


def parse_concurrency(text: str) -> tuple[int, ...]:
    """'1,20,50' -> (1, 20, 50); duplicates dropped, order kept."""
    levels: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            level = int(part)
        except ValueError:
            raise UserError(
                f"--concurrency: {part!r} is not a whole number", fix="pass numbers separated by commas, e.g. 1,20,50"
            ) from None
        if level not in levels:
            levels.append(level)
    if not levels:
        raise UserError("--concurrency names no level", fix="pass numbers separated by commas, e.g. 1,20,50")
    return tuple(levels)


# ---------------------------------------------------------------- statistics (pure)


@dataclass(frozen=True)
class RequestSample:
    started_s: float  # since the level started (warm-up included)
    latency_s: float
    error: str | None = None  # None: a 2xx answer; else "HTTP 503", "ReadTimeout", ...

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class LevelResult:
    target: str
    concurrency: int
    duration_s: float
    requests: int  # started inside the measured window
    errors: int
    throughput_rps: float  # flow runs created (2xx) per second of the window
    p50_ms: float | None  # latency of the successful requests; None when there was none
    p99_ms: float | None
    error_kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("throughput_rps", "p50_ms", "p99_ms"):
            if data[key] is not None:
                data[key] = round(data[key], 3)
        return data


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``pct`` percent of the values at or below it."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    rank = math.ceil(pct / 100 * len(ordered))
    return ordered[rank - 1]


def summarise(
    target: str, concurrency: int, samples: Sequence[RequestSample], warmup_s: float, duration_s: float
) -> LevelResult:
    """Aggregate the requests that started inside the measured window [warmup_s, warmup_s + duration_s)."""
    end_s = warmup_s + duration_s
    counted = [s for s in samples if warmup_s <= s.started_s < end_s]
    latencies_ms = [s.latency_s * 1000 for s in counted if s.ok]
    kinds = Counter(s.error for s in counted if s.error is not None)
    return LevelResult(
        target=target,
        concurrency=concurrency,
        duration_s=duration_s,
        requests=len(counted),
        errors=len(counted) - len(latencies_ms),
        throughput_rps=len(latencies_ms) / duration_s,
        p50_ms=percentile(latencies_ms, 50) if latencies_ms else None,
        p99_ms=percentile(latencies_ms, 99) if latencies_ms else None,
        error_kinds=dict(kinds.most_common()),
    )


def describe_errors(result: LevelResult) -> str:
    """'HTTP 500: 12, RemoteProtocolError: 3', most frequent first."""
    return ", ".join(f"{kind}: {count}" for kind, count in result.error_kinds.items())


def judge(results: Sequence[LevelResult]) -> list[Verdict]:
    """The issue's three goals, each against the numbers measured in this run."""
    by_key = {(r.target, r.concurrency): r for r in results}
    verdicts = []

    goal = f"{MAX_ERRORS_AT_PEAK} errors at {PEAK_CLIENTS} clients through the load balancer"
    peak = by_key.get((LOAD_BALANCER, PEAK_CLIENTS))
    if peak is None:
        verdicts.append(Verdict(goal, "not measured", f"{PEAK_CLIENTS} clients not in --concurrency"))
    else:
        status: VerdictStatus = "pass" if peak.errors <= MAX_ERRORS_AT_PEAK and peak.requests else "fail"
        kinds = f" ({describe_errors(peak)})" if peak.error_kinds else ""
        verdicts.append(Verdict(goal, status, f"{peak.errors} errors in {peak.requests} requests{kinds}"))

    goal = f"at {THROUGHPUT_CLIENTS} clients, load balancer throughput >= one replica reached directly"
    lb, direct = by_key.get((LOAD_BALANCER, THROUGHPUT_CLIENTS)), by_key.get((ONE_REPLICA, THROUGHPUT_CLIENTS))
    if lb is None or direct is None:
        verdicts.append(Verdict(goal, "not measured", f"{THROUGHPUT_CLIENTS} clients not in --concurrency"))
    else:
        ratio = lb.throughput_rps / direct.throughput_rps if direct.throughput_rps else None
        status = "pass" if lb.throughput_rps > 0 and lb.throughput_rps >= direct.throughput_rps else "fail"
        measured = f"{lb.throughput_rps:.1f}/s vs {direct.throughput_rps:.1f}/s"
        verdicts.append(Verdict(goal, status, measured + (f" (x{ratio:.2f})" if ratio is not None else ""), ratio))

    goal = f"at {LATENCY_CLIENTS} client, load balancer p50 <= {MAX_P50_RATIO:g}x the SQLite server's"
    lb, sqlite = by_key.get((LOAD_BALANCER, LATENCY_CLIENTS)), by_key.get((SQLITE, LATENCY_CLIENTS))
    if lb is None or sqlite is None:
        verdicts.append(Verdict(goal, "not measured", f"{LATENCY_CLIENTS} client not in --concurrency"))
    elif lb.p50_ms is None or sqlite.p50_ms is None:
        measured = f"p50 {format_ms(lb.p50_ms)} vs {format_ms(sqlite.p50_ms)}: no successful request"
        verdicts.append(Verdict(goal, "fail", measured))
    else:
        ratio = lb.p50_ms / sqlite.p50_ms
        status = "pass" if ratio <= MAX_P50_RATIO else "fail"
        measured = f"p50 {format_ms(lb.p50_ms)} vs {format_ms(sqlite.p50_ms)} (x{ratio:.2f})"
        verdicts.append(Verdict(goal, status, measured, ratio))
    return verdicts


@dataclass(frozen=True)
class Target:
    key: str
    api_url: str
    description: str
    # What its HTTPS clients trust (the stack's CA when load_balancer.tls is on); True: the default, or plain HTTP.
    verify: ssl.SSLContext | bool = field(default=True, compare=False)

    @property
    def label(self) -> str:
        return LABELS.get(self.key, self.key)


@dataclass(frozen=True)
class BenchmarkReport:
    targets: dict[str, Target]
    results: list[LevelResult]
    verdicts: list[Verdict]

    @property
    def missed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "fail"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "targets": {
                key: {"label": t.label, "api_url": t.api_url, "description": t.description}
                for key, t in self.targets.items()
            },
            "results": [r.as_dict() for r in self.results],
            "verdicts": [v.as_dict() for v in self.verdicts],
        }


# ---------------------------------------------------------------- load generator


def check_loopback(api_url: str) -> None:
    """The benchmark only ever loads this host: a URL elsewhere is a mistake, not a target."""
    host = httpx.URL(api_url).host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UserError(f"{api_url} is not on this host", fix="benchmark only loopback addresses (127.0.0.1)")


class _Budget:
    """At most this many requests per level, whatever the target's speed."""

    def __init__(self, requests: int) -> None:
        self.remaining = requests

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


async def _create_flow(client: httpx.AsyncClient) -> str:
    try:
        response = await client.post("flows/", json={"name": f"bench-api-{uuid.uuid4().hex[:12]}"})
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach {client.base_url}: {type(exc).__name__}: {exc}",
                        fix="check that the target is running") from None
    if not response.is_success:
        raise UserError(
            f"creating the benchmark's flow at {client.base_url} answered HTTP {response.status_code}: "
            f"{response.text[:200]}",
            fix="check the target's log",
        )
    return str(response.json()["id"])


async def _simulated_client(
    client: httpx.AsyncClient, flow_id: str, index: int, origin: float, stop_s: float,
    budget: _Budget, samples: list[RequestSample],
) -> None:
    sequence = 0
    while True:
        started = time.perf_counter()
        if started - origin >= stop_s or not budget.take():
            return
        sequence += 1
        body = {"flow_id": flow_id, "name": f"bench-{index}-{sequence}", "idempotency_key": str(uuid.uuid4())}
        error = None
        try:
            response = await client.post("flow_runs/", json=body)
            if not response.is_success:
                error = f"HTTP {response.status_code}"
        except (httpx.HTTPError, OSError) as exc:
            error = type(exc).__name__
        samples.append(RequestSample(started - origin, time.perf_counter() - started, error))


async def measure_level(
    api_url: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float = WARMUP_S,
    auth: tuple[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: ssl.SSLContext | bool = True,
) -> list[RequestSample]:
    """Create one flow, then run ``concurrency`` clients creating flow runs of it for warm-up + duration."""
    check_loopback(api_url)
    # One connection per simulated client, as that many separate processes would open.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    base_url = api_url.rstrip("/") + "/"
    samples: list[RequestSample] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=base_url, auth=auth, timeout=REQUEST_TIMEOUT_S, limits=limits,
                    trust_env=False,  # never through a proxy from the environment: loopback only
                    transport=transport, verify=verify,
                )
            )
            for _ in range(concurrency)
        ]
        flow_id = await _create_flow(clients[0])
        stop_s = warmup_s + duration_s
        budget = _Budget(MAX_REQUESTS_PER_LEVEL)
        origin = time.perf_counter()
        loops = (_simulated_client(c, flow_id, i, origin, stop_s, budget, samples) for i, c in enumerate(clients, 1))
        # Each request is bounded by its timeout, so the last one ends at most that long after the window.
        limit_s = stop_s + REQUEST_TIMEOUT_S + 10
        gathered = asyncio.gather(*loops)
        # On Ctrl-C, asyncio.run cancels this coroutine and wait_for leaves the gathered future's CancelledError
        # unread, which asyncio then logs as a traceback at exit: read it, the interruption is reported anyway.
        gathered.add_done_callback(lambda done: None if done.cancelled() else done.exception())
        try:
            await asyncio.wait_for(gathered, timeout=limit_s)
        except TimeoutError:
            raise UserError(
                f"the load generator against {api_url} did not finish within {limit_s:.0f}s",
                fix="the target stopped answering; check its log",
            ) from None
    return samples


def run_level(target: Target, concurrency: int, settings: BenchSettings, auth: tuple[str, str] | None) -> LevelResult:
    return run_level_counted(target, concurrency, settings, auth)[0]


def run_level_counted(
    target: Target, concurrency: int, settings: BenchSettings, auth: tuple[str, str] | None
) -> tuple[LevelResult, int]:
    """``run_level``, and the flow runs created over the whole level, warm-up included: what the target's CPU
    time during the level paid for."""
    console.step(
        f"{target.label}: {concurrency} client(s), {settings.warmup_s:g}s warm-up + {settings.duration_s:g}s measured"
    )
    samples = asyncio.run(
        measure_level(target.api_url, concurrency, settings.duration_s, settings.warmup_s, auth,
                      verify=target.verify)
    )
    result = summarise(target.key, concurrency, samples, settings.warmup_s, settings.duration_s)
    errors = f"[red]{result.errors} errors ({describe_errors(result)})[/red]" if result.errors else "0 errors"
    console.note(
        f"{result.throughput_rps:.1f} flow runs/s, p50 {format_ms(result.p50_ms)}, p99 {format_ms(result.p99_ms)}, "
        f"{result.requests} requests, {errors}"
    )
    return result, sum(s.ok for s in samples)


def _wait_for_health(process: subprocess.Popen[bytes], api_url: str, log: Path) -> None:
    deadline = time.monotonic() + SQLITE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise UserError(
                f"the SQLite prefect server exited with status {code} before answering:\n    {log_tail(log)}",
                fix="run `prefect server start` by hand to see why it does not start",
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.5)
    raise UserError(
        f"the SQLite prefect server did not answer /api/health within {SQLITE_START_TIMEOUT_S:.0f}s:\n"
        f"    {log_tail(log)}",
        fix="the host may be overloaded; retry when it is quieter",
    )


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (it was started in a new session), SIGKILL what remains."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        console.note(f"the SQLite server did not stop within {STOP_GRACE_S:.0f}s; killing it")
    # Anything still in the group (the leader, or a child it left behind) is ours to kill.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@contextlib.contextmanager
def sqlite_server(home: Path, port: int) -> Iterator[str]:
    """A default single-process ``prefect server start`` with its SQLite database in ``home``; yields its API URL."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    prefect = Path(sys.executable).parent / "prefect"
    # Nothing of the operator's Prefect settings (API URL, database, auth) may leak into the baseline.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = home / "server.log"
    api_url = f"http://127.0.0.1:{port}/api"
    with log.open("wb") as log_handle:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_health(process, api_url, log)
        yield api_url
    finally:
        _stop_process_group(process)


def level_done(steps: StepMeter, result: LevelResult) -> None:
    """Advance the run's progress by one measured level, with its headline numbers."""
    steps.step(f"{result.target} at {result.concurrency} client(s): {result.throughput_rps:.1f}/s, "
               f"{result.errors} error(s)")


def _stack_phase(
    workdir: Path, settings: BenchSettings, taken: set[int], steps: StepMeter
) -> tuple[list[Target], list[LevelResult]]:
    ports = allocate_stack_ports(settings.replicas, taken)
    config = stack_config(workdir / "stack", ports, settings.replicas)
    results: list[LevelResult] = []
    with temporary_stack(config):
        auth = api_auth(config)
        lb = Target(
            LOAD_BALANCER, config.api_url,
            f"HAProxy in front of {settings.replicas} API replicas (PgBouncer, PostgreSQL 15, Redis)",
            load_balancer_verify(config),
        )
        direct = Target(
            ONE_REPLICA, f"http://127.0.0.1:{config.api_port(1)}/api",
            "api-1 of the same stack on its own port, without HAProxy",
        )
        # Alternate the two at each level: both see the same database size and the same host load.
        for level in settings.concurrency:
            for target in (lb, direct):
                results.append(run_level(target, level, settings, auth))
                level_done(steps, results[-1])
    return [lb, direct], results


def _sqlite_phase(
    workdir: Path, settings: BenchSettings, taken: set[int], steps: StepMeter
) -> tuple[Target, list[LevelResult]]:
    home = workdir / "sqlite-home"
    port = free_port(taken)  # chosen only now: the stack's deploy took minutes
    console.step(f"starting a default `prefect server start` (SQLite in {home}) on port {port}")
    results: list[LevelResult] = []
    with sqlite_server(home, port) as api_url:
        target = Target(SQLITE, api_url, "default `prefect server start`: SQLite, services in process, no auth")
        for level in settings.concurrency:
            results.append(run_level(target, level, settings, auth=None))
            level_done(steps, results[-1])
        console.step("stopping the SQLite server")
    return target, results


def run_benchmark(settings: BenchSettings) -> BenchmarkReport:
    """Deploy, measure and remove each target in turn; every temporary process and directory is gone afterwards."""
    console.step(
        f"benchmarking flow-run creation at {', '.join(map(str, settings.concurrency))} client(s); "
        f"this takes about {settings.estimated_s() / 60:.0f} min"
    )
    taken: set[int] = set()
    levels = 3 * len(settings.concurrency)  # three targets, each at every concurrency
    with temporary_workdir("prefect-stack-bench-") as workdir, \
            console.progress().steps("measurements", levels) as steps:
        stack_targets, stack_results = _stack_phase(workdir, settings, taken, steps)
        sqlite_target, sqlite_results = _sqlite_phase(workdir, settings, taken, steps)
    results = stack_results + sqlite_results
    targets = {t.key: t for t in (*stack_targets, sqlite_target)}
    return BenchmarkReport(targets, results, judge(results))
