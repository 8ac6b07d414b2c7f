"""The Secrets `invoke deploy --target kubernetes` creates from the generated secrets (infra/secrets.py).

They are never rendered into a file: deploy builds them in memory and hands them to kubectl on standard input.
The manifests only reference them by name (``Names.secret_*``), and ``external_secrets`` lists what each holds,
so the offline checks can tell a reference to one of these from a dangling one.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from infra.config import StackConfig
from infra.errors import UserError
from infra.kubernetes import prefect
from infra.kubernetes.objects import Names, flow_run_namespace, kubernetes_pool_names, metadata
from infra.render.postgres import MONITOR_ROLE
from infra.secrets import SECRET_NAMES, Secrets


def external_secrets(config: StackConfig) -> dict[str, str]:
    """Every Secret the rendered objects may reference without rendering it, and who makes it."""
    names = Names.of(config)
    made = {
        names.secret_stack: "invoke deploy: every generated secret (backup CronJob, migration Job)",
        names.secret_prefect_env: "invoke deploy: the Prefect processes' environments",
        names.secret_redis: "invoke deploy: Redis passwords",
    }
    if config.kubernetes.postgres.mode == "cnpg":
        made[names.secret_db_superuser] = "invoke deploy: the PostgreSQL superuser (CloudNativePG superuserSecret)"
        made[names.secret_db_app] = ("invoke deploy: the role Prefect connects as (CloudNativePG initdb secret, "
                                     "managed role)")
        made[names.secret_db_monitor] = "invoke deploy: the monitor role (CloudNativePG managed role)"
        made[f"{names.database}-ca"] = "CloudNativePG: the Cluster's CA (ca.crt)"
    if config.kubernetes.s3_credentials == "secret":
        made[names.secret_s3] = "invoke deploy: S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if config.kubernetes.ingress.enabled:
        made[config.kubernetes.ingress.tls_secret] = ("cert-manager (ingress.cluster_issuer)"
                                                      if config.kubernetes.ingress.cluster_issuer
                                                      else "the operator: the Ingress certificate")
    if kubernetes_pool_names(config) and flow_run_namespace(config) != config.kubernetes.namespace:
        made[names.secret_flow_run_auth] = ("invoke deploy: the API's credentials for flow-run pods, in "
                                            "kubernetes.flow_run_namespace")
    for name in config.kubernetes.scheduling.image_pull_secrets:
        made[name] = "the operator: credentials of kubernetes.image_registry (kubernetes.scheduling.image_pull_secrets)"
    return made


# CloudNativePG applies a changed password of a managed role at once when its Secret carries this label (otherwise
# only at a later reconciliation).
CNPG_RELOAD = {"cnpg.io/reload": "true"}


def _secret(config: StackConfig, name: str, data: dict[str, str], secret_type: str = "Opaque",  # noqa: S107 - a type name
            extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": secret_type,
        "metadata": metadata(config, name, "secrets", extra_labels=extra_labels),
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in sorted(data.items())},
    }


def s3_credentials(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """The S3 key pair for the backups, from the deploying shell (as boto3 would read it)."""
    environ = dict(os.environ) if environ is None else environ
    key_id, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        raise UserError("kubernetes.s3_credentials is 'secret' but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are "
                        "not both set in this shell: deploy copies them into a Secret for the backups",
                        fix="export both (the bucket's key pair), or set kubernetes.s3_credentials: iam-role when "
                            "the pods have a cloud identity (IRSA, workload identity)")
    return key_id, secret


def secret_objects(config: StackConfig, secrets: Secrets,
                   environ: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The Secret objects for this deploy (with values: only ever passed to kubectl on standard input)."""
    names = Names.of(config)
    objects = [
        _secret(config, names.secret_stack, {name: secrets.get(name) for name in SECRET_NAMES}),
        _secret(config, names.secret_prefect_env, prefect.environment_files(config, secrets)),
        _secret(config, names.secret_redis, {"password": secrets.get("redis"),
                                             "monitor-password": secrets.get("redis_monitor")}),
    ]
    if config.kubernetes.postgres.mode == "cnpg":
        objects.append(_secret(config, names.secret_db_superuser,
                               {"username": "postgres", "password": secrets.get("postgres_superuser")},
                               "kubernetes.io/basic-auth"))
        # The two managed roles' passwords (the Cluster's managed.roles; username must be the role's name).
        objects.append(_secret(config, names.secret_db_app,
                               {"username": config.postgres.user, "password": secrets.get("postgres_prefect")},
                               "kubernetes.io/basic-auth", CNPG_RELOAD))
        objects.append(_secret(config, names.secret_db_monitor,
                               {"username": MONITOR_ROLE, "password": secrets.get("postgres_monitor")},
                               "kubernetes.io/basic-auth", CNPG_RELOAD))
    if kubernetes_pool_names(config) and flow_run_namespace(config) != config.kubernetes.namespace:
        # Flow-run pods read the API's credentials from a Secret of their own namespace: only that key is copied.
        copy = _secret(config, names.secret_flow_run_auth, {"prefect_auth": secrets.get("prefect_auth")})
        copy["metadata"]["namespace"] = flow_run_namespace(config)
        objects.append(copy)
    if config.kubernetes.s3_credentials == "secret":
        key_id, secret = s3_credentials(environ)
        objects.append(_secret(config, names.secret_s3, {
            "ACCESS_KEY_ID": key_id, "ACCESS_SECRET_KEY": secret,
            # The same pair as a shared credentials file, which boto3 reads in the backup CronJob.
            "credentials": f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"}))
    return objects
