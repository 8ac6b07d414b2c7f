"""The Debian package lock, without the network: its file format, Debian version ordering, reading apt's output,
and apt itself resolving and comparing against a small mirror made on disk."""

from __future__ import annotations

import hashlib
import shutil
import textwrap
from pathlib import Path

import pytest

from infra.containers import debian_lock
from infra.containers.debian_lock import (
    DebianLock,
    PendingUpdate,
    format_lock,
    is_downgrade_refusal,
    load_lock,
    missing_locked_versions,
    parse_lock,
    parse_policy,
    parse_simulated_install,
    pending_updates,
    resolve_lock,
    version_newer,
)
from infra.errors import UserError
from infra.progress import QuietProgress

SOURCES = ["deb http://mirror.example/debian bookworm main"]
LOCK = DebianLock("amd64", ("curl", "tini"), {"tini": "0.19.0-1+b3", "curl": "7.88.1-10+deb12u14",
                                              "libssl3": "3.0.17-1~deb12u2", "redis-server": "5:7.0.15-1~deb12u10"})


class TestLockFile:
    def test_round_trip(self) -> None:
        assert parse_lock(format_lock(LOCK, SOURCES)) == LOCK

    def test_pins_sorted(self) -> None:
        assert LOCK.pins()[:2] == ["curl=7.88.1-10+deb12u14", "libssl3=3.0.17-1~deb12u2"]

    def test_header_says_how_it_is_made(self) -> None:
        assert "invoke images.lock" in format_lock(LOCK, SOURCES).splitlines()[1]

    def test_header_names_the_sources(self) -> None:
        assert f"#   {SOURCES[0]}" in format_lock(LOCK, SOURCES).splitlines()

    def test_comments_not_in_the_digest(self) -> None:
        text = format_lock(LOCK, SOURCES)
        assert parse_lock("# another comment\n" + text).digest_text() == parse_lock(text).digest_text()

    def test_a_version_changes_the_digest(self) -> None:
        text = format_lock(LOCK, SOURCES)
        changed = text.replace("libssl3=3.0.17-1~deb12u2", "libssl3=3.0.22-1~deb12u2")
        assert parse_lock(changed).digest_text() != parse_lock(text).digest_text()

    @pytest.mark.parametrize("line", ["libc6", "libc6=", "=2.36", "LibC6=2.36", "libc6 = 2.36", "libc6=two",
                                      "libc6==2.36"])
    def test_malformed_line_named(self, line: str) -> None:
        text = format_lock(LOCK, SOURCES) + line + "\n"
        with pytest.raises(UserError) as caught:
            parse_lock(text, "the lock")
        number = len(text.splitlines())
        assert (f"the lock, line {number}: {line!r}" in caught.value.problem,
                "invoke images.lock" in str(caught.value.fix)) == (True, True)

    def test_duplicate(self) -> None:
        with pytest.raises(UserError, match="tini is locked twice"):
            parse_lock(format_lock(LOCK, SOURCES) + "tini=0.18-1\n")

    @pytest.mark.parametrize("header", ["# architecture:", "# requested:"])
    def test_missing_header(self, header: str) -> None:
        text = "\n".join(line for line in format_lock(LOCK, SOURCES).splitlines() if not line.startswith(header))
        with pytest.raises(UserError, match="lacks"):
            parse_lock(text)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(UserError, match="is missing"):
            load_lock(tmp_path / "debian-packages.lock", ["curl"])

    def test_made_for_other_packages(self, tmp_path: Path) -> None:
        (tmp_path / "lock").write_text(format_lock(LOCK, SOURCES))
        with pytest.raises(UserError) as caught:
            load_lock(tmp_path / "lock", ["curl", "tini", "nginx"])
        assert "now added: nginx; removed: none" in caught.value.problem

    def test_requested_package_not_locked(self, tmp_path: Path) -> None:
        lock = DebianLock("amd64", ("curl", "tini"), {"curl": "7.88.1-10+deb12u14"})
        (tmp_path / "lock").write_text(format_lock(lock, SOURCES))
        with pytest.raises(UserError, match="does not lock tini"):
            load_lock(tmp_path / "lock", ["curl", "tini"])


