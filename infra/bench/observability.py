"""``invoke bench.observability``: what the observability layer costs, against the same stack without it.

1. Flow-run creation at 20 clients through the load balancer, alternating the layer off (no Prometheus, no
   exporters, no tracing) and on (Prometheus, Alertmanager, every exporter, and tracing of every request to a
   local OTLP endpoint), on one stack and one database, so host load and database size affect both alike.
   Target: on/off throughput >= 0.95.
2. The Prefect exporter's scrape time on a generated history of at least a million flow runs across a few
   hundred deployments and tens of work pools. Target: the slowest of the scrapes <= 1 s.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from infra import console
from infra.api_client import load_balancer_verify
from infra.backup.database import local_database
from infra.bench.api import BenchSettings, LevelResult, Target, run_level
from infra.bench.harness import (
    Verdict,
    allocate_stack_ports,
    api_auth,
    cleaned_up,
    stack_config,
    temporary_workdir,
)
from infra.bench.otlp_sink import OtlpSink
from infra.config import StackConfig
from infra.errors import UserError
from infra.local.deploy import deploy
from infra.local.operate import destroy, settle, unhealthy_summary

THROUGHPUT_GOAL = 0.95
SCRAPE_GOAL_S = 1.0
SETTLE_TIMEOUT_S = 180

_GENERATE = """
WITH pools AS (
    INSERT INTO work_pool (name, type) SELECT 'bench-pool-' || g, 'process' FROM generate_series(1, %(pools)s) g
    RETURNING id, name
), queues AS (
    INSERT INTO work_queue (name, work_pool_id) SELECT 'default', id FROM pools RETURNING id, work_pool_id
), workers AS (
    INSERT INTO worker (name, work_pool_id, last_heartbeat_time, status)
    SELECT 'worker-' || w, p.id, now() - (w * interval '20 seconds'), 'ONLINE'
    FROM pools p CROSS JOIN generate_series(1, 2) w RETURNING id
)
INSERT INTO deployment (name, flow_id, work_queue_id, work_queue_name)
SELECT 'bench-deployment-' || d, %(flow)s, q.id, 'default'
FROM generate_series(1, %(deployments)s) d
JOIN (SELECT id, row_number() OVER () - 1 AS n FROM queues) q ON q.n = mod(d, %(pools)s)
"""
# A history as an operator's database holds it: almost everything finished over the last month, a few
# thousand runs scheduled, late, running.
_GENERATE_RUNS = """
INSERT INTO flow_run (flow_id, deployment_id, work_queue_id, name, state_type, state_name, expected_start_time,
                      start_time, end_time)
SELECT %(flow)s, d.id, d.work_queue_id, 'bench-' || g, s.type::state_type, s.name, s.expected,
       CASE WHEN s.type IN ('SCHEDULED', 'PENDING') THEN NULL ELSE s.expected END,
       CASE WHEN s.type IN ('COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED')
            THEN s.expected + interval '5 minutes' END
FROM generate_series(1, %(runs)s) g
JOIN (SELECT id, work_queue_id, row_number() OVER () - 1 AS n FROM deployment
      WHERE name LIKE 'bench-deployment-%%') d ON d.n = mod(g, %(deployments)s)
