"""The CA, certificates and CRLs, checked by the real `openssl verify -crl_check`."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from client_profiles.pki import (
    CertificateAuthority,
    KeyType,
    RevokedEntry,
    WrongPassphrase,
    build_crl,
    certificate_facts,
    certificate_pem,
    create_ca,
    crl_next_update,
    crl_number_of,
    issue_client_certificate,
    issue_server_certificate,
    load_private_key,
    private_key_pem,
    random_serial,
)

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca(common_name="sslvpn test CA", key_type=KeyType.ECDSA_P256, now=NOW)


def _verify(
    tmp_path: Path, ca: CertificateAuthority, cert: x509.Certificate, crl: bytes, *extra: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ca.pem").write_bytes(certificate_pem(ca.certificate))
    (tmp_path / "crl.pem").write_bytes(crl)
    (tmp_path / "leaf.pem").write_bytes(certificate_pem(cert))
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(tmp_path / "ca.pem"),
            "-CRLfile",
            str(tmp_path / "crl.pem"),
            *extra,
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _crl(ca: CertificateAuthority, *revoked: RevokedEntry) -> bytes:
    return build_crl(ca, revoked=revoked, number=1, now=NOW, days=30).pem


def test_valid_client_certificate_verifies(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = issue_client_certificate(ca, common_name="alice.laptop", now=NOW)
    result = _verify(tmp_path, ca, issued.certificate, _crl(ca), "-purpose", "sslclient")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "OK" in result.stdout


def test_client_certificate_is_not_a_server_certificate(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    issued = issue_client_certificate(ca, common_name="alice", now=NOW)
    result = _verify(tmp_path, ca, issued.certificate, _crl(ca), "-purpose", "sslserver")
    assert result.returncode != 0


def test_revoked_certificate_fails_with_reason(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = issue_client_certificate(ca, common_name="bob", now=NOW)
    serial = certificate_facts(issued.certificate).serial
    crl = _crl(ca, RevokedEntry(serial=serial, revoked_at=NOW, reason="keyCompromise"))
    result = _verify(tmp_path, ca, issued.certificate, crl)
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr
    entry = x509.load_pem_x509_crl(crl).get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )


def test_unspecified_reason_is_omitted(ca: CertificateAuthority) -> None:
    crl = _crl(ca, RevokedEntry(serial="abc", revoked_at=NOW, reason="unspecified"))
    entry = x509.load_pem_x509_crl(crl).get_revoked_certificate_by_serial_number(0xABC)
    assert entry is not None and len(entry.extensions) == 0


def test_expired_certificate_fails(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = issue_client_certificate(ca, common_name="old", now=NOW - timedelta(days=10), days=2)
    result = _verify(tmp_path, ca, issued.certificate, _crl(ca))
    assert result.returncode != 0
    assert "certificate has expired" in result.stdout + result.stderr


def test_certificate_from_another_ca_fails(tmp_path: Path, ca: CertificateAuthority) -> None:
    other = create_ca(common_name="sslvpn test CA", key_type=KeyType.ECDSA_P256, now=NOW)
    issued = issue_client_certificate(other, common_name="mallory", now=NOW)
    result = _verify(tmp_path, ca, issued.certificate, _crl(ca))
    assert result.returncode != 0


def test_expired_crl_fails_verification(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = issue_client_certificate(ca, common_name="carol", now=NOW)
    stale = build_crl(ca, revoked=[], number=1, now=NOW - timedelta(days=40), days=30).pem
    result = _verify(tmp_path, ca, issued.certificate, stale)
    assert result.returncode != 0
    assert "CRL has expired" in result.stdout + result.stderr


def test_server_certificate_names_and_usage(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = issue_server_certificate(
        ca,
        common_name="vpn.example.test",
        public_addresses=["vpn.example.test", "198.18.0.1"],
        now=NOW,
    )
    crl = _crl(ca)
    ok = _verify(
        tmp_path,
        ca,
        issued.certificate,
        crl,
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "vpn.example.test",
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    by_ip = _verify(tmp_path, ca, issued.certificate, crl, "-verify_ip", "198.18.0.1")
    assert by_ip.returncode == 0, by_ip.stdout + by_ip.stderr
    wrong = _verify(tmp_path, ca, issued.certificate, crl, "-verify_hostname", "other.test")
    assert wrong.returncode != 0
    eku = issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_rsa3072_chain_verifies(tmp_path: Path) -> None:
    rsa_ca = create_ca(common_name="rsa CA", key_type=KeyType.RSA3072, now=NOW)
    issued = issue_client_certificate(rsa_ca, common_name="dave", now=NOW)
    assert isinstance(issued.private_key, rsa.RSAPrivateKey)
    assert issued.private_key.key_size == 3072
    result = _verify(tmp_path, rsa_ca, issued.certificate, _crl(rsa_ca))
    assert result.returncode == 0, result.stdout + result.stderr


def test_facts_serials_and_lifetime(ca: CertificateAuthority) -> None:
    issued = issue_client_certificate(ca, common_name="erin", now=NOW, days=90)
    facts = certificate_facts(issued.certificate)
    assert facts.subject_cn == "erin"
    assert int(facts.serial, 16) == issued.certificate.serial_number
    assert issued.certificate.serial_number.bit_length() == 129
    assert abs(facts.not_after - NOW - timedelta(days=90)) < timedelta(seconds=1)
    assert len(facts.fingerprint_sha256) == 64
    assert isinstance(issued.private_key, ec.EllipticCurvePrivateKey)
    assert random_serial(lambda n: bytes(n)) == 1 << 128
    with pytest.raises(ValueError):
        issue_client_certificate(ca, common_name="zero", now=NOW, days=0)


def test_ca_key_passphrase_round_trip(ca: CertificateAuthority) -> None:
    encrypted = private_key_pem(ca.private_key, b"correct horse")
    assert b"ENCRYPTED" in encrypted
    loaded = load_private_key(encrypted, b"correct horse")
    assert loaded.private_numbers() == ca.private_key.private_numbers()
    with pytest.raises(WrongPassphrase, match="wrong"):
        load_private_key(encrypted, b"battery staple")
    with pytest.raises(WrongPassphrase, match="SSLVPN_CA_PASSPHRASE"):
        load_private_key(encrypted, None)
    with pytest.raises(WrongPassphrase, match="not encrypted"):
        load_private_key(private_key_pem(ca.private_key), b"x")
    assert "private_key" not in repr(ca)


def test_a_garbled_key_is_garbage_not_a_wrong_passphrase(ca: CertificateAuthority) -> None:
    pem = private_key_pem(ca.private_key)
    garbled = pem[:40] + b"!!" + pem[42:]
    with pytest.raises(ValueError) as raised:
        load_private_key(garbled, None)
    assert not isinstance(raised.value, WrongPassphrase)


def test_crl_metadata(ca: CertificateAuthority) -> None:
    crl = build_crl(ca, revoked=[], number=7, now=NOW, days=30)
    assert crl_number_of(crl.pem) == 7
    last, nxt = crl_next_update(crl.pem)
    assert nxt - last == timedelta(days=30)
    assert x509.load_der_x509_crl(crl.der).is_signature_valid(ca.private_key.public_key())


def test_certificates_for_one_given_key_are_each_their_own(
    tmp_path: Path, ca: CertificateAuthority,
) -> None:
    """The bench's many clients share a key: each certificate still has its own serial and
    name, is signed for that key and verifies."""
    first = issue_client_certificate(ca, common_name="bench.s0", now=NOW)
    second = issue_client_certificate(ca, common_name="bench.s1", now=NOW,
                                      key=first.private_key)
    assert second.private_key is first.private_key
    assert second.certificate.public_key() == first.certificate.public_key()
    assert second.certificate.serial_number != first.certificate.serial_number
    result = _verify(tmp_path, ca, second.certificate, _crl(ca), "-purpose", "sslclient")
    assert result.returncode == 0, result.stderr + result.stdout
