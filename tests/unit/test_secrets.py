"""Generated credentials: private files, random values, generated once, rotated one at a time, never printed."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from infra.config import IN_CONTAINER_ENV
from infra.errors import UserError
from infra.secrets import (
    BACKUP_SECRETS,
    NOT_ROTATED,
    SECRET_NAMES,
    TWO_PHASE,
    ensure_secrets,
    finish_rotation,
    load_secrets,
    rotate_secret,
    rotation_under_way,
)

NAMES = list(SECRET_NAMES)
ROTATABLE = [name for name in NAMES if name not in NOT_ROTATED]
ONE_PHASE = [name for name in ROTATABLE if name not in TWO_PHASE]
USER_PREFIXED = ["prefect_auth", "haproxy_stats"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _password(value: str) -> str:
    return value.removeprefix("admin:")


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


class TestEnsure:
    @pytest.mark.parametrize("name", NAMES)
    def test_file_created(self, directory: Path, name: str) -> None:
        ensure_secrets(directory)
        assert (directory / name).is_file()

    @pytest.mark.parametrize("name", NAMES)
    def test_file_mode_0600(self, directory: Path, name: str) -> None:
        ensure_secrets(directory)
        assert _mode(directory / name) == 0o600

    def test_directory_mode_0700(self, directory: Path) -> None:
        ensure_secrets(directory)
        assert _mode(directory) == 0o700

    def test_existing_open_directory_is_tightened(self, directory: Path) -> None:
        directory.mkdir(mode=0o755)
        ensure_secrets(directory)
        assert _mode(directory) == 0o700

    def test_a_private_directory_on_a_read_only_filesystem_is_left_as_it_is(
            self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The compose backup container: its secrets directory (0700 in the image) is on a read-only root."""
        ensure_secrets(directory)

        def read_only(path: object, mode: int) -> None:
            raise OSError(errno.EROFS, "Read-only file system", str(path))

        monkeypatch.setattr(os, "chmod", read_only)
        assert ensure_secrets(directory).get("redis") == (directory / "redis").read_text()

    def test_no_other_files_left_behind(self, directory: Path) -> None:
        ensure_secrets(directory)
        assert sorted(p.name for p in directory.iterdir()) == sorted(NAMES)

    @pytest.mark.parametrize("name", NAMES)
    def test_file_holds_the_value(self, directory: Path, name: str) -> None:
        secrets = ensure_secrets(directory)
        assert (directory / name).read_text() == secrets.get(name)

    @pytest.mark.parametrize("name", NAMES)
    def test_values_are_random(self, tmp_path: Path, name: str) -> None:
        assert ensure_secrets(tmp_path / "a").get(name) != ensure_secrets(tmp_path / "b").get(name)

    @pytest.mark.parametrize("name", NAMES)
    def test_values_are_long(self, directory: Path, name: str) -> None:
        # token_urlsafe(32): 32 random bytes, 43 characters.
        assert len(_password(ensure_secrets(directory).get(name))) >= 43

    def test_values_are_distinct_from_each_other(self, directory: Path) -> None:
        secrets = ensure_secrets(directory)
        assert len({_password(secrets.get(name)) for name in NAMES}) == len(NAMES)

    @pytest.mark.parametrize("name", NAMES)
    def test_values_need_no_escaping(self, directory: Path, name: str) -> None:
        # Embedded in connection URLs, pgbouncer's userlist and supervisord's environment line.
        password = _password(ensure_secrets(directory).get(name))
        assert set(password) & set(":@/%\"' ,\\") == set()

    @pytest.mark.parametrize("name", NAMES)
    def test_second_call_keeps_values(self, directory: Path, name: str) -> None:
        first = ensure_secrets(directory).get(name)
        assert ensure_secrets(directory).get(name) == first

    @pytest.mark.parametrize("name", NAMES)
    def test_missing_one_is_regenerated_alone(self, directory: Path, name: str) -> None:
        before = ensure_secrets(directory)
        (directory / name).unlink()
        after = ensure_secrets(directory)
        assert [n for n in NAMES if before.get(n) != after.get(n)] == [name]

    @pytest.mark.parametrize("name", USER_PREFIXED)
    def test_basic_auth_form(self, directory: Path, name: str) -> None:
        user, _, password = ensure_secrets(directory).get(name).partition(":")
        assert (user, bool(password)) == ("admin", True)

    @pytest.mark.parametrize("name", sorted(set(NAMES) - set(USER_PREFIXED)))
    def test_plain_passwords_have_no_user(self, directory: Path, name: str) -> None:
        assert ":" not in ensure_secrets(directory).get(name)

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
    def test_readable_by_others_refused(self, directory: Path, mode: int) -> None:
        ensure_secrets(directory)
        (directory / "redis").chmod(mode)
        with pytest.raises(UserError, match="redis"):
            ensure_secrets(directory)

    def test_readable_by_others_error_says_rotate(self, directory: Path) -> None:
        ensure_secrets(directory)
        (directory / "redis").chmod(0o644)
        with pytest.raises(UserError) as caught:
            ensure_secrets(directory)
        assert "rotate" in (caught.value.fix or "")

    def test_empty_file_refused(self, directory: Path) -> None:
        ensure_secrets(directory)
        (directory / "redis").write_text("\n")
        with pytest.raises(UserError, match="empty"):
            ensure_secrets(directory)

    def test_surrounding_whitespace_ignored(self, directory: Path) -> None:
        ensure_secrets(directory)
        (directory / "redis").write_text("hand-written-value\n")
        assert ensure_secrets(directory).get("redis") == "hand-written-value"


