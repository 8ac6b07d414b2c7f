"""pgbackrest.conf: the physical backup repository (S3, <prefix>/physical) and the stanza for our cluster.

Read afresh by every pgBackRest invocation (archive-push runs once per WAL segment), so a change here never
needs a PostgreSQL restart. The backup benchmark renders the same file for a repository in a directory of its
own (``DirectoryRepository``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from infra.config import LOCAL_ACCESS_KEY_ID, StackConfig
from infra.layout import StateLayout
from infra.render import RenderedFile
from infra.secrets import Secrets

STANZA = "prefect"


def pgbackrest_conf_path(layout: StateLayout) -> str:
    return str(layout.etc / "pgbackrest.conf")


def archive_command(layout: StateLayout) -> str:
    return f"pgbackrest --config={pgbackrest_conf_path(layout)} --stanza={STANZA} archive-push %p"


@dataclass(frozen=True)
class DirectoryRepository:
    """A repository in a directory of this host instead of the configured S3 one, with pgBackRest's log, lock and
    spool directories and its configuration file under the same ``root``: the backup benchmark's, which must
    touch neither the stack's bucket nor another installation's /tmp/pgbackrest and /var/spool/pgbackrest."""

    root: Path
    process_max: int
    retention_full: int = 1

    @property
    def config_file(self) -> Path:
        return self.root / "pgbackrest.conf"


def _s3_repository(config: StackConfig, secrets: Secrets, layout: StateLayout) -> list[str]:
    s3, physical = config.backups.s3, config.backups.physical
    if s3.endpoint_url is None:
        # pgBackRest speaks only HTTPS to S3: it goes through HAProxy's TLS front of the local endpoint.
        host, port = "127.0.0.1", physical.tls_port
        credentials = [
            "repo1-s3-key-type=shared",
            f"repo1-s3-key={LOCAL_ACCESS_KEY_ID}",
            f"repo1-s3-key-secret={secrets.get('s3_local')}",
            f"repo1-storage-ca-file={layout.etc / 's3-tls.crt'}",
        ]
    else:
        parsed = urlparse(s3.endpoint_url)
        host, port = parsed.hostname or s3.endpoint_url, parsed.port or 443
        # With real S3, pgBackRest takes the instance or pod role's credentials.
        credentials = ["repo1-s3-key-type=auto"]
    sse = []
    if s3.server_side_encryption == "aws:kms" and s3.kms_key_id and s3.endpoint_url is not None:
        sse = ["repo1-s3-kms-key-id=" + s3.kms_key_id]
    prefix = "/" + "/".join(p for p in (s3.prefix.strip("/"), "physical") if p)
    return [
        "repo1-type=s3",
        f"repo1-path={prefix}",
        f"repo1-s3-bucket={s3.bucket}",
        f"repo1-s3-endpoint={host}",
        f"repo1-storage-port={port}",
        f"repo1-s3-region={s3.region}",
        "repo1-s3-uri-style=path",
        *credentials,
        *sse,
    ]


def pgbackrest_conf(
    config: StackConfig, secrets: Secrets, layout: StateLayout, directory: DirectoryRepository | None = None
) -> RenderedFile:
    """The stack's pgbackrest.conf; with ``directory``, the same cluster backed up to that directory instead."""
    if directory is None:
        physical = config.backups.physical
        repository = _s3_repository(config, secrets, layout)
        retention_full, process_max = physical.retention_full, physical.process_max
        log, lock, spool = layout.logs / "pgbackrest", layout.run / "pgbackrest", layout.run / "pgbackrest-spool"
        path = layout.etc / "pgbackrest.conf"
    else:
        root = directory.root
        repository = ["repo1-type=posix", f"repo1-path={root / 'repo'}"]
        retention_full, process_max = directory.retention_full, directory.process_max
        log, lock, spool = root / "log", root / "lock", root / "spool"
        path = directory.config_file
    lines = [
        "# Rendered by prefect-stack from the configuration model; edit the model, not this file.",
        "[global]",
        *repository,
        f"repo1-retention-full={retention_full}",
        "compress-type=zst",
        f"process-max={process_max}",
        "start-fast=y",
        f"log-path={log}",
        f"lock-path={lock}",
        f"spool-path={spool}",
        "log-level-console=warn",
        "log-level-file=info",
        "",
        f"[{STANZA}]",
        f"pg1-path={layout.postgres_data}",
        f"pg1-port={config.postgres.port}",
        f"pg1-socket-path={layout.run}",
        "pg1-user=postgres",
    ]
    # A directory repository holds no credential: the service user that runs pgBackRest reads the file.
    return RenderedFile(path, "\n".join(lines) + "\n", secret=directory is None)
