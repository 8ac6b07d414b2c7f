"""The load balancer's certificate: the generated CA and what it signs, and the operator's certificate checks."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from infra import tls
from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.tls import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, LoadBalancerTls, load_balancer_tls
from tests.certificates import issue_self_signed


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., StackConfig]:
    def make(**load_balancer: Any) -> StackConfig:
        return load_config(local={"state_dir": str(tmp_path / "state")},
                           load_balancer={"tls": {"mode": "on"}, **load_balancer})

    return make


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


@pytest.fixture
def generated(make_config: Callable[..., StackConfig], secrets_dir: Path) -> LoadBalancerTls:
    config = make_config(bind_address="10.1.2.3", public_url="https://prefect.example.com/api",
                         tls={"mode": "on", "extra_names": ["prefect.internal", "192.0.2.7"]})
    return load_balancer_tls(config, secrets_dir, names=("haproxy",))


def _leaf(bundle: LoadBalancerTls) -> x509.Certificate:
    return x509.load_pem_x509_certificates(bundle.certificate_chain.encode())[0]


def _san(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


class TestGeneratedCertificate:
    def test_chains_to_the_ca(self, generated: LoadBalancerTls) -> None:
        ca = x509.load_pem_x509_certificate(generated.trusted.encode())
        _leaf(generated).verify_directly_issued_by(ca)  # raises when it does not

    def test_ca_file_is_the_ca(self, generated: LoadBalancerTls, secrets_dir: Path) -> None:
        assert generated.ca_file == secrets_dir / CA_CERT
        assert generated.ca_file.read_text() == generated.trusted

    def test_is_a_server_certificate(self, generated: LoadBalancerTls) -> None:
        leaf = _leaf(generated)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage

    @pytest.mark.parametrize("name", ["localhost", "prefect.example.com", "prefect.internal", "haproxy"])
    def test_carries_dns_name(self, generated: LoadBalancerTls, name: str) -> None:
        assert x509.DNSName(name) in _san(_leaf(generated))

    @pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "192.0.2.7"])
    def test_carries_ip_address(self, generated: LoadBalancerTls, address: str) -> None:
        assert x509.IPAddress(ipaddress.ip_address(address)) in _san(_leaf(generated))

    def test_wildcard_bind_is_not_a_name(self, make_config: Callable[..., StackConfig], secrets_dir: Path) -> None:
        bundle = load_balancer_tls(make_config(bind_address="0.0.0.0"), secrets_dir)  # noqa: S104 - not a bind
        assert x509.IPAddress(ipaddress.ip_address("0.0.0.0")) not in _san(_leaf(bundle))  # noqa: S104

    def test_pem_bundle_is_chain_then_key(self, generated: LoadBalancerTls) -> None:
        assert generated.pem_bundle.startswith("-----BEGIN CERTIFICATE-----")
        assert generated.pem_bundle.rstrip().endswith("-----END PRIVATE KEY-----")

    @pytest.mark.parametrize("name", [CA_KEY, CA_CERT, SERVER_KEY, SERVER_CERT])
    def test_file_mode_0600(self, generated: LoadBalancerTls, secrets_dir: Path, name: str) -> None:
        assert (secrets_dir / name).stat().st_mode & 0o777 == 0o600

    def test_secrets_dir_mode_0700(self, generated: LoadBalancerTls, secrets_dir: Path) -> None:
        assert secrets_dir.stat().st_mode & 0o777 == 0o700


class TestReissue:
    def test_same_names_same_certificate(self, make_config: Callable[..., StackConfig], secrets_dir: Path) -> None:
        first = load_balancer_tls(make_config(), secrets_dir)
        assert load_balancer_tls(make_config(), secrets_dir) == first

    def test_new_name_new_certificate(self, make_config: Callable[..., StackConfig], secrets_dir: Path) -> None:
        first = load_balancer_tls(make_config(), secrets_dir)
        second = load_balancer_tls(make_config(tls={"mode": "on", "extra_names": ["new.example"]}), secrets_dir)
        assert second.certificate_chain != first.certificate_chain
        assert x509.DNSName("new.example") in _san(_leaf(second))

    def test_new_name_keeps_the_ca(self, make_config: Callable[..., StackConfig], secrets_dir: Path) -> None:
        first = load_balancer_tls(make_config(), secrets_dir)
        ca_key = (secrets_dir / CA_KEY).read_bytes()
        second = load_balancer_tls(make_config(tls={"mode": "on", "extra_names": ["new.example"]}), secrets_dir)
        assert (second.trusted, (secrets_dir / CA_KEY).read_bytes()) == (first.trusted, ca_key)

    def test_renewed_near_expiry(self, make_config: Callable[..., StackConfig], secrets_dir: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
        with monkeypatch.context() as patched:
            patched.setattr(tls, "SERVER_VALIDITY", tls.RENEW_BEFORE / 2)
            expiring = load_balancer_tls(make_config(), secrets_dir)
        renewed = load_balancer_tls(make_config(), secrets_dir)
        assert _leaf(renewed).not_valid_after_utc > _leaf(expiring).not_valid_after_utc
        assert renewed.trusted == expiring.trusted

    def test_half_a_ca_is_refused(self, make_config: Callable[..., StackConfig], secrets_dir: Path) -> None:
        load_balancer_tls(make_config(), secrets_dir)
        (secrets_dir / CA_KEY).unlink()
        with pytest.raises(UserError, match="without its pair"):
            load_balancer_tls(make_config(), secrets_dir)


class TestOperatorCertificate:
    @pytest.fixture
    def issued(self, tmp_path: Path) -> tuple[Path, Path]:
        return issue_self_signed(tmp_path / "operator", ["prefect.example.com"])

    def _config(self, make_config: Callable[..., StackConfig], cert: Path, key: Path) -> StackConfig:
        return make_config(public_url="https://prefect.example.com/api",
                           tls={"mode": "on", "cert_file": str(cert), "key_file": str(key)})

    def test_served_as_given(self, make_config: Callable[..., StackConfig], issued: tuple[Path, Path],
                             secrets_dir: Path) -> None:
        cert, key = issued
        operator = load_balancer_tls(self._config(make_config, cert, key), secrets_dir).operator
        assert operator is not None
        assert (operator.chain, operator.key, operator.names) == (
            cert.read_text(), key.read_text(), frozenset({"prefect.example.com"}))

    def test_its_names_are_left_to_it(self, make_config: Callable[..., StackConfig], issued: tuple[Path, Path],
                                      secrets_dir: Path) -> None:
        # SNI picks the operator's certificate for its names only if the generated one does not carry them too.
        bundle = load_balancer_tls(self._config(make_config, *issued), secrets_dir)
        assert x509.DNSName("prefect.example.com") not in _san(_leaf(bundle))

    def test_loopback_keeps_the_generated_certificate(self, make_config: Callable[..., StackConfig],
                                                      issued: tuple[Path, Path], secrets_dir: Path) -> None:
        # The stack's own clients reach HAProxy on 127.0.0.1, which no public CA certifies.
        bundle = load_balancer_tls(self._config(make_config, *issued), secrets_dir)
        assert (x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in _san(_leaf(bundle)),
                bundle.ca_file) == (True, secrets_dir / CA_CERT)

    def test_key_of_another_certificate_refused(self, make_config: Callable[..., StackConfig],
                                                issued: tuple[Path, Path], tmp_path: Path) -> None:
        _, other_key = issue_self_signed(tmp_path / "other", ["prefect.example.com"])
        with pytest.raises(UserError, match="does not belong to the certificate"):
            load_balancer_tls(self._config(make_config, issued[0], other_key), tmp_path / "s")

    def test_unreadable_refused(self, make_config: Callable[..., StackConfig], issued: tuple[Path, Path],
                                tmp_path: Path) -> None:
        with pytest.raises(UserError, match=r"cannot read load_balancer\.tls\.cert_file"):
            load_balancer_tls(self._config(make_config, tmp_path / "missing.pem", issued[1]), tmp_path / "s")

    def test_not_pem_refused(self, make_config: Callable[..., StackConfig], issued: tuple[Path, Path],
                             tmp_path: Path) -> None:
        (tmp_path / "junk.pem").write_text("not a certificate\n")
        with pytest.raises(UserError, match="holds no PEM certificate"):
            load_balancer_tls(self._config(make_config, tmp_path / "junk.pem", issued[1]), tmp_path / "s")

    def test_without_names_refused(self, make_config: Callable[..., StackConfig], tmp_path: Path) -> None:
        cert, key = issue_self_signed(tmp_path / "nameless", ["prefect.example.com"], san=False)
        with pytest.raises(UserError, match="no subjectAltName"):
            load_balancer_tls(self._config(make_config, cert, key), tmp_path / "s")

    def test_world_readable_key_refused(self, make_config: Callable[..., StackConfig], issued: tuple[Path, Path],
                                        tmp_path: Path) -> None:
        os.chmod(issued[1], 0o644)
        with pytest.raises(UserError, match="others can read it"):
            load_balancer_tls(self._config(make_config, *issued), tmp_path / "s")
