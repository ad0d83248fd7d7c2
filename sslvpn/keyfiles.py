"""Reading key material, certificates and CRLs from files, naming the file when it fails.

Every loader of a certificate, private key, CRL or OpenVPN static key goes through
`read_file`, so a missing file, binary garbage or a PEM of the wrong kind becomes one
`DataFileError` that says which file, what it should hold and what to do, instead of
``'utf-8' codec can't decode`` or cryptography's "Unable to load PEM file". Free of store
and face imports so the runtime, ``client_profiles`` and the portal all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from sslvpn.config import DataPaths
from sslvpn.openvpn.static_key import parse_static_key, parse_tls_crypt_v2_server_key

T = TypeVar("T")
ServerPrivateKey = (
    ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

RESTORE = "restore it from a backup with `sslvpn restore FILE`"
CERTIFICATE_PEM = "a PEM certificate (-----BEGIN CERTIFICATE-----)"
PRIVATE_KEY_PEM = "a PEM private key (-----BEGIN PRIVATE KEY-----)"
STATIC_KEY = "an OpenVPN static key (-----BEGIN OpenVPN Static key V1-----)"
V2_SERVER_KEY = "a tls-crypt-v2 server key (-----BEGIN OpenVPN tls-crypt-v2 server key-----)"


@dataclass(frozen=True)
class FileRole:
    """What a file is for, in an operator's words, and how to mend it."""

    name: str  # "the CA certificate"
    holds: str  # one of the format phrases above
    fix: str = RESTORE


RENEW_SERVER = "`sslvpn cert renew SERIAL` (the server's, in `sslvpn cert list`) writes a new pair"
NEW_PORTAL_PAIR = "remove portal.crt and portal.key: `sslvpn serve` issues a new pair from the CA"

CA_CERT = FileRole("the CA certificate", CERTIFICATE_PEM)
CA_KEY = FileRole("the CA private key", PRIVATE_KEY_PEM)
SERVER_CERT = FileRole("the gateway's certificate", CERTIFICATE_PEM, RENEW_SERVER)
SERVER_KEY = FileRole("the gateway's private key", PRIVATE_KEY_PEM, RENEW_SERVER)
TLS_CRYPT = FileRole("the tls-crypt key of every profile", STATIC_KEY)
TLS_CRYPT_V2 = FileRole("the tls-crypt-v2 server key", V2_SERVER_KEY)
PORTAL_CERT = FileRole("the portal's certificate", CERTIFICATE_PEM, NEW_PORTAL_PAIR)
PORTAL_KEY = FileRole("the portal's private key", PRIVATE_KEY_PEM, NEW_PORTAL_PAIR)
GIVEN_PORTAL_CERT = FileRole("the portal certificate given", CERTIFICATE_PEM,
                             "give a PEM certificate")
GIVEN_PORTAL_KEY = FileRole("the private key of the portal certificate given", PRIVATE_KEY_PEM,
                            "give that certificate's unencrypted PEM key")


class DataFileError(ValueError):
    """A file is missing, unreadable or does not hold what it should; one line, file first."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = path
        self.problem = problem
        self.fix = fix


class Unusable(ValueError):
    """The file parses but cannot be used as it is; the message says why, file-first."""


def read_file(path: Path, role: FileRole, parse: Callable[[bytes], T]) -> T:
    """``parse(contents)``; a failure to read or parse names ``path`` and what it should hold.

    ``parse`` signals garbage with ValueError (`Unusable` to say why); anything else (a wrong
    CA passphrase) passes through.
    """
    should = f"it should hold {role.name}, {role.holds}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(path, f"is missing ({should})", role.fix) from None
    except OSError as exc:
        raise DataFileError(path, f"cannot be read: {exc.strerror or exc}", role.fix) from None
    if not data.strip():
        raise DataFileError(path, f"is empty ({should})", role.fix)
    if not _is_text(data):
        raise DataFileError(path, f"holds binary data, not text ({should})", role.fix)
    try:
        return parse(data)
    except Unusable as exc:
        raise DataFileError(path, f"{exc} ({should})", role.fix) from None
    except ValueError:  # the parsers' own words (ASN.1 internals) would not help an operator
        raise DataFileError(path, f"is garbled ({should})", role.fix) from None


def read_certificate(path: Path, role: FileRole) -> x509.Certificate:
    return read_file(path, role, x509.load_pem_x509_certificate)


def read_private_key(path: Path, role: FileRole) -> ServerPrivateKey:
    """An unencrypted private key the gateway or portal signs with."""
    return read_file(path, role, _unencrypted_private_key)


def read_static_key(path: Path, role: FileRole) -> bytes:
    """An "OpenVPN Static key V1" file (the tls-crypt key)."""
    return read_file(path, role, lambda data: parse_static_key(data.decode("ascii")))


def read_tls_crypt_v2_server_key(path: Path, role: FileRole) -> bytes:
    return read_file(path, role, lambda data: parse_tls_crypt_v2_server_key(data.decode("ascii")))


def wrap_keys_loaded(paths: DataPaths, control_channel: str | None) -> tuple[bool, bool]:
    """Which control-channel keys the gateway loads, (tls-crypt, tls-crypt-v2): the one its
    profiles use (``control_channel``) whether or not it exists, so a missing one is an
    error, and the other when present."""
    v2 = control_channel == "tls-crypt-v2"
    return ((control_channel is not None and not v2) or paths.tls_crypt_key.exists(),
            v2 or paths.tls_crypt_v2_server_key.exists())


def check_pair(cert_path: Path, certificate: x509.Certificate, key_path: Path,
               key: ServerPrivateKey, role: FileRole) -> None:
    """Refuse a private key that does not belong to its certificate (TLS would fail later,
    with no file named)."""
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise DataFileError(key_path, f"does not belong to the certificate in {cert_path}",
                            role.fix)


def _is_text(data: bytes) -> bool:
    """Every file here is text: PEM, hex or a passphrase."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _unencrypted_private_key(data: bytes) -> ServerPrivateKey:
    if b"ENCRYPTED" in data:
        raise Unusable("is encrypted; it is needed unencrypted")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "needs a password"
        raise Unusable("is encrypted; it is needed unencrypted") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise Unusable(f"holds a {type(key).__name__}, which cannot sign TLS handshakes")
    return key
