"""Where the stack's programs are: the Debian packages' binaries and the virtual environment's tools."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from infra.errors import UserError


def binary(name: str, *candidates: str) -> str:
    """The Debian package's binary at its usual path, else on PATH; a clear error when it is not installed."""
    for candidate in candidates:
        if Path(candidate).is_file():
            return candidate
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} is not installed", fix="run scripts/bootstrap.sh to install the stack's packages")
    return found


def venv_bin() -> Path:
    """The interpreter running the tasks is the one with Prefect installed (bootstrap's .venv)."""
    return Path(sys.executable).parent


def venv_python() -> Path:
    """The venv's interpreter under one stable name: ``sys.executable`` is python or python3 depending on how the
    task was started, and a rendered command must not change with it (that would restart the program)."""
    return venv_bin() / "python"
