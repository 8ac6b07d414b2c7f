"""Generated credentials: created on first deploy, kept in <state>/secrets with mode 0600, never printed.

There are no default passwords. Each secret is one file. ``invoke secrets.rotate NAME`` replaces one and applies it;
for a credential its server can hold twice (Redis ACL users hold several passwords), the old value stays accepted in
``NAME.previous`` while the clients move to the new one, and is dropped once they have (two phases, no failed
request in between).
"""

from __future__ import annotations

import os
import secrets as token_source
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from infra.config import in_project_container
from infra.errors import UserError

# Names are the file names under <state>/secrets; the text says what each one protects.
SECRET_NAMES: dict[str, str] = {
    "postgres_superuser": "PostgreSQL superuser 'postgres' (administration, migrations of roles)",
    "postgres_prefect": "PostgreSQL role Prefect connects as (also PgBouncer's client password)",
    "redis": "Redis requirepass (messaging, cache, leases, Docket)",
    "prefect_auth": "Prefect API basic auth, as 'admin:<password>'",
    "haproxy_stats": "HAProxy stats page basic auth, as 'admin:<password>'",
    "s3_local": "secret access key of the local S3 endpoint (its key id is 'prefect-stack-local')",
    "backup_encryption": "client-side backup encryption key (256 bits, URL-safe base64)",
    "postgres_monitor": "PostgreSQL role prefect_monitor (pg_monitor, read-only on Prefect's tables): the exporters",
    "redis_monitor": "Redis ACL user 'monitor' (INFO, XINFO and other read-only commands): the exporters",
    "grafana_admin": "Grafana's 'admin' user (compose target; Grafana is not run by the local target)",
    "prometheus_scrape": "password of user 'prometheus' at HAProxy's metrics listener, which admits only GET of the "
                         "API replicas' metrics (local and compose targets): Prometheus never holds the API admin's",
}
_USER_PREFIXED = {"prefect_auth", "haproxy_stats"}

# What the backup workload (the nightly job, verification, and the restore steps run beside the database) reads:
# the superuser (dump, restore, swap), Prefect's role (verification's temporary API), the encryption key and the
# local S3 endpoint's key. Never the API admin, Redis, HAProxy or Grafana credentials: a leak of its pod or
# container must not open the rest of the stack.
BACKUP_SECRETS: tuple[str, ...] = ("postgres_superuser", "postgres_prefect", "backup_encryption", "s3_local")

# Credentials whose server accepts two values at once, so a rotation never refuses a client that has yet to move:
# Redis ACL users carry a set of passwords (``ACL SETUSER u >old >new``). The others are replaced in one step: the
# server takes the new value as its clients do, in the order deploy applies them (see docs/local.md).
TWO_PHASE: tuple[str, ...] = ("redis", "redis_monitor")
# The suffix of the file that holds a two-phase secret's old value while a rotation is under way.
PREVIOUS_SUFFIX = ".previous"
# Never rotated by secrets.rotate: backups already taken stay encrypted with it (a new key would orphan them).
NOT_ROTATED = ("backup_encryption",)


@dataclass(frozen=True)
class Secrets:
    postgres_superuser: SecretStr
    postgres_prefect: SecretStr
    redis: SecretStr
    prefect_auth: SecretStr
    haproxy_stats: SecretStr
    s3_local: SecretStr
    backup_encryption: SecretStr
    postgres_monitor: SecretStr
    redis_monitor: SecretStr
    grafana_admin: SecretStr
    prometheus_scrape: SecretStr
    # Old values still accepted while a two-phase rotation is under way (name -> value); clients use get().
    retiring: dict[str, SecretStr] = field(default_factory=dict)

    def accepted(self, name: str) -> tuple[str, ...]:
        """What a server must accept for this credential: the current value, and the retiring one mid-rotation."""
        retiring = self.retiring.get(name)
        return (self.get(name),) if retiring is None else (self.get(name), retiring.get_secret_value())

    def get(self, name: str) -> str:
        value: SecretStr = getattr(self, name)
        if value is WITHHELD:
            # A bug, not a user error: the workload was not given this secret on purpose (least privilege).
            raise UserError(f"secret {name} is not given to this workload",
                            fix="add it to the workload's secrets in the renderer if it really needs it")
        return value.get_secret_value()


# Stands for a secret a workload was not given (its mount holds only what it needs).
WITHHELD = SecretStr("")


def _generate(name: str) -> str:
    # URL-safe and free of ':' '@' '/' so it embeds in connection URLs and configs without escaping.
    value = token_source.token_urlsafe(32)
    return f"admin:{value}" if name in _USER_PREFIXED else value


