"""Generated credentials: created on first deploy, kept in <state>/secrets with mode 0600, never printed.

There are no default passwords. Each secret is one file, so rotating one is deleting (or replacing) one file
and deploying again (``invoke secrets.rotate NAME`` does both).
"""

from __future__ import annotations

import os
import secrets as token_source
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

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
}
_USER_PREFIXED = {"prefect_auth", "haproxy_stats"}


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

    def get(self, name: str) -> str:
        value: SecretStr = getattr(self, name)
        return value.get_secret_value()


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
    values: dict[str, SecretStr] = {}
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
    return Secrets(**values)


def load_secrets(directory: Path) -> Secrets:
    """Load existing secrets without creating any (for status, env, logs)."""
    if not (directory / "prefect_auth").exists():
        raise UserError(f"no secrets in {directory}: nothing has been deployed there", fix="run invoke deploy first")
    return ensure_secrets(directory)


def mounted_secrets(directory: Path) -> Secrets:
    """The secrets as a Kubernetes Secret volume presents them (the backup CronJob's pod): read-only, files
    group-readable by the pod's fsGroup, nothing to generate or chmod. The Secret object is the boundary there;
    the 0600 rule of a host's state directory does not apply."""
    values: dict[str, SecretStr] = {}
    for name in SECRET_NAMES:
        path = directory / name
        value = path.read_text().strip() if path.is_file() else ""
        if not value:
            raise UserError(f"secret {name} is missing or empty in {directory} (the mounted Secret)",
                            fix="run invoke deploy --target kubernetes, which creates the Secret from the generated "
                                "secrets")
        values[name] = SecretStr(value)
    return Secrets(**values)


def rotate_secret(directory: Path, name: str) -> None:
    """Replace one secret with a freshly generated value (the next deploy applies it everywhere)."""
    if name not in SECRET_NAMES:
        raise UserError(f"unknown secret {name!r}", fix=f"choose one of: {', '.join(SECRET_NAMES)}")
    _write_private(directory / name, _generate(name))
