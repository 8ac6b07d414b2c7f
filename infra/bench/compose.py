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

Each round also records the CPU time the measured stack used: on a shared host the throughput says how much CPU
a stack was given, the CPU time per flow run how much each cost, so the two causes of a gap can be told apart.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import console
from infra.api_client import load_balancer_verify
from infra.bench.api import (
    DEFAULT_DURATION_S,
    DEFAULT_REPLICAS,
    THROUGHPUT_CLIENTS,
    WARMUP_S,
    BenchSettings,
    LevelResult,
    Target,
    level_done,
    run_level_counted,
)
from infra.bench.harness import (
    Verdict,
    VerdictStatus,
    allocate_stack_ports,
    api_auth,
    cleaned_up,
    format_ms,
    free_port,
    stack_config,
    temporary_stack,
    temporary_workdir,
)
from infra.compose.deploy import containers
from infra.compose.deploy import deploy as compose_deploy
from infra.compose.operate import destroy as compose_destroy
from infra.config import StackConfig, load_config
from infra.containers.engine import docker_client
from infra.containers.images import ImageResult, ensure_images
from infra.errors import UserError
from infra.layout import StateLayout

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
class RoundCpu:
    """The CPU time the target's own processes used during one round (warm-up included), and what it paid for.

    On a shared host the throughput says how much CPU the target was given; the CPU time per flow run says how
    much each one cost, whoever else runs there.
    """

    cpu_s: float  # the stack's processes (local) or containers (compose), user + system
    wall_s: float
    created: int  # flow runs created during the round, warm-up included

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_flow_run(self) -> float | None:
        return 1000 * self.cpu_s / self.created if self.created else None


