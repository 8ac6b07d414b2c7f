"""``invoke bench.observability``: what each part of the observability layer costs, against the same stack without.

1. Flow-run creation at 20 clients through the load balancer, with the stack bare ("off": no Prometheus, no
   exporters, no tracing, plain-text logs) and with each chosen layer on (see ``LAYERS``), on one stack and one
   database, so host load and database size affect all alike. Each round measures off and every chosen layer; the
   next round measures them in the reverse order (ABBA, generalised: A B C, C B A, ...), so a drift over the run
   (caches warming, the database growing) hits every configuration alike over an even number of rounds. Each step
   redeploys the same stack with only what changes (``invoke deploy`` restarts only changed programs).
   Goals (>= 0.95x of off): the production default (monitoring, and tracing sampled at the configuration's ratio)
   and JSON logs. The other layers are costs, reported without a goal.
2. The Prefect exporter's scrape time on a generated history of at least a million flow runs across a few
   hundred deployments and tens of work pools. Target: the slowest of the scrapes <= 1 s. Optional (--no-scrape).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from infra import console
from infra.api_client import load_balancer_verify
from infra.backup.database import local_database
from infra.bench.api import BenchSettings, LevelResult, Target, run_level
from infra.bench.harness import (
    Verdict,
    VerdictStatus,
    allocate_stack_ports,
    api_auth,
    cleaned_up,
    log_tail,
    stack_config,
    temporary_workdir,
)
from infra.bench.otlp_sink import OtlpSink
from infra.config import StackConfig
from infra.errors import UserError
from infra.layout import StateLayout
from infra.local.deploy import deploy
from infra.local.operate import destroy, settle, unhealthy_summary
from infra.local.plan import build_plan
from infra.render.effective_config import effective_config_file
from infra.secrets import ensure_secrets

THROUGHPUT_GOAL = 0.95
SCRAPE_GOAL_S = 1.0
SETTLE_TIMEOUT_S = 180
OFF = "off"


@dataclass(frozen=True)
class Layer:
    """One configuration measured against off: what it turns on, and whether a goal applies to it."""

    name: str
    description: str
    monitoring: bool = False
    scrape_interval_s: int | None = None  # None: the configuration's
    # "sampled": the configuration's sample_ratio (what production runs); "all": every request (the worst case).
    tracing: Literal["off", "sampled", "all"] = "off"
    json_logs: bool = False
    goal: str | None = None  # None: a cost, reported without a goal


# In round order: neighbours differ by little, so each step of a round redeploys little. Every layer measures
# one thing against off; the tracing layers include monitoring because production never traces without it.
LAYERS: dict[str, Layer] = {layer.name: layer for layer in (
    Layer("tracing-all", "monitoring + tracing of every request (sample_ratio 1.0)", monitoring=True,
          tracing="all"),
    Layer("tracing-sampled", "the production default: monitoring + tracing at the configuration's sample_ratio",
          monitoring=True, tracing="sampled", goal="the production default, monitoring and tracing sampled"),
    Layer("monitoring-5s", "monitoring with every target scraped every 5 s", monitoring=True, scrape_interval_s=5),
    Layer("monitoring", "Prometheus, Alertmanager and every exporter at the configured scrape interval, no tracing",
          monitoring=True),
    Layer(OFF, "no Prometheus, no exporters, no tracing, plain-text logs"),
    Layer("json-logs", "off, with JSON log lines instead of plain text (logs.format json)", json_logs=True,
          goal="JSON logs"),
)}
# The two goals, and monitoring alone so that tracing's share shows: an estimated 15 minutes on 2 cores with the scrape.
DEFAULT_LAYERS = ("monitoring", "tracing-sampled", "json-logs")
# How they are listed and reported: from the cheapest part up, then the logs.
CHOICES = ("monitoring", "monitoring-5s", "tracing-sampled", "tracing-all", "json-logs")


def parse_layers(text: str) -> tuple[str, ...]:
    """--layers: comma-separated layer names, or "all"; unknown names are refused naming the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return CHOICES
    unknown = [n for n in names if n not in CHOICES]
    if unknown or not names:
        raise UserError(f"unknown layer(s) {', '.join(unknown) or '(none given)'} in --layers",
                        fix=f"use a comma-separated list of {', '.join(CHOICES)}, or all")
    return tuple(dict.fromkeys(names))


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
    layers: tuple[str, ...] = DEFAULT_LAYERS
    scrape: bool = True
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
        if not self.layers or any(name not in CHOICES for name in self.layers):
            raise UserError(f"layers {', '.join(self.layers) or '(none)'}: each must be one of {', '.join(CHOICES)}",
                            fix="e.g. --layers monitoring,tracing-sampled")
        self.level()  # refuses a duration, warm-up or replica count out of range before anything is deployed

    def level(self) -> BenchSettings:
        return BenchSettings(concurrency=(self.clients,), duration_s=self.duration_s, warmup_s=self.warmup_s,
                             replicas=self.replicas)


