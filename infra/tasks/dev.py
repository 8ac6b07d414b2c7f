"""Developer tasks: the test suite and the linters."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from infra import console
from infra.busy_machine import cpu_load
from infra.config import REPO_ROOT

# The tools of the interpreter running invoke (.venv), whether or not .venv/bin is on PATH.
BIN = Path(sys.executable).parent
# lint-imports: the package layering (the import contracts in pyproject.toml).
LINT = [f"{BIN / 'ruff'} check infra tests tasks.py", f"{BIN / 'mypy'}", f"{BIN / 'lint-imports'}"]
# Shell scripts without the .sh suffix (CI's entry point). --external-sources: a script's `# shellcheck source=`
# is followed (the Redis scripts source common.sh), so what it defines is known where it is used.
EXTRA_SHELL_SCRIPTS = (".ci/run",)
SHELLCHECK_OPTIONS = ("--external-sources",)

# pytest's "no tests were collected": a run that tested nothing is a failure here.
PYTEST_NO_TESTS = 5
# Printed in every run, so a test that grows slow is seen before it threatens CI's time limit.
SLOWEST = 10


def shell_scripts(repo: Path = REPO_ROOT) -> list[Path]:
    """Every shell script in the repository: the .sh files outside hidden folders (.git, .venv, .state), and
    EXTRA_SHELL_SCRIPTS."""
    found: list[Path] = []
    for folder, subfolders, names in os.walk(repo):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d != "__pycache__")
        found += [Path(folder) / name for name in sorted(names) if name.endswith(".sh")]
    return found + [repo / name for name in EXTRA_SHELL_SCRIPTS]


def lint_commands() -> list[str]:
    """LINT, then shellcheck over every shell script (found now, so a new script is checked without a list)."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        raise Exit("error: shellcheck is not installed; invoke lint and invoke test run it over every shell script\n"
                   "  fix: bash scripts/bootstrap.sh --dev (or: apt-get install shellcheck)", code=1)
    scripts = " ".join(shlex.quote(str(path)) for path in shell_scripts())
    return [*LINT, f"{shellcheck} {' '.join(SHELLCHECK_OPTIONS)} {scripts}"]


@task(help={
    "unit": "Only the unit tests (no stack is deployed).",
    "k": "Only tests matching this expression.",
    "stress": "Run the integration suite while background processes keep every core busy (flakiness check).",
    "runs": "Run the selected tests this many times in a row; stops at nothing, reports every run.",
})
def test(c: Context, unit: bool = False, k: str = "", stress: bool = False, runs: int = 1) -> None:
    """Run the linters (as invoke lint) and the whole test suite (unit, then integration against a real stack)."""
    if unit and stress:
        raise Exit("error: --stress exercises the integration suite; it cannot be combined with --unit\n"
                   "  fix: invoke test --stress (integration suite under load) or invoke test --unit", code=1)
    if runs < 1:
        raise Exit("error: --runs must be 1 or more\n  fix: invoke test --runs 3", code=1)
    for command in lint_commands():
        c.run(command, pty=False)
    target = "tests/unit" if unit else "tests/integration" if stress else "tests"
    selector = f" -k {k!r}" if k else ""
    command = f"{sys.executable} -m pytest {target}{selector} --durations={SLOWEST}"
    outcomes: list[tuple[int, float]] = []
    for run in range(1, runs + 1):
        if runs > 1:
            console.step(f"run {run} of {runs}{' under a full CPU load' if stress else ''}")
        started = time.monotonic()
        with cpu_load() if stress else contextlib.nullcontext() as load:
            if load:
                console.step(f"keeping every core busy: {len(load)} spinning processes (pids {load})")
            result = c.run(command, warn=True, pty=False)
        code = result.exited if result is not None else 1
        outcomes.append((code, time.monotonic() - started))
    if runs > 1:
        for run, (code, seconds) in enumerate(outcomes, 1):
            verdict = "passed" if code == 0 else f"FAILED (pytest exit {code})"
            console.step(f"run {run}: {verdict} in {seconds / 60:.1f} min")
    codes = [code for code, _ in outcomes]
    if PYTEST_NO_TESTS in codes:
        raise Exit("error: pytest collected no tests", code=1)
    failed = [code for code in codes if code]
    if failed:
        raise Exit(code=failed[0])


@task
def lint(c: Context) -> None:
    """Run ruff, mypy, the import contracts and shellcheck (every shell script in the repository)."""
    for command in lint_commands():
        c.run(command)


@task(help={"check": "Change nothing: exit 1 when docs/configuration.md differs from what the model renders."})
def docs(c: Context, check: bool = False) -> None:
    """Regenerate docs/configuration.md, the configuration reference, from the model in infra/config.py."""
    from infra.render.configuration_page import PAGE, render_configuration_page, write_configuration_page

    if check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != render_configuration_page():
            raise Exit(f"error: {PAGE} is out of date with infra/config.py\n  fix: run invoke docs", code=1)
        console.step(f"{PAGE} is current")
        return
    console.step(f"wrote {write_configuration_page(PAGE)}")
