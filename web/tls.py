"""The portal's HTTPS certificate: issued once from our CA on first start (or given by the
admin), kept under ``DataPaths.portal_cert``/``portal_key``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from client_profiles.pki import certificate_pem, issue_server_certificate, private_key_pem
from client_profiles.pkifiles import open_ca
from sslvpn import keyfiles
from sslvpn.config import DataPaths, write_public_file, write_secret_file
from sslvpn.keyfiles import (
    GIVEN_PORTAL_CERT,
    GIVEN_PORTAL_KEY,
    PORTAL_CERT,
    PORTAL_KEY,
    FileRole,
)
from sslvpn.store import db, queries
from web.app import is_loopback, parse_listen


def ensure_portal_certificate(
    paths: DataPaths, hosts: Iterable[str], *, ca_passphrase: str | None = None
) -> tuple[Path, Path]:
    """The portal certificate and key, issued from our CA for ``hosts`` when absent."""
    if paths.portal_cert.is_file() and paths.portal_key.is_file():
        return paths.portal_cert, paths.portal_key
    names = [h for h in dict.fromkeys(hosts) if h and h not in ("0.0.0.0", "::")]  # noqa: S104
    if not names:
        raise ValueError("the portal certificate needs a host name or address to be issued for")
    ca = open_ca(paths, ca_passphrase)
    issued = issue_server_certificate(
        ca, common_name=names[0], public_addresses=names, now=datetime.now(UTC)
    )
    write_secret_file(paths.portal_key, private_key_pem(issued.private_key))
    write_public_file(paths.portal_cert, certificate_pem(issued.certificate))
    return paths.portal_cert, paths.portal_key


def portal_tls(
    paths: DataPaths,
    engine: Engine,
    listen: str,
    *,
    https: bool | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    ca_passphrase: str | None = None,
) -> ssl.SSLContext | None:
    """What `sslvpn portal` and `sslvpn serve` listen with: HTTPS by default (given
    certificate, else one from our CA), plain HTTP only when bound to loopback."""
    host, _ = parse_listen(listen)
    use_tls = https if https is not None else not is_loopback(host)
    if not use_tls and not is_loopback(host):
        raise ValueError("plain HTTP is only allowed on a loopback address")
    if not use_tls:
        return None
    if cert is not None and key is not None:
        return tls_context(cert, key, roles=(GIVEN_PORTAL_CERT, GIVEN_PORTAL_KEY))
    with db.session(engine, write=False) as s:
        addresses = queries.get_settings(s).public_addresses
    cert, key = ensure_portal_certificate(paths, [host, *addresses], ca_passphrase=ca_passphrase)
    return tls_context(cert, key)


def tls_context(
    cert: Path, key: Path, *, roles: tuple[FileRole, FileRole] = (PORTAL_CERT, PORTAL_KEY)
) -> ssl.SSLContext:
    """Server-side TLS 1.2+ with the portal certificate; a file that is missing, garbled or
    not the certificate's key is refused by name (ssl would only say "PEM lib")."""
    certificate = keyfiles.read_certificate(cert, roles[0])
    private_key = keyfiles.read_private_key(key, roles[1])
    keyfiles.check_pair(cert, certificate, key, private_key, roles[1])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
