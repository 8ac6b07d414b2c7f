"""The lock is complete: every package in the built virtual environment is pinned, at the version installed.

A package that is installed but not pinned (a transitive dependency nobody listed) can resolve differently on
the next fresh install, so the machine that passed the tests and the one that runs production would differ.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _installed() -> dict[str, str]:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    ).stdout
    return _pins(frozen.splitlines())


def test_every_installed_package_is_pinned_in_constraints() -> None:
    pinned = _pins(CONSTRAINTS.read_text().splitlines())
    unpinned = sorted(f"{name}=={version}" for name, version in _installed().items() if name not in pinned)
    assert unpinned == [], f"add these to constraints.txt: {unpinned}"


def test_installed_versions_match_the_pins() -> None:
    pinned = _pins(CONSTRAINTS.read_text().splitlines())
    differ = sorted(f"{name}: installed {version}, pinned {pinned[name]}"
                    for name, version in _installed().items() if name in pinned and pinned[name] != version)
    assert differ == []


def test_every_pin_is_exact() -> None:
    loose = [line for line in CONSTRAINTS.read_text().splitlines()
             if line.strip() and not line.startswith("#") and "==" not in line]
    assert loose == []
