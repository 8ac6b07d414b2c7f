"""TLS at the load balancer on the local target, end to end, on a second small stack of its own.

One API replica, no monitoring, no backup schedule, load_balancer.tls.mode on, and an operator's certificate for
one name: a real Prefect client configured only by `invoke env` writes and reads over HTTPS (on 127.0.0.1, with the
deployment's CA); a client asking for the operator's name gets the operator's certificate; plain HTTP to the TLS
port and a client that does not trust the CA both fail. The session stack (plaintext on loopback) is neither used
nor disturbed.
"""

from __future__ import annotations

import os
import shlex
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.certificates import issue_self_signed
from tests.integration.conftest import Stack, deployed_stack, stack_env, temporary_state_root

pytestmark = pytest.mark.integration

OPERATOR_NAME = "prefect.test"
TLS_STACK = {
    "PREFECT_STACK_LOAD_BALANCER__TLS__MODE": "on",
    "PREFECT_STACK_MONITORING__ENABLED": "false",
    "PREFECT_STACK_BACKUPS__SCHEDULE_ENABLED": "false",
}
# Creates a flow and reads it back with Prefect's own client: everything it knows comes from the environment.
PREFECT_CLIENT = """
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    flow_id = client.create_flow_from_name("tls-end-to-end")
    print(client.read_flow(flow_id).name)
"""


@pytest.fixture(autouse=True)
def healthy_stack() -> None:
    """Replaces the package's autouse fixture: these tests use their own stack, not the session one."""


@pytest.fixture(scope="module")
def operator_certificate() -> Iterator[Path]:
    with temporary_state_root("prefect-stack-tls-operator-") as root:
        yield issue_self_signed(root, [OPERATOR_NAME])[0]


@pytest.fixture(scope="module")
def tls_stack(operator_certificate: Path) -> Iterator[Stack]:
    operator = {"PREFECT_STACK_LOAD_BALANCER__TLS__CERT_FILE": str(operator_certificate),
                "PREFECT_STACK_LOAD_BALANCER__TLS__KEY_FILE": str(operator_certificate.with_name("key.pem"))}
    with (temporary_state_root("prefect-stack-tls-") as root,
          deployed_stack({**stack_env(root / "state", 1), **TLS_STACK, **operator}) as deployed):
        yield deployed


@pytest.fixture(scope="module")
def client_env(tls_stack: Stack) -> dict[str, str]:
    """What `invoke env` exports, parsed as a shell would."""
    printed = tls_stack.invoke("env", check=True).stdout
    exports = [shlex.split(line)[1] for line in printed.splitlines() if line.startswith("export ")]
    return dict(item.split("=", 1) for item in exports)


def _prefect_client(env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    # Only what invoke env printed: no PREFECT_* setting and no profile of whoever runs the tests.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SSL_CERT"))}
    return subprocess.run([sys.executable, "-c", PREFECT_CLIENT], env={**clean, **env, "PREFECT_HOME": str(home)},
                          capture_output=True, text=True, timeout=60, check=False)


def test_env_exports_an_https_url(client_env: dict[str, str]) -> None:
    assert client_env["PREFECT_API_URL"].startswith("https://127.0.0.1:")


def test_env_exports_the_ca(client_env: dict[str, str], tls_stack: Stack) -> None:
    ca = x509.load_pem_x509_certificate(Path(client_env["PREFECT_API_SSL_CERT_FILE"]).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_prefect_client_writes_and_reads_over_https(client_env: dict[str, str], tmp_path: Path) -> None:
    result = _prefect_client(client_env, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "tls-end-to-end"


def test_prefect_client_without_the_ca_is_refused(client_env: dict[str, str], tmp_path: Path) -> None:
    without_ca = {k: v for k, v in client_env.items() if k != "PREFECT_API_SSL_CERT_FILE"}
    result = _prefect_client(without_ca, tmp_path)
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr


def test_client_without_the_ca_fails_verification(tls_stack: Stack) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_stack.url}/health", trust_env=False, verify=ssl.create_default_context(), timeout=10)


def test_plain_http_to_the_tls_port_fails(tls_stack: Stack) -> None:
    plain = tls_stack.url.replace("https://", "http://", 1)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/health", trust_env=False, timeout=10)


def test_trusted_client_reaches_the_api(tls_stack: Stack) -> None:
    with tls_stack.client() as client:
        assert client.get("/health").status_code == 200



def test_operator_certificate_for_its_name(tls_stack: Stack, operator_certificate: Path) -> None:
    # SNI asks for the operator's name: HAProxy serves the operator's certificate, which is all this client trusts.
    trusts_only_it = ssl.create_default_context(cafile=str(operator_certificate))
    with httpx.Client(trust_env=False, verify=trusts_only_it, timeout=10) as client:
        response = client.get(f"{tls_stack.url}/health", extensions={"sni_hostname": OPERATOR_NAME})
    assert response.status_code == 200


def test_generated_certificate_without_sni(tls_stack: Stack, operator_certificate: Path) -> None:
    # A client on 127.0.0.1 (no SNI) gets the deployment CA's certificate, not the operator's.
    trusts_only_operator = ssl.create_default_context(cafile=str(operator_certificate))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_stack.url}/health", trust_env=False, verify=trusts_only_operator, timeout=10)


def test_second_deploy_restarts_nothing(tls_stack: Stack) -> None:
    # The certificate is re-issued only when its names change or it nears expiry, not on every deploy.
    pem = (tls_stack.layout.etc / "lb-tls.pem").read_text()
    result = tls_stack.invoke("deploy")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "nothing changed; nothing restarted" in result.stderr
    assert (tls_stack.layout.etc / "lb-tls.pem").read_text() == pem
