"""The Debian package lock: the exact version of every Debian package in the system image, as constraints.txt is
for Python.

A Debian mirror serves only the newest version of each package per suite, so an unlocked ``apt-get install`` gives
different contents on two hosts (or two days) under one tag, and an image whose tag exists is never rebuilt: fixes
never arrive. The lock makes a tag mean one content (its text is part of the system image's tag), and refreshing it
is how fixes arrive (a new lock, a new tag, a rebuild, replaced containers).

Resolution needs no Docker engine: apt runs against a private state directory (its own sources, lists, cache and
an empty package database), so the host's own apt state is neither read nor changed. From an empty database,
``apt-get install --simulate`` resolves the whole closure: the requested packages, Debian's minimal base
(``Priority: required`` and apt, what ``debootstrap --variant=minbase`` and the official slim image install) and
every dependency of both. Locking the base's packages too means their fixes (libc6, apt, tar...) arrive the same way:
the image build upgrades the base to the locked versions.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import UserError
from infra.progress import Progress

# Debian's minimal base besides the packages of Priority: required: debootstrap's minbase adds apt, and bookworm's
# bases have a merged /usr marked by usr-is-merged (without it apt satisfies "usrmerge | usr-is-merged" with
# usrmerge, a conversion tool that pulls in Perl modules the images do not have).
BASE_EXTRA_PACKAGES = ("apt", "usr-is-merged")
ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Debian policy 5.6.1 (Package) and 5.6.12 (Version): what a lock line may hold.
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
PACKAGE_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~:-]*")
REFRESH_FIX = "run invoke images.lock to resolve the lock again from the mirror, then invoke images.build"
# What apt prints when a pinned version is not on the mirror, and when pinning would downgrade an installed package.
_VERSION_NOT_FOUND = re.compile(r"^E: Version '([^']+)' for '([^']+)' was not found")
_DOWNGRADE = re.compile(r"^E: Packages were downgraded")
# `apt-get install --simulate`: "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []"; an upgrade
# of an installed package shows "Inst name [old] (new ...)".
_SIMULATED_INSTALL = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ")


@dataclass(frozen=True)
class DebianLock:
    """A parsed lock: what was asked for, and the version of every package that resolved to."""

    architecture: str
    requested: tuple[str, ...]
    packages: Mapping[str, str] = field(default_factory=dict)

    def pins(self) -> list[str]:
        """``name=version`` for each package, sorted: the arguments of ``apt-get install``."""
        return [f"{name}={version}" for name, version in sorted(self.packages.items())]

    def digest_text(self) -> str:
        """What the system image's tag covers: the architecture and the pins (not the comments)."""
        return "\n".join([self.architecture, *self.pins()]) + "\n"


@dataclass(frozen=True)
class PendingUpdate:
    """A locked package with a newer version on the mirror; ``locked_served`` is false once the mirror dropped the
    locked version (a rebuild then fails until the lock is refreshed)."""

    package: str
    locked: str
    available: str
    locked_served: bool


# --- The lock file. ---


def format_lock(lock: DebianLock, sources: Sequence[str]) -> str:
    lines = [
        "# The Debian packages of the prefect-stack/system image at the exact versions its build installs",
        "# (compose/images/system/Dockerfile); part of the image's tag. Made by `invoke images.lock`, never by hand:",
        "# apt resolved the packages requested below, Debian's minimal base (Priority: required, and apt) and all",
        "# their dependencies (no recommends) from an empty package database, against:",
        *(f"#   {source}" for source in sources),
        f"# architecture: {lock.architecture}",
        f"# requested: {' '.join(lock.requested)}",
        *lock.pins(),
    ]
    return "\n".join(lines) + "\n"


def parse_lock(text: str, source: str = "the Debian lock") -> DebianLock:
    """A lock's text; a malformed line, a duplicate or a missing header is a UserError naming its line."""
    architecture = ""
    requested: tuple[str, ...] | None = None
    packages: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition(":")
            if key == "architecture":
                architecture = value.strip()
            elif key == "requested":
                requested = tuple(value.split())
            continue
        name, equals, version = line.partition("=")
        if not equals or not PACKAGE_NAME.fullmatch(name) or not PACKAGE_VERSION.fullmatch(version):
            raise UserError(f"{source}, line {number}: {raw!r} is not a Debian package pin (name=version)",
                            fix=REFRESH_FIX)
        if name in packages:
            raise UserError(f"{source}, line {number}: {name} is locked twice", fix=REFRESH_FIX)
        packages[name] = version
    if not architecture or requested is None or not packages:
        raise UserError(f"{source} lacks its '# architecture:' or '# requested:' line, or any package",
                        fix=REFRESH_FIX)
    return DebianLock(architecture, requested, packages)