class TestVersionOrdering:
    @pytest.mark.parametrize(("candidate", "than", "newer"), [
        ("3.0.22-1~deb12u2", "3.0.17-1~deb12u2", True),
        ("5:7.0.15-1~deb12u10", "5:7.0.15-1~deb12u9", True),  # numeric, not text, comparison
        ("1:1.0-1", "2.0-1", True),  # the epoch wins
        ("1.0~rc1-1", "1.0-1", False),  # ~ sorts before everything
        ("2.36-9+deb12u14", "2.36-9+deb12u14", False),
        ("0.19.0-1+b3", "0.19.0-1", True),  # a binNMU
    ])
    def test_dpkg_order(self, candidate: str, than: str, newer: bool) -> None:
        assert version_newer(candidate, than) is newer

    def test_invalid_version_is_a_user_error(self) -> None:
        with pytest.raises(UserError, match="cannot compare"):
            version_newer("not a version!", "1.0")


class TestAptOutput:
    def test_simulated_install(self) -> None:
        output = textwrap.dedent("""\
            The following NEW packages will be installed:
              libc6 tini
            Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []
            Inst tini (0.19.0-1+b3 Debian:12.15/oldstable [amd64])
            Inst libssl3 [3.0.17-1~deb12u2] (3.0.22-1~deb12u2 Debian-Security:12/oldstable-security [amd64])
            Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])
            """)
        assert parse_simulated_install(output) == {"libc6": "2.36-9+deb12u14", "tini": "0.19.0-1+b3",
                                                   "libssl3": "3.0.22-1~deb12u2"}

    POLICY = textwrap.dedent("""\
        libssl3:
          Installed: 3.0.17-1~deb12u2
          Candidate: 3.0.22-1~deb12u2
          Version table:
             3.0.22-1~deb12u2 500
                500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
         *** 3.0.17-1~deb12u2 500
                500 http://deb.debian.org/debian bookworm-updates/main amd64 Packages
                100 /var/lib/dpkg/status
        gone:
          Installed: (none)
          Candidate: (none)
          Version table:
        """)

    def test_policy_candidate_and_versions(self) -> None:
        assert parse_policy(self.POLICY)["libssl3"] == ("3.0.22-1~deb12u2", ["3.0.22-1~deb12u2", "3.0.17-1~deb12u2"])

    def test_policy_without_candidate(self) -> None:
        assert parse_policy(self.POLICY)["gone"] == (None, [])

    def test_missing_locked_versions(self) -> None:
        log = ["Reading package lists...", "E: Version '3.0.17-1~deb12u2' for 'libssl3' was not found",
               "E: Version '1.0' for 'tini' was not found"]
        assert missing_locked_versions(log) == ["libssl3=3.0.17-1~deb12u2", "tini=1.0"]

    def test_downgrade_refusal(self) -> None:
        assert is_downgrade_refusal(["E: Packages were downgraded and -y was used without --allow-downgrades."])


ARCH = debian_lock.host_architecture() if shutil.which("dpkg") else "amd64"


def _stanza(name: str, version: str, priority: str = "optional", depends: str = "") -> str:
    extra = f"Depends: {depends}\n" if depends else ""
    return (f"Package: {name}\nVersion: {version}\nArchitecture: {ARCH}\nPriority: {priority}\n{extra}"
            f"Filename: pool/{name}_{version}.deb\nSize: 1\n")


@pytest.fixture
def mirror(tmp_path: Path) -> tuple[Path, list[str]]:
    """A Debian archive on disk (one suite, unsigned, trusted by option): apt reads it as it reads a mirror."""
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is needed (Debian or Ubuntu)")
    root = tmp_path / "mirror"
    (root / f"dists/bookworm/main/binary-{ARCH}").mkdir(parents=True)
    return root, [f"deb [trusted=yes] file:{root} bookworm main"]


