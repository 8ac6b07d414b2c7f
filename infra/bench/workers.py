"""``invoke bench.workers``: how fast the stack's workers pick up and start flow runs, against Prefect's defaults.

One temporary local stack with one process pool and two workers. Each round creates ``runs`` short deployment
runs at a steady pace (as an API client or an automation would: each due at once) and waits for all of them to
finish, alternating the workers' settings between Prefect's defaults (query every 10 s, prefetch 10 s) and the
stack's (the configuration's workers section), on the same stack and database: only the workers restart between
rounds. From each run's state history:

- pickup delay: scheduled start to PENDING (a worker claimed it): the polling interval dominates;
- start delay: scheduled start to RUNNING (the flow's own Python process is up and reported in);
- completed runs per minute, runs lost (not COMPLETED) and runs run twice (more than one RUNNING state).

Goal: the stack's p50 pickup delay at most half of the defaults'.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from infra import console
from infra.api_client import load_balancer_verify
from infra.bench.harness import (
    Verdict,
    allocate_stack_ports,
    api_auth,
    cleaned_up,
    free_port,
    stack_config,
    temporary_workdir,
)
from infra.config import StackConfig, WorkerConfig, WorkPoolConfig
from infra.errors import UserError
from infra.local.deploy import deploy
from infra.local.operate import destroy, settle, unhealthy_summary

POOL = "bench"
WORKERS = 2
PICKUP_GOAL = 0.5  # the stack's p50 pickup delay at most this share of the defaults'
SETTLE_TIMEOUT_S = 180
FINISH_TIMEOUT_S = 900
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
FLOW_FILE = "bench_flow.py"
FLOW_SOURCE = '''from prefect import flow


@flow(name="bench-workers", persist_result=False)
def short() -> int:
    return 1
'''


@dataclass(frozen=True)
class WorkersBenchSettings:
    runs: int = 100
    rounds: int = 2
    # Below what two process workers complete on a 2-core host (about 30 runs a minute, measured when offered 2 a
    # second): a faster pace builds a queue of flow processes waiting for a CPU, and the pickup delay then measures
    # that queue (the workers' own loop waits for a CPU too), not the polling the settings tune.
    pace_s: float = 2.5  # seconds between two run creations


@dataclass
class RoundResult:
    settings: str  # "defaults" or "stack"
    pickup_s: list[float]
    start_s: list[float]
    completed: int
    lost: int
    run_twice: int
    per_minute: float

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "runs": len(self.pickup_s) + self.lost, "completed": self.completed,
                "lost": self.lost, "run_twice": self.run_twice, "per_minute": round(self.per_minute, 1),
                "pickup_p50_s": _round(percentile(self.pickup_s, 50)),
                "pickup_p99_s": _round(percentile(self.pickup_s, 99)),
                "start_p50_s": _round(percentile(self.start_s, 50)),
                "start_p99_s": _round(percentile(self.start_s, 99))}


@dataclass
class WorkersBenchReport:
    settings: WorkersBenchSettings
    stack_settings: dict[str, Any] = field(default_factory=dict)
    rounds: list[RoundResult] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def of(self, name: str) -> list[RoundResult]:
        return [r for r in self.rounds if r.settings == name]

    def pooled(self, name: str, attribute: str) -> list[float]:
        return [value for r in self.of(name) for value in getattr(r, attribute)]

    def as_dict(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "stack_settings": self.stack_settings,
                "rounds": [r.as_dict() for r in self.rounds], "verdicts": [v.as_dict() for v in self.verdicts]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def percentile(values: list[float], pct: float) -> float | None:
    """The nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def judge(report: WorkersBenchReport) -> list[Verdict]:
    defaults = percentile(report.pooled("defaults", "pickup_s"), 50)
    stack = percentile(report.pooled("stack", "pickup_s"), 50)
    lost = sum(r.lost for r in report.rounds)
    twice = sum(r.run_twice for r in report.rounds)
    if defaults is None or stack is None or defaults <= 0:
        pickup = Verdict(f"p50 pickup delay <= {PICKUP_GOAL:g}x Prefect's defaults", "not measured", "no runs")
    else:
        ratio = stack / defaults
        pickup = Verdict(f"p50 pickup delay <= {PICKUP_GOAL:g}x Prefect's defaults",
                         "pass" if ratio <= PICKUP_GOAL else "fail",
                         f"{stack:.2f} s vs {defaults:.2f} s ({ratio:.2f}x)", ratio)
    return [pickup,
            Verdict("0 runs lost", "pass" if lost == 0 else "fail", str(lost)),
            Verdict("0 runs run twice", "pass" if twice == 0 else "fail", str(twice))]


def worker_settings_of(config: StackConfig, name: str) -> StackConfig:
    """``config`` with the workers' polling as Prefect ships it ("defaults") or as configured ("stack")."""
    if name == "stack":
        return config
    return config.model_copy(update={"workers": config.workers.model_copy(
        update={"query_interval_s": None, "prefetch_s": None})})