class TestLoad:
    def test_nothing_deployed_refused(self, directory: Path) -> None:
        with pytest.raises(UserError, match="invoke deploy"):
            load_secrets(directory)

    def test_nothing_deployed_creates_nothing(self, directory: Path) -> None:
        with pytest.raises(UserError):
            load_secrets(directory)
        assert not directory.exists()

    def test_loads_existing(self, directory: Path) -> None:
        created = ensure_secrets(directory)
        assert load_secrets(directory) == created


class TestRotate:
    @pytest.mark.parametrize("name", ROTATABLE)
    def test_changes_exactly_one(self, directory: Path, name: str) -> None:
        before = ensure_secrets(directory)
        rotate_secret(directory, name)
        after = ensure_secrets(directory)
        assert [n for n in NAMES if before.get(n) != after.get(n)] == [name]

    def test_the_backup_key_is_not_rotated(self, directory: Path) -> None:
        """Backups already taken are encrypted with it: a new one would orphan them."""
        before = ensure_secrets(directory).get("backup_encryption")
        with pytest.raises(UserError, match="backups already taken"):
            rotate_secret(directory, "backup_encryption")
        assert ensure_secrets(directory).get("backup_encryption") == before

    @pytest.mark.parametrize("name", ONE_PHASE)
    def test_one_phase_secrets_keep_no_old_value(self, directory: Path, name: str) -> None:
        ensure_secrets(directory)
        rotate_secret(directory, name)
        assert ensure_secrets(directory).accepted(name) == (ensure_secrets(directory).get(name),)
        assert not rotation_under_way(directory, name)

    @pytest.mark.parametrize("name", ROTATABLE)
    def test_rotated_file_mode_0600(self, directory: Path, name: str) -> None:
        ensure_secrets(directory)
        rotate_secret(directory, name)
        assert _mode(directory / name) == 0o600

    def test_rotation_replaces_a_leaked_file(self, directory: Path) -> None:
        ensure_secrets(directory)
        (directory / "redis").chmod(0o644)
        rotate_secret(directory, "redis")
        assert _mode(directory / "redis") == 0o600

    @pytest.mark.parametrize("name", USER_PREFIXED)
    def test_rotated_keeps_basic_auth_form(self, directory: Path, name: str) -> None:
        ensure_secrets(directory)
        rotate_secret(directory, name)
        assert ensure_secrets(directory).get(name).startswith("admin:")

    def test_unknown_name_refused(self, directory: Path) -> None:
        ensure_secrets(directory)
        with pytest.raises(UserError, match="unknown secret"):
            rotate_secret(directory, "postgres")

    def test_unknown_name_fix_lists_the_names(self, directory: Path) -> None:
        with pytest.raises(UserError) as caught:
            rotate_secret(directory, "postgres")
        assert [name for name in NAMES if name not in (caught.value.fix or "")] == []

    def test_unknown_name_writes_nothing(self, directory: Path) -> None:
        ensure_secrets(directory)
        with pytest.raises(UserError):
            rotate_secret(directory, "postgres")
        assert not (directory / "postgres").exists()