def _write_private(path: Path, value: str) -> None:
    """Create the file with mode 0600 from the first byte (never briefly world-readable), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def ensure_secrets(directory: Path) -> Secrets:
    """Load every secret, generating the missing ones. Refuses a secret file that others can read."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Only when needed: in the compose backup container the directory is on a read-only root filesystem (0700 in
    # the image), where even a chmod that changes nothing fails.
    if directory.stat().st_mode & 0o777 != 0o700:
        os.chmod(directory, 0o700)
    values: dict[str, Any] = {}  # SecretStr each (Any: Secrets also has a non-secret field)
    for name in SECRET_NAMES:
        path = directory / name
        if not path.exists():
            _write_private(path, _generate(name))
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise UserError(
                f"secret file {path} has mode {mode:04o}: others can read it",
                fix=f"chmod 600 {path}, then rotate it (invoke secrets.rotate {name}) since it may have leaked",
            )
        value = path.read_text().strip()
        if not value:
            raise UserError(f"secret file {path} is empty", fix=f"delete it and run invoke deploy to regenerate {name}")
        values[name] = SecretStr(value)
    return replace(Secrets(**values), retiring=_retiring(directory))


def _retiring(directory: Path) -> dict[str, SecretStr]:
    retiring: dict[str, SecretStr] = {}
    for name in TWO_PHASE:
        path = directory / f"{name}{PREVIOUS_SUFFIX}"
        if path.is_file():
            if path.stat().st_mode & 0o077:
                raise UserError(f"secret file {path} has mode {path.stat().st_mode & 0o777:04o}: others can read it",
                                fix=f"chmod 600 {path}, then finish the rotation (invoke secrets.rotate {name})")
            value = path.read_text().strip()
            if value:
                retiring[name] = SecretStr(value)
    return retiring


def load_secrets(directory: Path) -> Secrets:
    """Load existing secrets without creating any (for status, env, logs). Inside a compose project container (the
    backup container), the secrets its service mounts: only those, nothing generated there."""
    if in_project_container():
        return mounted_secrets(directory)
    if not (directory / "prefect_auth").exists():
        raise UserError(f"no secrets in {directory}: nothing has been deployed there", fix="run invoke deploy first")
    return ensure_secrets(directory)


def mounted_secrets(directory: Path) -> Secrets:
    """The secrets a workload was given, as its mount presents them (the backup CronJob's Secret volume, the compose
    backup container's secret files): read-only, nothing to generate or chmod; the mount is the boundary there, so
    the 0600 rule of a host's state directory does not apply. A secret the workload was not given is WITHHELD (using
    it is an error naming it); one that is given but empty is refused now."""
    if not directory.is_dir():
        raise UserError(f"no secrets are mounted at {directory}",
                        fix="deploy again (invoke deploy), which mounts the workload's secrets there")
    values: dict[str, Any] = {}  # SecretStr each (Any: Secrets also has a non-secret field)
    for name in SECRET_NAMES:
        path = directory / name
        if not path.is_file():
            values[name] = WITHHELD
            continue
        value = path.read_text().strip()
        if not value:
            raise UserError(f"secret {name} is empty in {directory} (the mounted secrets)",
                            fix="run invoke deploy, which writes the workload's secrets from the generated ones")
        values[name] = SecretStr(value)
    return Secrets(**values)


def check_rotatable(name: str) -> None:
    if name not in SECRET_NAMES:
        raise UserError(f"unknown secret {name!r}", fix=f"choose one of: {', '.join(SECRET_NAMES)}")
    if name in NOT_ROTATED:
        raise UserError(f"{name} is not rotated by secrets.rotate: the backups already taken are encrypted with it, "
                        "and a new key would leave them unreadable",
                        fix="keep it (docs/backups-and-restore.md); to encrypt new backups with another key, "
                            "first copy this one somewhere safe: the old backups still need it")


def rotation_under_way(directory: Path, name: str) -> bool:
    """A two-phase rotation that began and did not finish (its old value is still accepted)."""
    return (directory / f"{name}{PREVIOUS_SUFFIX}").is_file()


def rotate_secret(directory: Path, name: str) -> None:
    """Replace one secret with a freshly generated value. For a two-phase secret, the old value is kept as
    NAME.previous (still accepted by its server) until finish_rotation; a rotation already under way keeps the value
    it began with, so running it again after an interruption resumes it instead of stranding clients."""
    check_rotatable(name)
    path = directory / name
    if name in TWO_PHASE:
        if rotation_under_way(directory, name):
            return
        if path.is_file():
            # The old value is written first: an interruption between the two writes leaves both files holding it,
            # which is a rotation that changes nothing yet, never a lost credential.
            _write_private(directory / f"{name}{PREVIOUS_SUFFIX}", path.read_text().strip())
    _write_private(path, _generate(name))


def finish_rotation(directory: Path, name: str) -> None:
    """Stop accepting the old value of a two-phase secret (every client uses the new one)."""
    (directory / f"{name}{PREVIOUS_SUFFIX}").unlink(missing_ok=True)