def _publish(root: Path, *stanzas: str) -> None:
    """Publish a suite as an archive does: the Packages index, then a Release file with its hash (apt fetches an
    index again only when the Release file names another hash)."""
    index = f"main/binary-{ARCH}/Packages"
    text = "\n".join(stanzas).encode()
    (root / "dists/bookworm" / index).write_bytes(text)
    (root / "dists/bookworm/Release").write_text(
        f"Suite: bookworm\nCodename: bookworm\nArchitectures: {ARCH}\nComponents: main\n"
        f"SHA256:\n {hashlib.sha256(text).hexdigest()} {len(text)} {index}\n")


BASE = [_stanza("base-files", "12.4+deb12u1", "required"), _stanza("apt", "2.6.1", "important"),
        _stanza("usr-is-merged", "37~deb12u1")]


class TestAgainstAMirror:
    def test_resolves_closure_and_base(self, mirror: tuple[Path, list[str]], tmp_path: Path) -> None:
        root, sources = mirror
        _publish(root, *BASE, _stanza("app", "1.0-1", depends="libfoo (>= 1.0)"), _stanza("libfoo", "1.2-1"),
                 _stanza("unrelated", "9"))
        lock = resolve_lock(sources, ["app"], tmp_path / "apt", QuietProgress())
        assert dict(lock.packages) == {"app": "1.0-1", "libfoo": "1.2-1", "base-files": "12.4+deb12u1",
                                       "apt": "2.6.1", "usr-is-merged": "37~deb12u1"}

    def test_unknown_package_is_a_user_error(self, mirror: tuple[Path, list[str]], tmp_path: Path) -> None:
        root, sources = mirror
        _publish(root, *BASE)
        with pytest.raises(UserError, match="resolving the Debian packages failed"):
            resolve_lock(sources, ["no-such-package"], tmp_path / "apt", QuietProgress())

    def test_newer_versions_on_the_mirror(self, mirror: tuple[Path, list[str]], tmp_path: Path) -> None:
        root, sources = mirror
        _publish(root, *BASE, _stanza("app", "1.0-1", depends="libfoo"), _stanza("libfoo", "1.2-1"))
        lock = resolve_lock(sources, ["app"], tmp_path / "apt", QuietProgress())
        # Debian's security fix: the mirror now serves only the newer libfoo.
        _publish(root, *BASE, _stanza("app", "1.0-1", depends="libfoo"), _stanza("libfoo", "1.2-1+deb12u1"))
        assert pending_updates(lock, sources, tmp_path / "apt", QuietProgress()) == [
            PendingUpdate("libfoo", "1.2-1", "1.2-1+deb12u1", locked_served=False)]

    def test_nothing_pending_when_current(self, mirror: tuple[Path, list[str]], tmp_path: Path) -> None:
        root, sources = mirror
        _publish(root, *BASE, _stanza("app", "1.0-1"))
        lock = resolve_lock(sources, ["app"], tmp_path / "apt", QuietProgress())
        assert pending_updates(lock, sources, tmp_path / "apt", QuietProgress()) == []

    def test_host_apt_state_untouched(self, mirror: tuple[Path, list[str]], tmp_path: Path) -> None:
        root, sources = mirror
        _publish(root, *BASE, _stanza("app", "1.0-1"))
        resolve_lock(sources, ["app"], tmp_path / "apt", QuietProgress())
        assert not any(str(root) in p.name or "mirror" in p.name for p in Path("/var/lib/apt/lists").glob("*"))

    def test_state_is_per_set_of_sources(self) -> None:
        one = debian_lock.apt_state_dir(SOURCES, Path("/c"))
        assert one != debian_lock.apt_state_dir([*SOURCES, "deb http://other/debian bookworm main"], Path("/c"))
