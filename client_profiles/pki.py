"""The certificate authority as pure crypto: keys, CA, server and client certificates, CRLs.

No files and no store here: callers pass time (`now`) and get objects or PEM/DER bytes back.
Keys are ECDSA P-256 by default or RSA-3072; every certificate is signed with SHA-256 and
gets a random positive serial with 128 random bits. Revocation reasons are RFC 5280 names
(`x509.ReasonFlags` values such as ``"keyCompromise"``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 365
# Backdate notBefore a little so a client whose clock runs slow still accepts a new cert.
CLOCK_SKEW = timedelta(minutes=5)
_SERIAL_RANDOM_BYTES = 16
# Reasons an operator may give; removeFromCRL only exists in delta CRLs (RFC 5280 5.3.1).
REVOCATION_REASONS: tuple[str, ...] = tuple(
    reason.value for reason in x509.ReasonFlags if reason is not x509.ReasonFlags.remove_from_crl
)


class KeyType(StrEnum):
    """The key algorithms the CA issues."""

    ECDSA_P256 = "ecdsa-p256"
    RSA3072 = "rsa3072"


class WrongPassphrase(Exception):
    """The CA private key could not be decrypted with the passphrase given (or none given)."""


@dataclass(frozen=True)
class CertificateAuthority:
    """The CA certificate and its private key (never shown in repr)."""

    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)


@dataclass(frozen=True)
class IssuedCertificate:
    """A freshly issued certificate with the private key that belongs to it."""

    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)


@dataclass(frozen=True)
class CertificateFacts:
    """What the store remembers about a certificate."""

    serial: str  # lowercase hex, no leading zeros
    fingerprint_sha256: str  # lowercase hex of the DER encoding
    subject_cn: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class RevokedEntry:
    """One line of a CRL."""

    serial: str  # lowercase hex
    revoked_at: datetime
    reason: str  # RFC 5280 name, see REVOCATION_REASONS


@dataclass(frozen=True)
class Crl:
    """A signed certificate revocation list in both encodings."""

    pem: bytes
    der: bytes
    number: int
    last_update: datetime
    next_update: datetime


def generate_private_key(key_type: KeyType) -> PrivateKey:
    """A new private key of the requested type."""
    if key_type is KeyType.RSA3072:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def key_type_of(key: PrivateKey) -> KeyType:
    """Which KeyType a key is, so end-entity keys can follow the CA's algorithm."""
    return KeyType.RSA3072 if isinstance(key, rsa.RSAPrivateKey) else KeyType.ECDSA_P256


def random_serial(rand: Callable[[int], bytes] = os.urandom) -> int:
    """A positive serial carrying 128 random bits (fixed 129-bit length, RFC 5280 4.1.2.2)."""
    return int.from_bytes(rand(_SERIAL_RANDOM_BYTES), "big") | (1 << (8 * _SERIAL_RANDOM_BYTES))


