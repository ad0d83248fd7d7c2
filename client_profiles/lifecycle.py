"""Certificate lifecycle: the operations the CLI and the portal both call.

`initialise` builds the PKI and the gateway settings, `issue_client`, `renew` and `revoke`
manage client certificates, `refresh_crl` keeps the CRL from ever expiring (the service
calls it daily). Every operation is one database transaction plus its files: files are
written after the rows are flushed and restored when anything fails, and every operation
leaves an audit entry. Expiry reporting and profile rendering live in `client_profiles.reports`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session

from client_profiles.pki import (
    CLIENT_DAYS,
    REVOCATION_REASONS,
    CertificateAuthority,
    KeyType,
    RevokedEntry,
    build_crl,
    certificate_facts,
    certificate_pem,
    create_ca,
    crl_next_update,
    crl_number_of,
    issue_client_certificate,
    issue_server_certificate,
    private_key_pem,
)
from client_profiles.pkifiles import (
    FileBatch,
    LifecycleError,
    open_ca,
    read_text,
    require_initialised,
    resolve_ca_passphrase,
)
from sslvpn.config import DataPaths
from sslvpn.openvpn.static_key import (
    METADATA_TYPE_USER,
    format_static_key,
    format_tls_crypt_v2_client_key,
    format_tls_crypt_v2_server_key,
    generate_static_key,
    generate_tls_crypt_v2_server_key,
    parse_tls_crypt_v2_server_key,
    wrap_client_key,
)
from sslvpn.store import NotFoundError
from sslvpn.store.db import session
from sslvpn.store.models import (
    CONTROL_CHANNEL_VALUES,
    PROTOCOLS_VALUES,
    Certificate,
    GatewaySettings,
    User,
    utcnow,
)
from sslvpn.store.queries import (
    add_certificate,
    get_certificate,
    get_settings,
    get_user,
    get_user_by_id,
    list_certificates,
    mark_revoked,
    mark_superseded,
    record_audit,
    revoke_import_tokens_for_certificate,
    revoked_certificates,
    save_settings,
)

DEVICE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
MAX_CLIENT_DAYS = 3650
# Re-sign the CRL once less than this share of its validity is left.
CRL_REFRESH_FRACTION = 0.5


@dataclass(frozen=True)
class CrlState:
    """What `refresh_crl` found or did."""

    refreshed: bool
    number: int
    next_update: datetime


def initialise(
    paths: DataPaths,
    engine: Engine,
    *,
    public_addresses: Sequence[str],
    port: int = 1194,
    proto: str = "both",
    vpc: Sequence[str] = (),
    pool: str = "10.8.0.0/24",
    dns: Sequence[str] = (),
    key_type: KeyType = KeyType.ECDSA_P256,
    ca_passphrase: str | None = None,
    control_channel: str = "tls-crypt",
    actor: str = "cli",
    now: datetime | None = None,
) -> GatewaySettings:
    """Create the CA, server certificate, tls-crypt keys, first CRL and gateway settings."""
    now = now or utcnow()
    if paths.ca_cert.exists() or paths.ca_key.exists():
        raise LifecycleError(f"data folder {paths.data_dir} is already initialised")
    settings = _validated_settings(public_addresses, port, proto, vpc, pool, dns, control_channel)
    ca = create_ca(
        common_name=f"sslvpn CA {settings.public_addresses[0]}", key_type=key_type, now=now
    )
    server = issue_server_certificate(
        ca,
        common_name=settings.public_addresses[0],
        public_addresses=settings.public_addresses,
        now=now,
    )
    files = FileBatch()
    try:
        with session(engine) as s:
            _refuse_existing_settings(s)
            settings = save_settings(s, settings=settings, now=now)
            facts = certificate_facts(server.certificate)
            add_certificate(
                s,
                serial=facts.serial,
                subject_cn=facts.subject_cn,
                kind="server",
                not_before=facts.not_before,
                not_after=facts.not_after,
                fingerprint_sha256=facts.fingerprint_sha256,
                cert_pem=certificate_pem(server.certificate).decode("ascii"),
            )
            record_audit(
                s,
                actor=actor,
                action="pki.init",
                target=str(paths.data_dir),
                at=now,
                detail=f"key_type={key_type.value} addresses={','.join(settings.public_addresses)}",
            )
            secret = private_key_pem(ca.private_key, resolve_ca_passphrase(ca_passphrase))
            files.write(paths.ca_key, secret, secret=True)
            files.write(paths.ca_cert, certificate_pem(ca.certificate), secret=False)
            files.write(paths.server_key, private_key_pem(server.private_key), secret=True)
            files.write(paths.server_cert, certificate_pem(server.certificate), secret=False)
            static = format_static_key(generate_static_key()).encode("ascii")
            files.write(paths.tls_crypt_key, static, secret=True)
            v2 = format_tls_crypt_v2_server_key(generate_tls_crypt_v2_server_key())
            files.write(paths.tls_crypt_v2_server_key, v2.encode("ascii"), secret=True)
            _write_crl(s, ca, paths, files, now=now, number=1)
    except BaseException:
        files.undo()
        raise
    return settings


def issue_client(
    engine: Engine,
    paths: DataPaths,
    *,
    user_name: str,
    device: str | None = None,
    days: int = CLIENT_DAYS,
    actor: str,
    source_address: str | None = None,
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> Certificate:
    """A new client certificate (with its key and tls-crypt-v2 client key) for a user."""
    now = now or utcnow()
    device = _device(device)
    _days(days)
    ca = open_ca(paths, ca_passphrase)
    with session(engine) as s:
        user = _enabled_user(get_user(s, name=user_name))
        row = _issue_row(s, ca, paths, user, device, days, now)
        record_audit(
            s,
            actor=actor,
            action="certificate.issue",
            target=row.serial,
            at=now,
            source_address=source_address,
            detail=f"user={user.name} device={device or '-'}",
        )
    return row


def renew(
    engine: Engine,
    paths: DataPaths,
    *,
    serial: str,
    days: int | None = None,
    actor: str,
    source_address: str | None = None,
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> Certificate:
    """Issue a replacement for a valid client certificate; the old one becomes superseded.

    ``days`` defaults to the old certificate's lifetime. Import links of the old one stop
    working; the old certificate itself stays usable until it expires or is revoked.
    """
    now = now or utcnow()
    ca = open_ca(paths, ca_passphrase)
    with session(engine) as s:
        old = get_certificate(s, serial=serial)
        if old.kind != "client" or old.user_id is None:
            raise LifecycleError(f"certificate {old.serial} is not a user's client certificate")
        if old.status != "valid":
            raise LifecycleError(f"certificate {old.serial} is {old.status}, not valid")
        lifetime = days if days is not None else max(1, (old.not_after - old.not_before).days)
        _days(lifetime)
        user = _enabled_user(get_user_by_id(s, user_id=old.user_id))
        new = _issue_row(s, ca, paths, user, old.device, lifetime, now)
        mark_superseded(s, serial=old.serial, by_serial=new.serial)
        revoke_import_tokens_for_certificate(s, serial=old.serial)
        record_audit(
            s,
            actor=actor,
            action="certificate.renew",
            target=old.serial,
            at=now,
            source_address=source_address,
            detail=f"new={new.serial}",
        )
    return new


def revoke(
    engine: Engine,
    paths: DataPaths,
    *,
    serial: str | None = None,
    user_name: str | None = None,
    reason: str = "unspecified",
    actor: str,
    source_address: str | None = None,
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> list[Certificate]:
    """Revoke one certificate, or every unexpired one of a user, and re-sign the CRL."""
    if (serial is None) == (user_name is None):
        raise LifecycleError("name exactly one of a serial or a user to revoke")
    if reason not in REVOCATION_REASONS:
        raise LifecycleError(f"unknown reason {reason!r}; one of: {', '.join(REVOCATION_REASONS)}")
    now = now or utcnow()
    ca = open_ca(paths, ca_passphrase)
    files = FileBatch()
    try:
        with session(engine) as s:
            targets = _revocation_targets(s, serial, user_name, now)
            for row in targets:
                mark_revoked(s, serial=row.serial, reason=reason, at=now)
                revoke_import_tokens_for_certificate(s, serial=row.serial)
                record_audit(
                    s,
                    actor=actor,
                    action="certificate.revoke",
                    target=row.serial,
                    at=now,
                    source_address=source_address,
                    detail=f"reason={reason}",
                )
            _write_crl(s, ca, paths, files, now=now, number=_next_crl_number(paths))
    except BaseException:
        files.undo()
        raise
    return targets


def refresh_crl(
    paths: DataPaths,
    engine: Engine,
    *,
    force: bool = False,
    actor: str = "service",
    ca_passphrase: str | None = None,
    now: datetime | None = None,
) -> CrlState:
    """Re-sign the CRL when less than half its validity is left (or when forced).

    The gateway calls this daily, so a CRL never reaches its nextUpdate and locks
    every client out.
    """
    now = now or utcnow()
    require_initialised(paths)
    current = _current_crl(paths)
    if current is not None and not force:
        number, last, next_update = current
        if next_update - now > (next_update - last) * CRL_REFRESH_FRACTION:
            return CrlState(refreshed=False, number=number, next_update=next_update)
    ca = open_ca(paths, ca_passphrase)
    files = FileBatch()
    try:
        with session(engine) as s:
            number = _next_crl_number(paths)
            next_update = _write_crl(s, ca, paths, files, now=now, number=number)
            record_audit(s, actor=actor, action="crl.refresh", target=str(number), at=now)
    except BaseException:
        files.undo()
        raise
    return CrlState(refreshed=True, number=number, next_update=next_update)


def _validated_settings(
    public_addresses: Sequence[str],
    port: int,
    proto: str,
    vpc: Sequence[str],
    pool: str,
    dns: Sequence[str],
    control_channel: str,
) -> GatewaySettings:
    addresses = [a.strip() for a in public_addresses]
    if not addresses or any(not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", a) for a in addresses):
        raise LifecycleError("give at least one public address (a DNS name or IP address)")
    if not 0 < port < 65536:
        raise LifecycleError(f"port {port} is not in 1..65535")
    if proto not in PROTOCOLS_VALUES:
        raise LifecycleError(f"protocol must be one of {', '.join(PROTOCOLS_VALUES)}")
    if control_channel not in CONTROL_CHANNEL_VALUES:
        raise LifecycleError(f"control channel must be one of {', '.join(CONTROL_CHANNEL_VALUES)}")
    pool_net = _network(pool, "pool")
    if pool_net.version != 4 or pool_net.prefixlen > 29:
        raise LifecycleError(f"pool {pool} must be an IPv4 network of /29 or larger")
    return GatewaySettings(
        public_addresses=addresses,
        port=port,
        protocols=proto,
        vpc_networks=[str(_network(n, "VPC network")) for n in vpc],
        pool_cidr=str(pool_net),
        dns_servers=[_address(d) for d in dns],
        control_channel=control_channel,
    )


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise LifecycleError(f"{what} {text!r} is not a network in CIDR form") from None


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise LifecycleError(f"DNS server {text!r} is not an IP address") from None


def _device(device: str | None) -> str | None:
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        raise LifecycleError("a device name is 1-32 letters, digits, '_' or '-'")
    return device


def _days(days: int) -> int:
    if not 1 <= days <= MAX_CLIENT_DAYS:
        raise LifecycleError(f"lifetime must be 1..{MAX_CLIENT_DAYS} days")
    return days


def _enabled_user(user: User) -> User:
    if user.disabled:
        raise LifecycleError(f"user {user.name!r} is disabled")
    return user


def _refuse_existing_settings(s: Session) -> None:
    try:
        get_settings(s)
    except NotFoundError:
        return
    raise LifecycleError("the database already holds a gateway; use a fresh database")


def _issue_row(
    s: Session,
    ca: CertificateAuthority,
    paths: DataPaths,
    user: User,
    device: str | None,
    days: int,
    now: datetime,
) -> Certificate:
    """Sign a client certificate and wrap a tls-crypt-v2 client key bound to its serial."""
    server_key = parse_tls_crypt_v2_server_key(
        read_text(paths.tls_crypt_v2_server_key, "tls-crypt-v2 server key")
    )
    common_name = user.name if device is None else f"{user.name}.{device}"
    issued = issue_client_certificate(ca, common_name=common_name, now=now, days=days)
    facts = certificate_facts(issued.certificate)
    client_key = generate_static_key()
    # USER metadata = the serial, so the server can tie a tls-crypt-v2 key to its certificate.
    metadata = bytes([METADATA_TYPE_USER]) + facts.serial.encode("ascii")
    wkc = wrap_client_key(server_key, client_key, metadata)
    return add_certificate(
        s,
        serial=facts.serial,
        subject_cn=facts.subject_cn,
        kind="client",
        not_before=facts.not_before,
        not_after=facts.not_after,
        fingerprint_sha256=facts.fingerprint_sha256,
        cert_pem=certificate_pem(issued.certificate).decode("ascii"),
        user_id=user.id,
        device=device,
        key_pem=private_key_pem(issued.private_key).decode("ascii"),
        tls_crypt_v2_key=format_tls_crypt_v2_client_key(client_key, wkc),
    )


def _revocation_targets(
    s: Session, serial: str | None, user_name: str | None, now: datetime
) -> list[Certificate]:
    if serial is not None:
        row = get_certificate(s, serial=serial)
        if row.kind != "client":
            raise LifecycleError(f"certificate {row.serial} is the gateway's; re-run init instead")
        return [row]
    user = get_user(s, name=str(user_name))
    rows = [
        row
        for row in list_certificates(s, user_id=user.id, kind="client")
        if row.status != "revoked" and row.not_after > now
    ]
    if not rows:
        raise LifecycleError(f"user {user.name!r} has no certificate to revoke")
    return rows


def _current_crl(paths: DataPaths) -> tuple[int, datetime, datetime] | None:
    """(number, lastUpdate, nextUpdate) of the CRL on disk; None when missing or unreadable."""
    try:
        pem = paths.crl_pem.read_bytes()
        last, next_update = crl_next_update(pem)
        return crl_number_of(pem), last, next_update
    except (OSError, ValueError):
        return None


def _next_crl_number(paths: DataPaths) -> int:
    current = _current_crl(paths)
    return 1 if current is None else current[0] + 1


def _write_crl(
    s: Session,
    ca: CertificateAuthority,
    paths: DataPaths,
    files: FileBatch,
    *,
    now: datetime,
    number: int,
) -> datetime:
    """Sign a CRL of every revoked certificate and write its PEM and DER; returns nextUpdate."""
    entries = [
        RevokedEntry(
            serial=row.serial,
            revoked_at=row.revoked_at or now,
            reason=row.revocation_reason or "unspecified",
        )
        for row in revoked_certificates(s)
    ]
    crl = build_crl(ca, revoked=entries, number=number, now=now, days=get_settings(s).crl_days)
    files.write(paths.crl_pem, crl.pem, secret=False)
    files.write(paths.crl_der, crl.der, secret=False)
    return crl.next_update