def run_workers_benchmark(settings: WorkersBenchSettings, configured: StackConfig) -> WorkersBenchReport:
    """Measure on a temporary stack with the workers section of ``configured`` (the operator's configuration)."""
    report = WorkersBenchReport(settings, {"query_interval_s": configured.workers.query_interval_s,
                                           "prefetch_s": configured.workers.prefetch_s})
    with temporary_workdir("prefect-stack-bench-workers-") as workdir:
        taken: set[int] = set()
        base = stack_config(workdir / "stack", allocate_stack_ports(1, taken), replicas=1)
        code = workdir / "flows"
        code.mkdir(mode=0o755)
        (code / FLOW_FILE).write_text(FLOW_SOURCE)
        (code / FLOW_FILE).chmod(0o644)
        # The operator's polling and heartbeat settings; the benchmark's own pool, two plain workers and ports.
        workers = configured.workers.model_copy(update={
            "enabled": True, "pools": [WorkPoolConfig(name=POOL)], "workers": [WorkerConfig(pool=POOL, count=WORKERS)],
            "health_base_port": free_port(taken, run=WORKERS), "flow_code_dir": code, "python": None})
        base = base.model_copy(update={"workers": workers, "backups": base.backups.model_copy(
            update={"schedule_enabled": False})})
        _measure(settings, base, code, report)
    report.verdicts = judge(report)
    return report


def _measure(settings: WorkersBenchSettings, base: StackConfig, code: Path, report: WorkersBenchReport) -> None:
    with cleaned_up("destroy the benchmark stack", lambda: destroy(base)), \
            console.progress().steps("bench.workers", 2 * settings.rounds + 1) as steps:
        console.step(f"deploying a temporary stack with {WORKERS} workers in {base.state_dir}")
        _deploy_settled(base)
        with _client(base) as client:
            deployment = _create_deployment(client, code)
        steps.step("stack deployed, deployment created")
        for round_ in range(1, settings.rounds + 1):
            # defaults, stack, stack, defaults, ...: a drift over the run hits both alike.
            for name in ("defaults", "stack") if round_ % 2 else ("stack", "defaults"):
                config = worker_settings_of(base, name)
                _deploy_settled(config)
                with _client(config) as client:
                    result = _round_of_runs(client, deployment, name, settings)
                report.rounds.append(result)
                steps.step(f"round {round_}, {name}: pickup p50 {percentile(result.pickup_s, 50) or 0:.2f} s, "
                           f"{result.completed}/{settings.runs} completed")


def _deploy_settled(config: StackConfig) -> None:
    deploy(config)
    problems = unhealthy_summary(settle(config, SETTLE_TIMEOUT_S))
    if problems:
        raise UserError(f"the benchmark stack is not healthy: {problems}", fix="read the components' logs")


def _client(config: StackConfig) -> httpx.Client:
    return httpx.Client(base_url=config.api_url, auth=api_auth(config), verify=load_balancer_verify(config),
                        trust_env=False, timeout=30)


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        raise UserError(f"the benchmark's request {response.request.method} {response.request.url.path} got "
                        f"{response.status_code}: {response.text[:300]}", fix="read invoke logs api-1")
    return response.json() if response.content else None


def _create_deployment(client: httpx.Client, code: Path) -> str:
    flow = _checked(client.post("/flows/", json={"name": "bench-workers"}))
    deployment = _checked(client.post("/deployments/", json={
        "name": "bench", "flow_id": flow["id"], "work_pool_name": POOL, "entrypoint": f"{FLOW_FILE}:short",
        "path": str(code), "enforce_parameter_schema": False,
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(code)}}]}))
    return str(deployment["id"])


def _round_of_runs(client: httpx.Client, deployment: str, name: str, settings: WorkersBenchSettings) -> RoundResult:
    ids = []
    next_at = time.monotonic()
    for _ in range(settings.runs):
        ids.append(_checked(client.post(f"/deployments/{deployment}/create_flow_run", json={}))["id"])
        next_at += settings.pace_s
        time.sleep(max(0.0, next_at - time.monotonic()))
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    while True:
        runs = _checked(client.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": ids}},
                                                               "limit": len(ids)}))
        if all(run["state_type"] in FINAL for run in runs) or time.monotonic() > deadline:
            break
        time.sleep(2)
    return _measured(client, name, runs)


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _measured(client: httpx.Client, name: str, runs: list[dict[str, Any]]) -> RoundResult:
    pickup, start, ends, starts = [], [], [], []
    lost = twice = 0
    for run in runs:
        states = _checked(client.get("/flow_run_states/", params={"flow_run_id": run["id"]}))
        by_type: dict[str, list[datetime]] = {}
        for state in states:
            by_type.setdefault(state["type"], []).append(_when(state["timestamp"]))
        expected = _when(run["expected_start_time"])
        starts.append(expected)
        if run["state_type"] != "COMPLETED":
            lost += 1
            continue
        if len(by_type.get("RUNNING", [])) > 1:
            twice += 1
        pickup.append((min(by_type["PENDING"]) - expected).total_seconds())
        start.append((min(by_type["RUNNING"]) - expected).total_seconds())
        ends.append(_when(run["end_time"]))
    span_s = (max(ends) - min(starts)).total_seconds() if ends else 0.0
    return RoundResult(name, pickup, start, len(ends), lost, twice, 60 * len(ends) / span_s if span_s else 0.0)


def spread(values: list[float | None]) -> str:
    """'a-b' of like rounds' figures, for the report's spread between rounds."""
    present = [v for v in values if v is not None]
    return f"{min(present):.2f}-{max(present):.2f}" if present else "-"
