"""How a client of this deployment reaches the Prefect API through the load balancer: the certificate it trusts."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from infra.config import StackConfig
from infra.errors import UserError
from infra.layout import TRUSTED_CA, StateLayout
from infra.secrets import load_secrets


def trusted_ca_file(config: StackConfig) -> Path | None:
    """The certificate HTTPS clients of the load balancer trust (rendered by deploy), or None when TLS is off."""
    return StateLayout(config.state_dir).etc / TRUSTED_CA if config.tls_enabled else None


def load_balancer_verify(config: StackConfig) -> ssl.SSLContext | bool:
    """What an HTTPS client of the load balancer trusts: this deployment's certificate only (True: TLS is off)."""
    ca_file = trusted_ca_file(config)
    return True if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def load_balancer_client(config: StackConfig, **kwargs: Any) -> httpx.Client:
    """An httpx client for the API through the load balancer, trusting its certificate when TLS is on."""
    return httpx.Client(base_url=config.api_url, trust_env=False, verify=load_balancer_verify(config), **kwargs)


def load_balancer_environment(config: StackConfig) -> dict[str, str]:
    """What a Prefect client needs to reach the API through the load balancer: URL, credentials, the CA to trust."""
    secrets = load_secrets(StateLayout(config.state_dir).secrets)
    env = {"PREFECT_API_URL": config.api_url, "PREFECT_API_AUTH_STRING": secrets.get("prefect_auth")}
    ca_file = trusted_ca_file(config)
    if ca_file is not None:
        if not ca_file.is_file():
            raise UserError(f"TLS is on but {ca_file} (the certificate clients trust) is missing",
                            fix="run invoke deploy, which renders it")
        env["PREFECT_API_SSL_CERT_FILE"] = str(ca_file)
    return env