def round_order(layers: Sequence[str], rounds: int) -> list[list[str]]:
    """Each round's configurations: off and ``layers`` in LAYERS' order, every other round reversed. Over an even
    number of rounds every configuration's mean position is the same, so a linear drift cancels out; a round
    starts with the configuration the previous one ended with, which needs no redeploy."""
    one = [name for name in LAYERS if name == OFF or name in layers]
    return [one if index % 2 == 0 else one[::-1] for index in range(rounds)]


@dataclass(frozen=True)
class LayerCost:
    """A layer's rounds against off's: the throughput ratio of the means, and the spread between like rounds."""

    layer: str
    off_rps: list[float]
    on_rps: list[float]

    @property
    def ratio(self) -> float:
        off = statistics.fmean(self.off_rps) if self.off_rps else 0.0
        return statistics.fmean(self.on_rps) / off if off and self.on_rps else 0.0

    @property
    def spread(self) -> float | None:
        """The larger of off's and the layer's (max - min) / mean over their rounds, in the ratio's units; None
        with one round each (no like rounds to compare)."""
        if len(self.off_rps) < 2 or len(self.on_rps) < 2:
            return None
        return max(relative_range(self.off_rps) or 0.0, relative_range(self.on_rps) or 0.0)

    @property
    def within_spread(self) -> bool:
        """The cost is no larger than the spread between like rounds: the rounds cannot tell it from noise."""
        return self.spread is None or abs(1 - self.ratio) <= self.spread

    def as_dict(self) -> dict[str, Any]:
        layer = LAYERS[self.layer]
        return {
            "layer": self.layer, "description": layer.description, "goal": layer.goal,
            "off_rps": [round(x, 3) for x in self.off_rps], "on_rps": [round(x, 3) for x in self.on_rps],
            "off_range_rps": _range(self.off_rps), "on_range_rps": _range(self.on_rps),
            "ratio": round(self.ratio, 3), "spread": None if self.spread is None else round(self.spread, 3),
            "within_spread": self.within_spread,
        }


