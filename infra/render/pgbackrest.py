"""pgbackrest.conf: the physical backup repository (S3, <prefix>/physical) and the stanza for our cluster.

Read afresh by every pgBackRest invocation (archive-push runs once per WAL segment), so a change here never
needs a PostgreSQL restart.
"""

from __future__ import annotations

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


def pgbackrest_conf(config: StackConfig, secrets: Secrets, layout: StateLayout) -> RenderedFile:
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
    lines = [
        "# Rendered by prefect-stack from the configuration model; edit the model, not this file.",
        "[global]",
        "repo1-type=s3",
        f"repo1-path={prefix}",
        f"repo1-s3-bucket={s3.bucket}",
        f"repo1-s3-endpoint={host}",
        f"repo1-storage-port={port}",
        f"repo1-s3-region={s3.region}",
        "repo1-s3-uri-style=path",
        *credentials,
        *sse,
        f"repo1-retention-full={physical.retention_full}",
        "compress-type=zst",
        f"process-max={physical.process_max}",
        "start-fast=y",
        f"log-path={layout.logs / 'pgbackrest'}",
        f"lock-path={layout.run / 'pgbackrest'}",
        f"spool-path={layout.run / 'pgbackrest-spool'}",
        "log-level-console=warn",
        "log-level-file=info",
        "",
        f"[{STANZA}]",
        f"pg1-path={layout.postgres_data}",
        f"pg1-port={config.postgres.port}",
        f"pg1-socket-path={layout.run}",
        "pg1-user=postgres",
    ]
    return RenderedFile(layout.etc / "pgbackrest.conf", "\n".join(lines) + "\n", secret=True)