class TestNeverPrinted:
    @pytest.mark.parametrize("name", NAMES)
    def test_repr_hides_value(self, directory: Path, name: str) -> None:
        secrets = ensure_secrets(directory)
        assert _password(secrets.get(name)) not in repr(secrets)

    @pytest.mark.parametrize("name", NAMES)
    def test_str_hides_value(self, directory: Path, name: str) -> None:
        secrets = ensure_secrets(directory)
        assert _password(secrets.get(name)) not in str(getattr(secrets, name))


class TestInTheBackupContainer:
    """Inside a compose project container the backup code reads what its service mounts, and nothing more."""

    @pytest.fixture
    def mounted(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        full = ensure_secrets(directory)
        for name in NAMES:
            if name not in BACKUP_SECRETS:
                (directory / name).unlink()
        monkeypatch.setenv(IN_CONTAINER_ENV, "1")
        assert full.get("postgres_superuser")
        return directory

    def test_reads_the_given_secrets(self, mounted: Path) -> None:
        assert load_secrets(mounted).get("postgres_superuser") == (mounted / "postgres_superuser").read_text()

    def test_generates_nothing(self, mounted: Path) -> None:
        load_secrets(mounted)
        assert sorted(p.name for p in mounted.iterdir()) == sorted(BACKUP_SECRETS)

    @pytest.mark.parametrize("name", sorted(set(NAMES) - set(BACKUP_SECRETS)))
    def test_a_withheld_secret_is_refused_by_name(self, mounted: Path, name: str) -> None:
        with pytest.raises(UserError, match=f"secret {name} is not given to this workload"):
            load_secrets(mounted).get(name)


class TestTwoPhaseRotation:
    """Redis's users hold two passwords: the old one stays accepted until the clients have moved."""

    @pytest.mark.parametrize("name", TWO_PHASE)
    def test_the_server_accepts_both_mid_rotation(self, directory: Path, name: str) -> None:
        old = ensure_secrets(directory).get(name)
        rotate_secret(directory, name)
        mid = ensure_secrets(directory)
        assert mid.get(name) != old
        assert mid.accepted(name) == (mid.get(name), old)

    @pytest.mark.parametrize("name", TWO_PHASE)
    def test_the_old_value_is_kept_private(self, directory: Path, name: str) -> None:
        ensure_secrets(directory)
        rotate_secret(directory, name)
        assert _mode(directory / f"{name}.previous") == 0o600

    @pytest.mark.parametrize("name", TWO_PHASE)
    def test_finishing_drops_the_old_value(self, directory: Path, name: str) -> None:
        ensure_secrets(directory)
        rotate_secret(directory, name)
        finish_rotation(directory, name)
        after = ensure_secrets(directory)
        assert after.accepted(name) == (after.get(name),)

    def test_running_it_again_resumes_instead_of_stranding_clients(self, directory: Path) -> None:
        """An interrupted rotation run again keeps the value it began with: a client already moved to it, and the
        server's old value, both stay valid."""
        old = ensure_secrets(directory).get("redis")
        rotate_secret(directory, "redis")
        new = ensure_secrets(directory).get("redis")
        rotate_secret(directory, "redis")
        assert ensure_secrets(directory).accepted("redis") == (new, old)

    def test_a_readable_old_value_is_refused(self, directory: Path) -> None:
        ensure_secrets(directory)
        rotate_secret(directory, "redis")
        (directory / "redis.previous").chmod(0o644)
        with pytest.raises(UserError, match="others can read it"):
            ensure_secrets(directory)
