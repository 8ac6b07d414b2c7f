"""TLS at the load balancer, for every target: the certificates HAProxy serves and what clients must trust.

A CA generated once per deployment (``<secrets>/lb_ca.key`` and ``lb_ca.crt``) signs the certificate HAProxy serves
by default: for loopback, the bind address, public_url's host, extra_names and the target's own names (a compose
service name). The CA is never re-created while its files exist (clients keep trusting it); the certificate it signs
is re-issued when those names change or within RENEW_BEFORE of expiry. Every file here is written 0600.

The operator's certificate chain and key (load_balancer.tls.cert_file / key_file), checked before use, are served to
every client that asks for one of its names (SNI). The generated certificate still serves the rest: the stack's own
processes and probes reach HAProxy on 127.0.0.1 or a service name, which no public CA certifies, and they trust
exactly the deployment's CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra.config import StackConfig
from infra.errors import UserError

CA_KEY = "lb_ca.key"
CA_CERT = "lb_ca.crt"
SERVER_KEY = "lb_tls.key"
SERVER_CERT = "lb_tls.crt"
CA_VALIDITY = datetime.timedelta(days=3650)
# Short enough that renewal is exercised; deploy renews it RENEW_BEFORE expiry.
SERVER_VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)
_WILDCARD_BINDS = ("0.0.0.0", "::")  # noqa: S104 - addresses compared, not bound


@dataclass(frozen=True)
class OperatorCertificate:
    """The operator's chain (leaf first) and key, checked, and the names its leaf certifies."""

    chain: str
    key: str
    names: frozenset[str]

    @property
    def pem_bundle(self) -> str:
        return _bundle(self.chain, self.key)


@dataclass(frozen=True)
class LoadBalancerTls:
    """What a target needs: the PEM HAProxy serves by default, the operator's (by SNI) if any, and the CA clients of
    the default certificate trust (its PEM, and its path on this host)."""

    certificate_chain: str  # leaf first
    private_key: str
    trusted: str  # the deployment's CA certificate
    ca_file: Path  # where ``trusted`` is on this host
    operator: OperatorCertificate | None = None

    @property
    def pem_bundle(self) -> str:
        """Chain and key in one file, as HAProxy's ``crt`` takes it. A secret."""
        return _bundle(self.certificate_chain, self.private_key)


def _bundle(chain: str, key: str) -> str:
    return chain.rstrip("\n") + "\n" + key


def certificate_names(config: StackConfig, names: Iterable[str] = ()) -> list[str]:
    """Every name clients may use for the load balancer, in a stable order without repeats."""
    lb = config.load_balancer
    wanted = ["localhost", "127.0.0.1", "::1"]
    if lb.bind_address not in _WILDCARD_BINDS:
        wanted.append(lb.bind_address)
    if lb.public_url:
        host = urlsplit(lb.public_url).hostname
        if host:
            wanted.append(host)
    wanted += [*lb.tls.extra_names, *names]
    return list(dict.fromkeys(_canonical(name) for name in wanted))


def load_balancer_tls(config: StackConfig, secrets_dir: Path, names: Sequence[str] = ()) -> LoadBalancerTls:
    """The load balancer's certificates: one from this deployment's CA carrying ``certificate_names(config, names)``
    (targets add their own, e.g. a compose service name), and the operator's when configured. Names the operator's
    certificate covers are left to it, so that SNI picks it for them."""
    tls = config.load_balancer.tls
    operator = None
    if tls.cert_file is not None and tls.key_file is not None:
        operator = operator_certificate(tls.cert_file, tls.key_file)
    # The generated certificate needs one name; if the operator's covers them all it is only served to strangers.
    wanted = [n for n in certificate_names(config, names) if operator is None or n not in operator.names] or [
        "localhost"]
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_cert = ensure_ca(secrets_dir)
    chain, key = _ensure_server_certificate(secrets_dir, ca_key, ca_cert, wanted)
    return LoadBalancerTls(chain, key, _pem(ca_cert), secrets_dir / CA_CERT, operator)


# ---------------------------------------------------------------- the operator's certificate