def relative_range(values: list[float]) -> float | None:
    """(max - min) / mean of like rounds; None with fewer than two."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return (max(values) - min(values)) / mean if mean else 0.0


def _range(values: list[float]) -> list[float] | None:
    return [round(min(values), 3), round(max(values), 3)] if values else None


@dataclass
class ObservabilityReport:
    settings: ObservabilitySettings
    # Each configuration's rounds (off and every measured layer), in the order measured.
    rounds: dict[str, list[LevelResult]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # every measurement, in order
    sample_ratio: float = 0.1  # the configuration's, used by tracing-sampled
    # Layers not measured, and why (one that deploys nothing different from off).
    skipped: dict[str, str] = field(default_factory=dict)
    scrape_s: list[float] = field(default_factory=list)
    generated_s: float = 0.0
    verdicts: list[Verdict] = field(default_factory=list)

    def cost(self, layer: str) -> LayerCost | None:
        if layer not in self.rounds or layer == OFF:
            return None
        return LayerCost(layer, [r.throughput_rps for r in self.rounds.get(OFF, [])],
                         [r.throughput_rps for r in self.rounds[layer]])

    @property
    def costs(self) -> list[LayerCost]:
        return [cost for name in CHOICES if (cost := self.cost(name)) is not None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "sample_ratio": self.sample_ratio,
            "order": self.order,
            "throughput": {name: [r.as_dict() for r in results] for name, results in self.rounds.items()},
            "costs": [cost.as_dict() for cost in self.costs],
            "skipped_layers": self.skipped,
            "scrape_seconds": [round(s, 3) for s in self.scrape_s],
            "scrape_median_s": round(statistics.median(self.scrape_s), 3) if self.scrape_s else None,
            "scrape_max_s": round(max(self.scrape_s), 3) if self.scrape_s else None,
            "generated_s": round(self.generated_s, 1),
            "verdicts": [v.as_dict() for v in self.verdicts],
        }


def judge_layer(report: ObservabilityReport, name: str) -> Verdict:
    """A goal layer's verdict. Inconclusive, not a pass or a miss, when the spread between like rounds is larger
    than the effect the verdict claims: the distance between the measured ratio and the goal."""
    layer = LAYERS[name]
    sampled = f" at {report.sample_ratio:g}" if layer.tracing == "sampled" else ""
    goal = f"{layer.goal}{sampled}: throughput >= {THROUGHPUT_GOAL:.2f}x of off"
    cost = report.cost(name)
    if cost is None:
        return Verdict(goal, "not measured", report.skipped.get(name, f"--layers does not include {name}"))
    ratio, spread = cost.ratio, cost.spread
    if spread is None:
        return Verdict(goal, "inconclusive", f"{ratio:.3f}x; one round each: no spread between like rounds "
                                             "to judge it by (use --rounds 2 or more)", ratio)
    measured = f"{ratio:.3f}x, spread between like rounds {spread:.1%}"
    margin = abs(ratio - THROUGHPUT_GOAL)
    if spread > margin:
        return Verdict(goal, "inconclusive", f"{measured}, larger than the {margin:.1%} between the ratio and the "
                                             "goal (measure again on an idle host, or with more rounds)", ratio)
    status: VerdictStatus = "pass" if ratio >= THROUGHPUT_GOAL else "fail"
    return Verdict(goal, status, measured, ratio)


def judge(report: ObservabilityReport) -> list[Verdict]:
    verdicts = [judge_layer(report, name) for name, layer in LAYERS.items() if layer.goal is not None]
    scrape_goal = f"exporter scrape <= {SCRAPE_GOAL_S:.0f} s on {report.settings.flow_runs} flow runs"
    if not report.scrape_s:
        verdicts.append(Verdict(scrape_goal, "not measured", "--no-scrape"))
    else:
        slowest = max(report.scrape_s)
        verdicts.append(Verdict(scrape_goal, "pass" if slowest <= SCRAPE_GOAL_S else "fail",
                                f"slowest {slowest:.3f} s", slowest / SCRAPE_GOAL_S))
    return verdicts


def layer_config(config: StackConfig, name: str, otlp_endpoint: str) -> StackConfig:
    """``config`` with exactly the layer ``name`` on (see ``LAYERS``), spans (if any) sent to ``otlp_endpoint``.

    Every layer's logs go to files only (logs.export_otlp off): the sink takes spans, and log shipping is not part
    of what a layer measures."""
    layer = LAYERS[name]
    monitoring = config.monitoring.model_copy(update={
        "enabled": layer.monitoring,
        "scrape_interval_s": layer.scrape_interval_s or config.monitoring.scrape_interval_s,
    })
    tracing = config.tracing.model_copy(update={
        "enabled": layer.tracing != "off",
        "otlp_endpoint": otlp_endpoint if layer.tracing != "off" else None,
        "sample_ratio": 1.0 if layer.tracing == "all" else config.tracing.sample_ratio,
    })
    logs = config.logs.model_copy(update={"format": "json" if layer.json_logs else "text", "export_otlp": False})
    return config.model_copy(update={"monitoring": monitoring, "tracing": tracing, "logs": logs})


def renders_alike(a: StackConfig, b: StackConfig, secrets_dir: Path) -> bool:
    """Whether the two configurations deploy the same programs and files: a layer that changes nothing (JSON logs
    before the stack writes them) would measure noise and pass."""
    secrets = ensure_secrets(secrets_dir)
    # The effective configuration differs whatever changed: what the processes run with is what matters.
    effective = effective_config_file(a, StateLayout(a.state_dir)).path

    def rendered(config: StackConfig) -> tuple[Any, ...]:
        plan = build_plan(config, secrets)
        return (tuple(p.fingerprint() for p in plan.programs),
                tuple(f.content for f in plan.extra_files if f.path != effective), plan.supervisor_conf.content)

    return rendered(a) == rendered(b)


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
    port = config.monitoring.prefect_exporter_port
    url = f"http://127.0.0.1:{port}/metrics"
    log = StateLayout(config.state_dir).log_file("prefect-exporter")
    # The state directory goes with the benchmark: the log's last lines go into the message.
    fix = ("read the exporter's log lines above (the benchmark's state directory is removed when it ends); "
           "--no-scrape measures the throughput alone")
    started = time.perf_counter()
    try:
        response = httpx.get(url, timeout=30, trust_env=False)
    except httpx.TransportError as exc:
        raise UserError(f"the Prefect exporter on 127.0.0.1:{port} did not answer its scrape ({type(exc).__name__}: "
                        f"{exc}); the end of its log {log}:\n    {log_tail(log)}", fix=fix) from exc
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or "prefect_exporter_up 1.0" not in response.text:
        raise UserError(f"the Prefect exporter on 127.0.0.1:{port} failed its scrape (HTTP {response.status_code}); "
                        f"the end of its log {log}:\n    {log_tail(log)}", fix=fix)
    return elapsed


def run_observability_benchmark(settings: ObservabilitySettings) -> ObservabilityReport:
    with temporary_workdir("prefect-stack-bench-observability-") as workdir:
        base = stack_config(workdir / "stack", allocate_stack_ports(settings.replicas, set()), settings.replicas)
        base = base.model_copy(update={"backups": base.backups.model_copy(update={"schedule_enabled": False})})
        report = ObservabilityReport(settings, sample_ratio=base.tracing.sample_ratio)
        with OtlpSink() as sink:
            configs = {name: layer_config(base, name, sink.endpoint) for name in LAYERS}
            for name in settings.layers:
                if renders_alike(configs[OFF], configs[name], workdir / "render-secrets"):
                    report.skipped[name] = "deploys nothing different from off (not built into the stack yet)"
                    console.note(f"[yellow]layer {name} not measured[/yellow]: {report.skipped[name]}")
            _measure(settings, base, configs, report)
    report.verdicts = judge(report)
    return report


def _measure(settings: ObservabilitySettings, base: StackConfig, configs: dict[str, StackConfig],
             report: ObservabilityReport) -> None:
    level = settings.level()
    layers = [name for name in settings.layers if name not in report.skipped]
    # Nothing to compare off with: no throughput rounds at all.
    order = round_order(layers, settings.rounds) if layers else []
    total = sum(len(r) for r in order) + (2 if settings.scrape else 0)
    # The stack is redeployed layer by layer, so it is destroyed here, not by temporary_stack.
    with cleaned_up("destroy the benchmark stack", lambda: destroy(base)), \
            console.progress().steps("bench.observability", total) as steps:
        console.step(f"deploying a temporary stack in {base.state_dir}")
        deployed: str | None = None
        for index, names in enumerate(order, start=1):
            for name in names:
                config = configs[name]
                if name != deployed:
                    _deploy_settled(config)
                    deployed = name
                target = Target(f"observability-{name}", config.api_url, LAYERS[name].description,
                                load_balancer_verify(config))
                result = run_level(target, settings.clients, level, api_auth(config))
                report.rounds.setdefault(name, []).append(result)
                report.order.append(name)
                steps.step(f"round {index}, {name}: {result.throughput_rps:.1f} runs/s")
        if not settings.scrape:
            return
        # The exporter runs only with monitoring on: the last round may have ended on a layer without it.
        scraped = deployed if deployed is not None and configs[deployed].monitoring.enabled else "monitoring"
        config = configs[scraped]
        if scraped != deployed:
            console.step("deploying the stack with monitoring on for the exporter's scrape")
            _deploy_settled(config)
        console.step(f"generating {settings.flow_runs} flow runs over {settings.deployments} deployments and "
                     f"{settings.work_pools} work pools")
        report.generated_s = _generate_history(config, settings)
        steps.step(f"history generated in {report.generated_s:.0f}s")
        report.scrape_s = [_scrape(config) for _ in range(settings.scrapes)]
        steps.step(f"{settings.scrapes} scrapes, slowest {max(report.scrape_s):.3f}s")
