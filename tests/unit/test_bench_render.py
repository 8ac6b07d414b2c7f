"""invoke bench.render measures what it says: a render in a fresh process and renders in one process, per target."""

from __future__ import annotations

import pytest

from infra.bench.render import RENDER, measure


@pytest.mark.parametrize("target", sorted(RENDER))
def test_measures_cold_and_warm_renders(target: str) -> None:
    timing = measure(target, cold_runs=1, warm_runs=2)
    assert (len(timing.cold_s), len(timing.warm_s)) == (1, 2)
    assert all(t > 0 for t in [*timing.cold_s, *timing.warm_s])