def operator_certificate(cert_file: Path, key_file: Path) -> OperatorCertificate:
    """The operator's chain and key, refused with the reason when unreadable, mismatched or expired."""
    cert_file, key_file = cert_file.expanduser(), key_file.expanduser()
    chain_pem, key_pem = _read(cert_file, "load_balancer.tls.cert_file"), _read(key_file, "load_balancer.tls.key_file")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError:
        raise UserError(f"{cert_file} holds no PEM certificate",
                        fix="set load_balancer.tls.cert_file to your PEM certificate chain (leaf first)") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        raise UserError(f"the private key in {key_file} is encrypted; HAProxy needs it unencrypted",
                        fix=f"decrypt it (openssl pkey -in {key_file} -out NEW), keep NEW mode 0600 and point "
                            "load_balancer.tls.key_file at it") from None
    except ValueError:
        raise UserError(f"{key_file} holds no PEM private key",
                        fix="set load_balancer.tls.key_file to the PEM private key of your certificate") from None
    leaf = chain[0]
    if _public_key(key) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise UserError(f"the private key in {key_file} does not belong to the certificate in {cert_file}",
                        fix="point load_balancer.tls.key_file at the key the certificate was issued for "
                            "(the leaf certificate must come first in cert_file)")
    if leaf.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise UserError(f"the certificate in {cert_file} expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
                        fix="renew it, or unset load_balancer.tls.cert_file and key_file to use a generated one")
    mode = key_file.stat().st_mode & 0o777
    if mode & 0o077:
        raise UserError(f"the private key {key_file} has mode {mode:04o}: others can read it",
                        fix=f"chmod 600 {key_file}, and replace the certificate if the key may have leaked")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise UserError(f"the certificate in {cert_file} names no host (no subjectAltName); clients refuse it",
                        fix="issue it with the DNS names (and IPs) clients use as subjectAltName") from None
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    names |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return OperatorCertificate(chain_pem, key_pem, frozenset(_canonical(n) for n in names))


def _read(path: Path, field: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {field} {path}: {exc.strerror}",
                        fix=f"check that {path} exists and that the user running invoke can read it") from None
    except UnicodeDecodeError:
        raise UserError(f"{field} {path} is not PEM text (DER?)",
                        fix=f"convert it: openssl x509 -in {path} -out NEW.pem (or openssl pkey for a key)") from None


# ---------------------------------------------------------------- the generated CA and certificate


def ensure_ca(secrets_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """This deployment's CA, created once: never replaced while its files exist (clients trust it)."""
    key_path, cert_path = secrets_dir / CA_KEY, secrets_dir / CA_CERT
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UserError(f"{key_path} is not the EC key prefect-stack generates",
                            fix=f"restore the original {CA_KEY} and {CA_CERT}, or delete both to create a new CA "
                                "(clients must then trust the new lb_ca.crt)")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    if key_path.exists() or cert_path.exists():
        present = key_path if key_path.exists() else cert_path
        raise UserError(f"{present} exists without its pair; the CA is incomplete",
                        fix=f"restore the missing file, or delete {present} to create a new CA (clients must then "
                            "trust the new lb_ca.crt)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "prefect-stack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"prefect-stack load balancer CA {os.urandom(4).hex()}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, _pem(cert))
    return key, cert


def _ensure_server_certificate(
    secrets_dir: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: list[str]
) -> tuple[str, str]:
    """(chain PEM, key PEM) of a certificate for ``names``, re-issued only when needed."""
    key_path, cert_path = secrets_dir / SERVER_KEY, secrets_dir / SERVER_CERT
    if key_path.exists() and cert_path.exists() and _still_good(cert_path, key_path, ca_cert, names):
        return cert_path.read_text(), key_path.read_text()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = _pem(cert) + _pem(ca_cert)
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, chain)
    return chain, _key_pem(key)


def _still_good(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, names: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        carried = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False  # damaged, or from another CA: issue a new one
    expires_in = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return (set(carried) == {_general_name(n) for n in names} and expires_in > RENEW_BEFORE
            and _public_key(key) == cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name.lower()


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _public_key(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]  # every private key type has one
    data: bytes = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _write_private(path: Path, text: str) -> None:
    """Mode 0600 from the first byte, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