CROSS JOIN LATERAL (
    SELECT CASE WHEN mod(g, 1000) = 1 THEN 'SCHEDULED' WHEN mod(g, 1000) = 2 THEN 'RUNNING'
                WHEN mod(g, 100) = 3 THEN 'FAILED' WHEN mod(g, 200) = 4 THEN 'CRASHED' ELSE 'COMPLETED' END AS type,
           CASE WHEN mod(g, 2000) = 1 THEN 'Late' WHEN mod(g, 1000) = 1 THEN 'Scheduled' WHEN mod(g, 1000) = 2
                THEN 'Running' WHEN mod(g, 100) = 3 THEN 'Failed' WHEN mod(g, 200) = 4 THEN 'Crashed'
                ELSE 'Completed' END AS name,
           CASE WHEN mod(g, 1000) = 1 AND mod(g, 2000) <> 1 THEN now() + g * interval '1 second'
                ELSE now() - (g::float / %(runs)s) * interval '30 days' END AS expected
) s
"""


@dataclass(frozen=True)
class ObservabilitySettings:
    clients: int = 20
    duration_s: float = 20.0
    warmup_s: float = 5.0
    rounds: int = 2
    flow_runs: int = 1_000_000
    deployments: int = 300
    work_pools: int = 50
    scrapes: int = 10
    replicas: int = 2

    def __post_init__(self) -> None:
        if self.flow_runs < 1 or self.deployments < 1 or self.work_pools < 1 or self.deployments < self.work_pools:
            raise UserError("flow runs, deployments and work pools must be positive, and deployments >= work pools",
                            fix="e.g. --flow-runs 1000000 --deployments 300 --work-pools 50")
        if not 1 <= self.rounds <= 10 or not 1 <= self.scrapes <= 100:
            raise UserError("rounds must be 1-10 and scrapes 1-100", fix="e.g. --rounds 2 --scrapes 10")


@dataclass
class ObservabilityReport:
    settings: ObservabilitySettings
    off: list[LevelResult] = field(default_factory=list)
    on: list[LevelResult] = field(default_factory=list)
    scrape_s: list[float] = field(default_factory=list)
    generated_s: float = 0.0
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def throughput_ratio(self) -> float:
        off = statistics.fmean(r.throughput_rps for r in self.off)
        return statistics.fmean(r.throughput_rps for r in self.on) / off if off else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "throughput_off": [r.as_dict() for r in self.off], "throughput_on": [r.as_dict() for r in self.on],
            "throughput_ratio": round(self.throughput_ratio, 3),
            "scrape_seconds": [round(s, 3) for s in self.scrape_s],
            "scrape_median_s": round(statistics.median(self.scrape_s), 3) if self.scrape_s else None,
            "scrape_max_s": round(max(self.scrape_s), 3) if self.scrape_s else None,
            "generated_s": round(self.generated_s, 1),
            "verdicts": [v.as_dict() for v in self.verdicts],
        }


def judge(report: ObservabilityReport) -> list[Verdict]:
    ratio = report.throughput_ratio
    slowest = max(report.scrape_s) if report.scrape_s else float("inf")
    return [
        Verdict(f"throughput with observability >= {THROUGHPUT_GOAL:.2f}x without", "pass" if ratio >= THROUGHPUT_GOAL
                else "fail", f"{ratio:.3f}x", ratio),
        Verdict(f"exporter scrape <= {SCRAPE_GOAL_S:.0f} s on {report.settings.flow_runs} flow runs",
                "pass" if slowest <= SCRAPE_GOAL_S else "fail", f"slowest {slowest:.3f} s", slowest / SCRAPE_GOAL_S),
    ]


def layer_config(config: StackConfig, on: bool, sink: OtlpSink) -> StackConfig:
    """``config`` with the observability layer off, or on with every span sent to ``sink``."""
    monitoring = config.monitoring.model_copy(update={"enabled": on})
    # Every request traced (sample_ratio 1.0, not the production default): the layer's worst case is what is bounded.
    tracing = config.tracing.model_copy(update={"enabled": on, "otlp_endpoint": sink.endpoint if on else None,
                                                "sample_ratio": 1.0})
    return config.model_copy(update={"monitoring": monitoring, "tracing": tracing})


def _deploy_settled(config: StackConfig) -> None:
    deploy(config)
    problems = unhealthy_summary(settle(config, SETTLE_TIMEOUT_S))
    if problems:
        raise UserError(f"the benchmark stack is not healthy: {problems}", fix="read the components' logs")


def _generate_history(config: StackConfig, settings: ObservabilitySettings) -> float:
    started = time.monotonic()
    with local_database(config).connect() as conn:
        row = conn.execute("INSERT INTO flow (name) VALUES ('bench-observability') RETURNING id").fetchone()
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        params = {"flow": row[0], "pools": settings.work_pools, "deployments": settings.deployments,
                  "runs": settings.flow_runs}
        conn.execute(_GENERATE, params)
        conn.execute(_GENERATE_RUNS, params)
        conn.commit()
        conn.execute("ANALYZE flow_run")
        conn.commit()
    return time.monotonic() - started


def _scrape(config: StackConfig) -> float:
    url = f"http://127.0.0.1:{config.monitoring.prefect_exporter_port}/metrics"
    started = time.perf_counter()
    response = httpx.get(url, timeout=30, trust_env=False)
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or "prefect_exporter_up 1.0" not in response.text:
        raise UserError(f"the Prefect exporter failed its scrape ({response.status_code})",
                        fix="read the prefect-exporter log in the benchmark's state directory")
    return elapsed


def run_observability_benchmark(settings: ObservabilitySettings) -> ObservabilityReport:
    report = ObservabilityReport(settings)
    with temporary_workdir("prefect-stack-bench-observability-") as workdir:
        base = stack_config(workdir / "stack", allocate_stack_ports(settings.replicas, set()), settings.replicas)
        base = base.model_copy(update={"backups": base.backups.model_copy(update={"schedule_enabled": False})})
        _measure(settings, base, report)
    report.verdicts = judge(report)
    return report


def _measure(settings: ObservabilitySettings, base: StackConfig, report: ObservabilityReport) -> None:
    level = BenchSettings(concurrency=(settings.clients,), duration_s=settings.duration_s,
                          warmup_s=settings.warmup_s, replicas=settings.replicas)
    # The stack is redeployed with the layer on and off, so it is destroyed here, not by temporary_stack.
    with OtlpSink() as sink, cleaned_up("destroy the benchmark stack", lambda: destroy(base)), \
            console.progress().steps("bench.observability", 2 * settings.rounds + 2) as steps:
        console.step(f"deploying a temporary stack in {base.state_dir}")
        for round_ in range(1, settings.rounds + 1):
            # off, on, on, off, ...: a drift over the run (caches warming, the database growing) hits both alike.
            for on in (False, True) if round_ % 2 else (True, False):
                config = layer_config(base, on, sink)
                _deploy_settled(config)
                auth = api_auth(config)
                target = Target("observability-on" if on else "observability-off", config.api_url,
                                "with" if on else "without", load_balancer_verify(config))
                result = run_level(target, settings.clients, level, auth)
                (report.on if on else report.off).append(result)
                steps.step(f"round {round_}, layer {'on' if on else 'off'}: {result.throughput_rps:.1f} runs/s")
        config = layer_config(base, True, sink)
        console.step(f"generating {settings.flow_runs} flow runs over {settings.deployments} deployments and "
                     f"{settings.work_pools} work pools")
        report.generated_s = _generate_history(config, settings)
        steps.step(f"history generated in {report.generated_s:.0f}s")
        report.scrape_s = [_scrape(config) for _ in range(settings.scrapes)]
        steps.step(f"{settings.scrapes} scrapes, slowest {max(report.scrape_s):.3f}s")