def load_lock(path: Path, requested: Iterable[str]) -> DebianLock:
    """The committed lock, checked against what the image asks for now (a changed package list needs a new lock)."""
    if not path.is_file():
        raise UserError(f"the Debian package lock {path} is missing", fix=REFRESH_FIX)
    lock = parse_lock(path.read_text(), str(path))
    wanted = set(requested)
    if set(lock.requested) != wanted:
        added = sorted(wanted - set(lock.requested))
        dropped = sorted(set(lock.requested) - wanted)
        raise UserError(f"the Debian package lock {path} was made for other packages (now added: "
                        f"{', '.join(added) or 'none'}; removed: {', '.join(dropped) or 'none'})", fix=REFRESH_FIX)
    missing = sorted(wanted - set(lock.packages))
    if missing:
        raise UserError(f"the Debian package lock {path} does not lock {', '.join(missing)}", fix=REFRESH_FIX)
    return lock


# --- Debian version ordering. ---


def version_newer(candidate: str, than: str) -> bool:
    """Debian's ordering (epochs, ~, revisions) is dpkg's: ask dpkg, the reference implementation."""
    result = subprocess.run(["dpkg", "--compare-versions", candidate, "gt", than], capture_output=True, text=True,
                            check=False)
    if result.returncode not in (0, 1):
        raise UserError(f"dpkg cannot compare Debian versions {candidate!r} and {than!r}: {result.stderr.strip()}",
                        fix="check the versions in the lock (invoke images.lock makes it again)")
    return result.returncode == 0


# --- Reading apt's output. ---


def parse_simulated_install(output: str) -> dict[str, str]:
    """Package and version of every ``Inst`` line of ``apt-get install --simulate``."""
    found = {}
    for line in output.splitlines():
        match = _SIMULATED_INSTALL.match(line)
        if match:
            found[match[1].split(":", 1)[0]] = match[2]
    return found


def parse_policy(output: str) -> dict[str, tuple[str | None, list[str]]]:
    """``apt-cache policy``: each package's candidate (None when apt has none) and every version it can install."""
    policies: dict[str, tuple[str | None, list[str]]] = {}
    name = ""
    candidate: str | None = None
    versions: list[str] = []
    for line in [*output.splitlines(), "end:"]:
        if line and not line[0].isspace() and line.endswith(":"):
            if name:
                policies[name] = (candidate, versions)
            name, candidate, versions = line[:-1].split(":", 1)[0], None, []
        elif line.strip().startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            candidate = None if value == "(none)" else value
        elif re.match(r"^ (?:\*\*\*| {3}) \S+ -?\d+$", line):
            # A version-table line: " *** " (installed) or five spaces, the version, its pin priority.
            versions.append(line.split()[-2])
    return policies


def missing_locked_versions(build_log: Iterable[str]) -> list[str]:
    """``name=version`` of each pin apt could not find, from a failed build's log."""
    return [f"{m[2]}={m[1]}" for m in map(_VERSION_NOT_FOUND.match, build_log) if m]


def is_downgrade_refusal(build_log: Iterable[str]) -> bool:
    return any(_DOWNGRADE.match(line) for line in build_log)


# --- apt against a private state directory. ---


