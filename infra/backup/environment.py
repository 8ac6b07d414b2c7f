"""What boto3 (>= 1.28) and the aws CLI need to reach the backup bucket, for `invoke env --backups`."""

from __future__ import annotations

from infra.backup.storage import BackupStore
from infra.config import LOCAL_ACCESS_KEY_ID, StackConfig
from infra.layout import StateLayout
from infra.secrets import load_secrets


def backup_environment(config: StackConfig) -> dict[str, str]:
    """Region, endpoint and location; the keys only for the stack's own endpoint (real S3 keeps its own chain)."""
    s3 = config.backups.s3
    env = {"AWS_DEFAULT_REGION": s3.region, "AWS_ENDPOINT_URL_S3": config.s3_endpoint_url,
           "PREFECT_STACK_BACKUP_LOCATION": BackupStore(config, None).location}
    if config.own_s3_endpoint:
        env["AWS_ACCESS_KEY_ID"] = LOCAL_ACCESS_KEY_ID
        env["AWS_SECRET_ACCESS_KEY"] = load_secrets(StateLayout(config.state_dir).secrets).get("s3_local")
    return env
