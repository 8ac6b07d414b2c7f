"""`invoke bench.api --target compose`: the compose stack's flow-run throughput next to the local target's.

One run deploys both, each temporary and on free ports, with the same replica count and the same TLS at the load
balancer (on: the compose default, so the comparison is of the packaging, not of TLS), monitoring, Grafana and
Jaeger off:

- a local stack (supervisord, processes on this host), as ``invoke bench.api`` deploys it;
- a compose project of its own (``psbench-<pid>``, its own state directory), from images that ``ensure_images``
  builds first, so the deploy that follows is timed from built images (a cold deploy: a new project, nothing
  running).

Both stacks run during the whole measurement; the load generator and the statistics are ``infra.bench.api``'s.
Each round measures both targets at 20 clients, in ABBA order (local, compose, compose, local, ...) so neither
always goes first on a database that grows or a host that gets busier; the verdict compares the medians. Both
stacks are destroyed afterwards, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import console
from infra.bench.api import (
    _TEMP_ROOT,
    DEFAULT_DURATION_S,
    DEFAULT_REPLICAS,
    THROUGHPUT_CLIENTS,
    WARMUP_S,
    BenchSettings,
    LevelResult,
    Target,
    Verdict,
    VerdictStatus,
    _basic_auth,
    _cleaned_up,
    _level_done,
    _ms,
    allocate_stack_ports,
    free_port,
    run_level,
    stack_config,
)
from infra.compose.deploy import deploy as compose_deploy
from infra.compose.engine import docker_client
from infra.compose.images import ImageResult, ensure_images
from infra.compose.operate import destroy as compose_destroy
from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.local.deploy import deploy as local_deploy
from infra.local.health import load_balancer_verify
from infra.local.operate import client_environment
from infra.local.operate import destroy as local_destroy

LOCAL = "local_load_balancer"  # labels in infra.bench.api.LABELS
COMPOSE = "compose_load_balancer"

# The goal from the issue: at 20 clients the compose stack keeps at least 90 % of the local target's throughput.
MIN_COMPOSE_RATIO = 0.9
DEFAULT_ROUNDS = 2  # each round measures both targets once: 2 rounds = local, compose, compose, local
MAX_ROUNDS = 10


@dataclass(frozen=True)
class CompareSettings:
    duration_s: float = DEFAULT_DURATION_S
    warmup_s: float = WARMUP_S
    replicas: int = DEFAULT_REPLICAS
    rounds: int = DEFAULT_ROUNDS
    clients: int = THROUGHPUT_CLIENTS

    def __post_init__(self) -> None:
        # The load generator's own bounds (duration, warm-up, replicas, clients) are BenchSettings'.
        BenchSettings(concurrency=(self.clients,), duration_s=self.duration_s, warmup_s=self.warmup_s,
                      replicas=self.replicas)
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise UserError(f"{self.rounds} rounds is out of range", fix=f"use 1 to {MAX_ROUNDS}")

    def bench_settings(self) -> BenchSettings:
        return BenchSettings(concurrency=(self.clients,), duration_s=self.duration_s, warmup_s=self.warmup_s,
                             replicas=self.replicas)

    def estimated_s(self) -> float:
        """Rough wall time: both deploys (and a Prefect image build), the rounds, both destroys."""
        return 2 * self.rounds * (self.warmup_s + self.duration_s) + 60 + 90 + 120 + 60


# ---------------------------------------------------------------- pure parts


def abba_order(rounds: int) -> list[str]:
    """The measurement order: local, compose, then compose, local, ... (each round reverses the previous one)."""
    order: list[str] = []
    for index in range(rounds):
        order += [LOCAL, COMPOSE] if index % 2 == 0 else [COMPOSE, LOCAL]
    return order


@dataclass(frozen=True)
class TargetSummary:
    """One target's rounds, side by side with the other's."""

    target: str
    throughputs: tuple[float, ...]  # flow runs/s of each round, in measured order
    median_rps: float | None  # None: not measured
    median_p50_ms: float | None
    requests: int
    errors: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "throughputs_rps": [round(t, 3) for t in self.throughputs],
            "median_rps": None if self.median_rps is None else round(self.median_rps, 3),
            "median_p50_ms": None if self.median_p50_ms is None else round(self.median_p50_ms, 3),
            "requests": self.requests,
            "errors": self.errors,
        }


def summarise_target(target: str, results: Sequence[LevelResult]) -> TargetSummary:
    """Medians over the target's rounds (of throughput, and of each round's p50), and the totals."""
    own = [r for r in results if r.target == target]
    p50s = [r.p50_ms for r in own if r.p50_ms is not None]
    return TargetSummary(
        target=target,
        throughputs=tuple(r.throughput_rps for r in own),
        median_rps=statistics.median(r.throughput_rps for r in own) if own else None,
        median_p50_ms=statistics.median(p50s) if p50s else None,
        requests=sum(r.requests for r in own),
        errors=sum(r.errors for r in own),
    )


def judge_compose(local: TargetSummary, compose: TargetSummary, clients: int = THROUGHPUT_CLIENTS) -> Verdict:
    """The issue's goal: the compose stack's median throughput is at least MIN_COMPOSE_RATIO x the local one's."""
    goal = (f"at {clients} clients, compose load balancer throughput >= {MIN_COMPOSE_RATIO:g}x the local "
            f"target's (medians)")
    if local.median_rps is None or compose.median_rps is None:
        return Verdict(goal, "not measured", "a target has no measured round")
    measured = f"{compose.median_rps:.1f}/s vs {local.median_rps:.1f}/s"
    if local.median_rps <= 0:
        return Verdict(goal, "fail", measured + ": the local target created no flow run")
    ratio = compose.median_rps / local.median_rps
    status: VerdictStatus = "pass" if ratio >= MIN_COMPOSE_RATIO else "fail"
    return Verdict(goal, status, f"{measured} (x{ratio:.2f})", ratio)