def create_ca(
    *, common_name: str, key_type: KeyType, now: datetime, days: int = CA_DAYS
) -> CertificateAuthority:
    """A self-signed CA that may only sign end-entity certificates (pathLen 0)."""
    key = generate_private_key(key_type)
    name = _name(common_name)
    builder = (
        _base_builder(name, key.public_key(), now, days)
        .issuer_name(name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return CertificateAuthority(builder.sign(key, hashes.SHA256()), key)


def issue_server_certificate(
    ca: CertificateAuthority,
    *,
    common_name: str,
    public_addresses: Iterable[str],
    now: datetime,
    days: int = SERVER_DAYS,
) -> IssuedCertificate:
    """A gateway certificate: EKU serverAuth, SAN = every public DNS name / IP address."""
    san = x509.SubjectAlternativeName([_general_name(a) for a in public_addresses])
    return _issue_end_entity(
        ca, common_name, ExtendedKeyUsageOID.SERVER_AUTH, now, days, extra=[san]
    )


def issue_client_certificate(
    ca: CertificateAuthority, *, common_name: str, now: datetime, days: int = CLIENT_DAYS,
    key: PrivateKey | None = None,
) -> IssuedCertificate:
    """A client certificate: EKU clientAuth, CN = "<user>" or "<user>.<device>"; for a new
    key unless ``key`` is given (the bench's tens of thousands of clients share one)."""
    return _issue_end_entity(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, now, days,
                             extra=[], key=key)


def build_crl(
    ca: CertificateAuthority,
    *,
    revoked: Iterable[RevokedEntry],
    number: int,
    now: datetime,
    days: int,
) -> Crl:
    """Sign a CRL valid from `now` for `days` listing every revoked certificate."""
    next_update = now + timedelta(days=days)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(_revoked_certificate(entry))
    crl = builder.sign(ca.private_key, hashes.SHA256())
    return Crl(
        pem=crl.public_bytes(serialization.Encoding.PEM),
        der=crl.public_bytes(serialization.Encoding.DER),
        number=number,
        last_update=now,
        next_update=next_update,
    )


def crl_number_of(crl_pem: bytes) -> int:
    """The CRLNumber of an existing CRL (0 when it has none), so the next one is higher."""
    crl = x509.load_pem_x509_crl(crl_pem)
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def crl_next_update(crl_pem: bytes) -> tuple[datetime, datetime]:
    """(lastUpdate, nextUpdate) of a PEM CRL, as aware UTC datetimes."""
    crl = x509.load_pem_x509_crl(crl_pem)
    next_update = crl.next_update_utc
    if next_update is None:
        raise ValueError("CRL has no nextUpdate")
    return crl.last_update_utc, next_update


def certificate_facts(certificate: x509.Certificate) -> CertificateFacts:
    """Serial, fingerprint, CN and validity as the store keeps them."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateFacts(
        serial=format(certificate.serial_number, "x"),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        subject_cn=str(cns[0].value) if cns else "",
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key(pem: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """Load a CA or end-entity key; a wrong or missing passphrase raises WrongPassphrase,
    garbage raises ValueError (so it is never mistaken for a wrong passphrase)."""
    encrypted = b"ENCRYPTED" in pem  # PKCS#8 "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED"
    if encrypted and not passphrase:
        raise WrongPassphrase("the CA key is encrypted: set SSLVPN_CA_PASSPHRASE")
    if passphrase and not encrypted:
        raise WrongPassphrase("a CA passphrase was given but the CA key is not encrypted")
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase or None)
    except (TypeError, ValueError) as exc:  # a failed decryption is a ValueError too
        if encrypted:
            raise WrongPassphrase("the CA passphrase is wrong") from exc
        raise ValueError(str(exc)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("unsupported private key type")
    return key


def _issue_end_entity(
    ca: CertificateAuthority,
    common_name: str,
    usage: x509.ObjectIdentifier,
    now: datetime,
    days: int,
    *,
    extra: list[x509.ExtensionType],
    key: PrivateKey | None = None,
) -> IssuedCertificate:
    if days < 1:
        raise ValueError("a certificate must be valid for at least one day")
    if key is None:
        key = generate_private_key(key_type_of(ca.private_key))
    is_ec = isinstance(key, ec.EllipticCurvePrivateKey)
    builder = (
        _base_builder(_name(common_name), key.public_key(), now, days)
        .issuer_name(ca.certificate.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_agreement=is_ec, key_encipherment=not is_ec),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return IssuedCertificate(builder.sign(ca.private_key, hashes.SHA256()), key)


def _base_builder(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(address: str) -> x509.GeneralName:
    """An IP address becomes an iPAddress SAN, anything else a dNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _revoked_certificate(entry: RevokedEntry) -> x509.RevokedCertificate:
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(int(entry.serial, 16))
        .revocation_date(entry.revoked_at)
    )
    reason = x509.ReasonFlags(entry.reason)
    # RFC 5280 5.3.1: omit the reason code rather than say "unspecified".
    if reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()
