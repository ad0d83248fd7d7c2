"""Test PKI for the OpenVPN core: a CA, a server, good and bad clients, made with cryptography."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sslvpn.openvpn.tls import TlsContext, TlsCredentials

NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    cn: str,
    eku: list[x509.ObjectIdentifier] | None,
    *,
    expired: bool = False,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    end = NOW - dt.timedelta(days=1) if expired else NOW + dt.timedelta(days=30)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=10))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, True, False, False, False, False),
            critical=True,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Issued
    other_ca: Issued
    server: Issued
    client: Issued
    expired_client: Issued
    server_eku_client: Issued
    foreign_client: Issued

    def server_context(self) -> TlsContext:
        creds = TlsCredentials(self.server.certificate, self.server.key, (self.ca.certificate,))
        return TlsContext(creds, server=True)

    def client_context(self, who: Issued | None = None) -> TlsContext:
        who = who or self.client
        creds = TlsCredentials(who.certificate, who.key, (self.ca.certificate,))
        return TlsContext(creds, server=False)


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca = make_ca("sslvpn test CA")
    other = make_ca("someone else's CA")
    client_auth = [ExtendedKeyUsageOID.CLIENT_AUTH]
    return Pki(
        ca=ca,
        other_ca=other,
        server=issue(ca, "vpn.example.test", [ExtendedKeyUsageOID.SERVER_AUTH]),
        client=issue(ca, "alice", client_auth),
        expired_client=issue(ca, "old", client_auth, expired=True),
        server_eku_client=issue(ca, "mallory", [ExtendedKeyUsageOID.SERVER_AUTH]),
        foreign_client=issue(other, "eve", client_auth),
    )