@dataclass(frozen=True)
class TargetSummary:
    """One target's rounds, side by side with the other's."""

    target: str
    throughputs: tuple[float, ...]  # flow runs/s of each round, in measured order
    median_rps: float | None  # None: not measured
    median_p50_ms: float | None
    requests: int
    errors: int
    median_cores: float | None = None  # CPU cores the stack used during its rounds (None: not measured)
    median_cpu_ms_per_flow_run: float | None = None

    def as_dict(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "target": self.target,
            "throughputs_rps": [round(t, 3) for t in self.throughputs],
            "median_rps": rounded(self.median_rps),
            "median_p50_ms": rounded(self.median_p50_ms),
            "requests": self.requests,
            "errors": self.errors,
            "median_cores": rounded(self.median_cores),
            "median_cpu_ms_per_flow_run": rounded(self.median_cpu_ms_per_flow_run),
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise_target(target: str, results: Sequence[LevelResult],
                     cpu: Sequence[RoundCpu | None] = ()) -> TargetSummary:
    """Medians over the target's rounds (of throughput, each round's p50 and CPU), and the totals.

    ``cpu`` runs parallel to ``results`` (None where a round's CPU time could not be read).
    """
    rounds = [(r, cpu[i] if i < len(cpu) else None) for i, r in enumerate(results) if r.target == target]
    own = [r for r, _ in rounds]
    used = [c for _, c in rounds if c is not None]
    return TargetSummary(
        target=target,
        throughputs=tuple(r.throughput_rps for r in own),
        median_rps=_median([r.throughput_rps for r in own]),
        median_p50_ms=_median([r.p50_ms for r in own if r.p50_ms is not None]),
        requests=sum(r.requests for r in own),
        errors=sum(r.errors for r in own),
        median_cores=_median([c.cores for c in used]),
        median_cpu_ms_per_flow_run=_median([m for c in used if (m := c.cpu_ms_per_flow_run) is not None]),
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
    cpu: list[RoundCpu | None] = field(default_factory=list)  # parallel to results

    @property
    def summaries(self) -> dict[str, TargetSummary]:
        return {key: summarise_target(key, self.results, self.cpu) for key in (LOCAL, COMPOSE)}

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
            "results": [{"round": i, **r.as_dict(), **_cpu_dict(self.cpu[i - 1] if i <= len(self.cpu) else None)}
                        for i, r in enumerate(self.results, 1)],
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
            ("flow runs/s, each round", rounds(local), rounds(compose)),
            ("median flow runs/s", median(local), median(compose)),
            ("median p50", format_ms(local.median_p50_ms), format_ms(compose.median_p50_ms)),
            ("errors / requests", f"{local.errors} / {local.requests}", f"{compose.errors} / {compose.requests}"),
            ("median CPU cores used", _figure(local.median_cores, "{:.2f}"),
             _figure(compose.median_cores, "{:.2f}")),
            ("median CPU ms per flow run", _figure(local.median_cpu_ms_per_flow_run, "{:.1f}"),
             _figure(compose.median_cpu_ms_per_flow_run, "{:.1f}")),
            # The compose deploy is a cold one (a new project) from images already built.
            ("deploy (compose: cold)", _seconds(self.deploy_s.get("local")), _seconds(self.deploy_s.get("compose"))),
        ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _figure(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def _cpu_dict(cpu: RoundCpu | None) -> dict[str, float | None]:
    if cpu is None:
        return {"cpu_s": None, "cores": None, "cpu_ms_per_flow_run": None}
    per_run = cpu.cpu_ms_per_flow_run
    return {"cpu_s": round(cpu.cpu_s, 3), "cores": round(cpu.cores, 3),
            "cpu_ms_per_flow_run": None if per_run is None else round(per_run, 3)}


# ---------------------------------------------------------------- CPU time of each stack

CpuClock = Callable[[], float | None]  # CPU seconds used so far by a stack's processes; None: cannot tell


def _process_cpu_s(pid: int) -> float:
    """utime + stime of one process (and of its children it has waited for), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime 14, stime 15, cutime 16, cstime 17 (proc(5)).
    return sum(int(fields[i - 3]) for i in (14, 15, 16, 17)) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue += children.get(pid, [])
    return found


def local_cpu_clock(config: StackConfig) -> CpuClock:
    """The CPU time of the local stack: supervisord and every process under it."""
    pidfile = StateLayout(config.state_dir).supervisor_pidfile

    def read() -> float | None:
        try:
            root = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        total = 0.0
        for pid in _descendants(root):
            try:
                total += _process_cpu_s(pid)
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        return total

    return read


def compose_cpu_clock(config: StackConfig) -> CpuClock:
    """The CPU time of the compose project's containers, as the engine accounts it (their cgroups), and of the
    engine's docker-proxy for the load balancer's published port when it runs on this host (outside any
    container, but on every request's path)."""
    client = docker_client(config)
    proxy_argument = f"-host-port\0{config.load_balancer.port}\0"

    def read() -> float | None:
        total = 0.0
        for container in containers(client, config.compose.project).values():
            if container.status != "running":
                continue
            stats = client.api.stats(container.id, stream=False, one_shot=True)
            total += int(stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0)) / 1e9
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().decode(errors="replace")
                if "docker-proxy" in argv.split("\0", 1)[0] and proxy_argument in argv:
                    total += _process_cpu_s(int(cmdline.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return total

    return read


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
    with temporary_workdir("prefect-stack-bench-", ignore_errors=True) as workdir:
        taken: set[int] = set()
        local_config = stack_config(workdir / "local", allocate_stack_ports(settings.replicas, taken),
                                    settings.replicas, tls_mode="on")
        compose_config = compose_bench_config(workdir / "compose", f"psbench-{os.getpid()}", settings.replicas,
                                              taken)
        return _measure_both(settings, local_config, compose_config)


def _measure_both(settings: CompareSettings, local_config: StackConfig,
                  compose_config: StackConfig) -> ComposeBenchReport:
    order = abba_order(settings.rounds)
    bench = settings.bench_settings()
    progress = console.progress()
    deploy_s: dict[str, float] = {}
    results: list[LevelResult] = []
    cpu: list[RoundCpu | None] = []
    with progress.steps("compose vs local", 3 + len(order)) as steps:
        console.step("container images of the compose target (built only when missing)")
        images = ensure_images(compose_config, docker_client(compose_config), progress)
        steps.step("images: " + "; ".join(describe_image(i) for i in images))

        with temporary_stack(local_config, "temporary local stack") as local_stack:
            deploy_s["local"] = local_stack.deploy_s
            steps.step(f"local stack deployed in {deploy_s['local']:.1f} s")

            console.step(f"deploying compose project {compose_config.compose.project} from built images")
            with cleaned_up(f"destroy compose project {compose_config.compose.project}",
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
                auth = {LOCAL: api_auth(local_config), COMPOSE: api_auth(compose_config)}
                clocks = {LOCAL: local_cpu_clock(local_config), COMPOSE: compose_cpu_clock(compose_config)}
                for key in order:
                    before, started = clocks[key](), time.monotonic()
                    result, created = run_level_counted(targets[key], settings.clients, bench, auth[key])
                    after, wall_s = clocks[key](), time.monotonic() - started
                    results.append(result)
                    cpu.append(None if before is None or after is None else RoundCpu(after - before, wall_s,
                                                                                     created))
                    level_done(steps, result)
                console.step(f"destroying compose project {compose_config.compose.project}")
    return ComposeBenchReport(targets, results, images, deploy_s, settings.clients, cpu)
