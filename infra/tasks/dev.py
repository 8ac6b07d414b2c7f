"""Developer tasks: the test suite and the linters."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

# The tools of the interpreter running invoke (.venv), whether or not .venv/bin is on PATH.
BIN = Path(sys.executable).parent
LINT = [f"{BIN / 'ruff'} check infra tests tasks.py", f"{BIN / 'mypy'}"]

# pytest's "no tests were collected": a run that tested nothing is a failure here.
PYTEST_NO_TESTS = 5


@task(help={"unit": "Only the unit tests (no stack is deployed).", "k": "Only tests matching this expression."})
def test(c: Context, unit: bool = False, k: str = "") -> None:
    """Run ruff, mypy and the whole test suite (unit, then integration against a real stack on free ports)."""
    for command in LINT:
        c.run(command, pty=False)
    target = "tests/unit" if unit else "tests"
    selector = f" -k {k!r}" if k else ""
    result = c.run(f"{sys.executable} -m pytest {target}{selector}", warn=True, pty=False)
    code = result.exited if result is not None else 1
    if code == PYTEST_NO_TESTS:
        raise Exit("error: pytest collected no tests", code=1)
    if code:
        raise Exit(code=code)


@task
def lint(c: Context) -> None:
    """Run ruff and mypy."""
    for command in LINT:
        c.run(command)