def describe_image(result: ImageResult) -> str:
    """'prefect prefect-stack/prefect:1a2b: built in 74.9 s' or '...: up to date'."""
    if result.action == "up to date":
        return f"{result.role} {result.ref}: up to date"
    return f"{result.role} {result.ref}: {result.action} in {result.seconds:.1f} s"


@dataclass(frozen=True)
class ComposeBenchReport:
    targets: dict[str, Target]
    results: list[LevelResult]  # in measured order
    images: list[ImageResult]
    deploy_s: dict[str, float]  # "local", "compose" (cold, from built images)
    clients: int = THROUGHPUT_CLIENTS

    @property
    def summaries(self) -> dict[str, TargetSummary]:
        return {key: summarise_target(key, self.results) for key in (LOCAL, COMPOSE)}

    @property
    def ratio(self) -> float | None:
        return self.verdicts[0].ratio

    @property
    def verdicts(self) -> list[Verdict]:
        summaries = self.summaries
        return [judge_compose(summaries[LOCAL], summaries[COMPOSE], self.clients)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "targets": {key: {"label": t.label, "api_url": t.api_url, "description": t.description}
                        for key, t in self.targets.items()},
            "results": [{"round": i, **r.as_dict()} for i, r in enumerate(self.results, 1)],
            "summaries": {key: s.as_dict() for key, s in self.summaries.items()},
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "images": [{"role": i.role, "ref": i.ref, "action": i.action, "seconds": round(i.seconds, 1),
                        "size_bytes": i.size_bytes} for i in self.images],
            "deploy_s": {key: round(value, 1) for key, value in self.deploy_s.items()},
            "verdicts": [v.as_dict() for v in self.verdicts],
        }

    def side_by_side(self) -> list[tuple[str, str, str]]:
        """Rows (what, local, compose) for the human report."""
        local, compose = self.summaries[LOCAL], self.summaries[COMPOSE]

        def rounds(s: TargetSummary) -> str:
            return ", ".join(f"{t:.1f}" for t in s.throughputs) or "-"

        def median(s: TargetSummary) -> str:
            return "-" if s.median_rps is None else f"{s.median_rps:.1f}"

        return [
            (f"flow runs/s at {self.clients} clients, each round", rounds(local), rounds(compose)),
            ("median flow runs/s", median(local), median(compose)),
            ("median p50", _ms(local.median_p50_ms), _ms(compose.median_p50_ms)),
            ("errors / requests", f"{local.errors} / {local.requests}", f"{compose.errors} / {compose.requests}"),
            ("deploy", _seconds(self.deploy_s.get("local")), _seconds(self.deploy_s.get("compose"))
             + (" (cold, images built)" if "compose" in self.deploy_s else "")),
        ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


# ---------------------------------------------------------------- the run


def compose_bench_config(state_dir: Path, project: str, replicas: int, taken: set[int]) -> StackConfig:
    """The operator's compose settings (engine, base, pool sizes...) with the benchmark's project, state and ports.

    Monitoring, Grafana and Jaeger are off, as on the local benchmark stack: what is compared is the stack itself.
    """
    return load_config(
        target="compose",
        local={"state_dir": str(state_dir)},
        compose={"project": project, "grafana": False, "jaeger": False},
        monitoring={"enabled": False},
        load_balancer={"bind_address": "127.0.0.1", "port": free_port(taken), "stats_port": free_port(taken),
                       "tls": {"mode": "on"}},
        api={"replicas": replicas},
    )


def _target(key: str, config: StackConfig, description: str) -> Target:
    return Target(key, config.api_url, description, load_balancer_verify(config))


def run_compose_benchmark(settings: CompareSettings) -> ComposeBenchReport:
    """Build the images, deploy both stacks, measure them in ABBA order, and destroy both whatever happens."""
    console.step(
        f"benchmarking the compose stack against the local one at {settings.clients} clients, "
        f"{settings.rounds} round(s); this takes about {settings.estimated_s() / 60:.0f} min"
    )
    workdir = Path(tempfile.mkdtemp(prefix="prefect-stack-bench-", dir=_TEMP_ROOT))
    # The local stack's service user must traverse it to reach its state directory; nothing secret sits here.
    os.chmod(workdir, 0o755)  # noqa: S103
    taken: set[int] = set()
    local_config = stack_config(workdir / "local", allocate_stack_ports(settings.replicas, taken),
                                settings.replicas, tls_mode="on")
    compose_config = compose_bench_config(workdir / "compose", f"psbench-{os.getpid()}", settings.replicas, taken)
    order = abba_order(settings.rounds)
    bench = settings.bench_settings()
    progress = console.progress()
    deploy_s: dict[str, float] = {}
    results: list[LevelResult] = []
    with _cleaned_up(f"remove {workdir}", lambda: shutil.rmtree(workdir, ignore_errors=True)), \
            progress.steps("compose vs local", 3 + len(order)) as steps:
        console.step("container images of the compose target (built only when missing)")
        images = ensure_images(compose_config, docker_client(compose_config), progress)
        steps.step("images: " + "; ".join(describe_image(i) for i in images))

        console.step(f"deploying a temporary local stack ({settings.replicas} API replicas) in "
                     f"{local_config.state_dir}")
        with _cleaned_up(f"destroy the temporary local stack in {local_config.state_dir}",
                         lambda: local_destroy(local_config)):
            started = time.monotonic()
            local_deploy(local_config)
            deploy_s["local"] = time.monotonic() - started
            steps.step(f"local stack deployed in {deploy_s['local']:.1f} s")

            console.step(f"deploying compose project {compose_config.compose.project} from built images")
            with _cleaned_up(f"destroy compose project {compose_config.compose.project}",
                             lambda: compose_destroy(compose_config)):
                started = time.monotonic()
                compose_deploy(compose_config, progress)
                deploy_s["compose"] = time.monotonic() - started
                steps.step(f"compose project deployed in {deploy_s['compose']:.1f} s (cold, images present)")

                targets = {
                    LOCAL: _target(LOCAL, local_config, f"HAProxy (TLS) in front of {settings.replicas} API "
                                                        "replicas, processes under supervisord on this host"),
                    COMPOSE: _target(COMPOSE, compose_config, f"HAProxy (TLS) in front of {settings.replicas} "
                                                            "API replicas, containers of one compose project"),
                }
                auth = {LOCAL: _basic_auth(client_environment(local_config)["PREFECT_API_AUTH_STRING"]),
                        COMPOSE: _basic_auth(client_environment(compose_config)["PREFECT_API_AUTH_STRING"])}
                for key in order:
                    results.append(run_level(targets[key], settings.clients, bench, auth[key]))
                    _level_done(steps, results[-1])
                console.step(f"destroying compose project {compose_config.compose.project}")
            console.step("destroying the temporary local stack")
    return ComposeBenchReport(targets, results, images, deploy_s, settings.clients)