class PrivateApt:
    """apt with its own sources, lists and cache under ``root``, and an empty package database.

    The host's apt.conf.d is still read (a proxy configured there is needed to reach the mirror); its sources,
    preferences and package database are not. The lists under ``root`` are kept between runs, so a later update
    only fetches what changed.
    """

    def __init__(self, root: Path, sources: Sequence[str]) -> None:
        self.root = root
        self.sources = list(sources)
        for directory in ("lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        (root / "status").write_text("")
        # Debian's archive key, where the host has it, and only for it: the host's other trusted keys are not.
        signed = f"[signed-by={ARCHIVE_KEYRING}] " if ARCHIVE_KEYRING.is_file() else ""
        (root / "etc/sources.list").write_text("".join(
            (line if line.startswith("deb [") else re.sub(r"^deb ", f"deb {signed}", line)) + "\n"
            for line in self.sources))

    def _options(self) -> list[str]:
        settings = {
            "Dir::Etc::SourceList": self.root / "etc/sources.list",
            "Dir::Etc::SourceParts": self.root / "etc/sources.list.d",
            "Dir::Etc::Preferences": self.root / "etc/preferences",
            "Dir::Etc::PreferencesParts": self.root / "etc/preferences.d",
            "Dir::State": self.root,
            "Dir::State::Lists": self.root / "lists",
            "Dir::State::status": self.root / "status",
            "Dir::Cache": self.root / "cache",
            # The lock files live in the private directory: no other apt on the host is waited for or blocked.
            "Debug::NoLocking": "1",
        }
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def _run(self, argv: list[str], what: str) -> str:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        result = subprocess.run([argv[0], *self._options(), *argv[1:]], capture_output=True, text=True, env=env,
                                check=False)
        if result.returncode != 0:
            tail = "\n    ".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise UserError(f"{what} failed (exit {result.returncode}):\n    {tail}",
                            fix="check that the Debian mirror is reachable from this host (compose.debian_mirror, "
                                "apt's proxy settings) and serves the suites listed above")
        return result.stdout

    def update(self) -> None:
        self._run(["apt-get", "-q", "update"], f"apt-get update from {', '.join(self.sources)}")

    def required_packages(self) -> list[str]:
        """Every package of Priority: required in the sources: the core of a minbase system."""
        names = set()
        name = ""
        for line in self._run(["apt-cache", "dumpavail"], "apt-cache dumpavail").splitlines():
            if line.startswith("Package: "):
                name = line.split()[1]
            elif line == "Priority: required":
                names.add(name)
        return sorted(names)

    def resolve(self, packages: Sequence[str]) -> dict[str, str]:
        """The closure of ``packages`` (dependencies, no recommends) with the version apt would install."""
        output = self._run(["apt-get", "install", "--simulate", "--no-install-recommends", "-q", *packages],
                           "resolving the Debian packages")
        return parse_simulated_install(output)

    def policies(self, packages: Sequence[str]) -> dict[str, tuple[str | None, list[str]]]:
        return parse_policy(self._run(["apt-cache", "policy", *packages], "apt-cache policy"))


def host_architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def apt_state_dir(sources: Sequence[str], cache_root: Path) -> Path:
    """One private apt directory per set of sources, so two mirrors never mix their lists."""
    key = hashlib.sha256("\n".join([host_architecture(), *sources]).encode()).hexdigest()[:16]
    return cache_root / key


def _updated_apt(sources: Sequence[str], cache_root: Path, progress: Progress) -> PrivateApt:
    if shutil.which("apt-get") is None:
        raise UserError("apt-get is not installed: the Debian lock is resolved by apt",
                        fix="run invoke images.lock on a Debian or Ubuntu host")
    apt = PrivateApt(apt_state_dir(sources, cache_root), sources)
    progress(f"reading the package lists of {len(sources)} Debian suites (apt-get update in {apt.root})")
    apt.update()
    return apt


def resolve_lock(sources: Sequence[str], requested: Sequence[str], cache_root: Path,
                 progress: Progress) -> DebianLock:
    """Resolve ``requested`` plus the minimal base, dependencies included, from ``sources``."""
    apt = _updated_apt(sources, cache_root, progress)
    base = [*apt.required_packages(), *BASE_EXTRA_PACKAGES]
    progress(f"resolving {len(requested)} packages and the minimal base ({len(base)} packages) with their "
             f"dependencies")
    packages = apt.resolve(sorted({*requested, *base}))
    missing = sorted(set(requested) - set(packages))
    if missing:
        raise UserError(f"apt resolved no version of {', '.join(missing)} from {', '.join(sources)}",
                        fix="check the package names and that the mirror serves the suite")
    return DebianLock(host_architecture(), tuple(sorted(requested)), packages)


def pending_updates(lock: DebianLock, sources: Sequence[str], cache_root: Path,
                    progress: Progress) -> list[PendingUpdate]:
    """The locked packages whose newest version on the mirror is newer than the locked one."""
    apt = _updated_apt(sources, cache_root, progress)
    progress(f"comparing {len(lock.packages)} locked packages with the mirror")
    policies = apt.policies(sorted(lock.packages))
    pending = []
    for name, locked in sorted(lock.packages.items()):
        candidate, versions = policies.get(name, (None, []))
        if candidate is not None and candidate != locked and version_newer(candidate, locked):
            pending.append(PendingUpdate(name, locked, candidate, locked in versions))
    return pending
