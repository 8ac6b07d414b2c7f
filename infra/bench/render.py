"""`invoke bench.render`: how long rendering a target takes, against the issue's goal (well under a second for
the Kubernetes target's default configuration) and, as the baseline measured in the same run, the compose target.

Two figures per target: a cold render (a fresh Python process: imports, configuration, every renderer, the
kustomize tree or compose project in memory; what `invoke render` costs beyond invoke's own start) and warm renders
(the same in one process, repeated: the renderers alone).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from infra.config import REPO_ROOT

GOAL_S = 1.0
COLD_RUNS = 5
WARM_RUNS = 20

# One render of the target's default configuration (as `invoke render` does, minus the writing of files).
RENDER = {
    "kubernetes": ("from infra.config import load_config\n"
                   "from infra.kubernetes.render import kustomize_tree, reference_rendering\n"
                   "kustomize_tree(reference_rendering(load_config(target='kubernetes')))\n"),
    "compose": ("from infra.config import load_config\n"
                "from infra.compose.project import reference_rendering\n"
                "reference_rendering(load_config(target='compose')).compose_yaml\n"),
}


@dataclass(frozen=True)
class RenderTiming:
    target: str
    cold_s: list[float]
    warm_s: list[float]

    @property
    def cold_median_s(self) -> float:
        return statistics.median(self.cold_s)

    @property
    def warm_median_s(self) -> float:
        return statistics.median(self.warm_s)


def _cold(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)})
    return time.perf_counter() - started


def _warm(code: str, runs: int) -> list[float]:
    namespace: dict[str, object] = {}
    exec(compile(code, "<render>", "exec"), namespace)  # noqa: S102 - our own constant code; warms the imports
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        exec(compile(code, "<render>", "exec"), namespace)  # noqa: S102
        timings.append(time.perf_counter() - started)
    return timings


def measure(target: str, cold_runs: int = COLD_RUNS, warm_runs: int = WARM_RUNS) -> RenderTiming:
    code = RENDER[target]
    return RenderTiming(target, [_cold(code) for _ in range(cold_runs)], _warm(code, warm_runs))
