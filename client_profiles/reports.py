"""Read-side lifecycle operations: what expires when, and a user's rendered profile.

`expiry_report` covers everything that can lock clients out when it lapses (client
certificates, the server certificate, the CA and the CRL); `render_profile` turns a
stored client certificate plus the gateway settings into an ``.ovpn`` text; in a fleet its
remotes are every node's public addresses instead of the settings' ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from client_profiles.fleet import node_addresses
from client_profiles.ovpn import (
    ClientRequirement,
    ProfileMaterial,
    Transport,
    client_requirement,
    remotes_for,
    render_ovpn,
)
from client_profiles.pki import certificate_facts, certificate_pem, crl_next_update
from client_profiles.pkifiles import LifecycleError, file_refusals, require_initialised
from sslvpn import keyfiles
from sslvpn.config import DataPaths
from sslvpn.openvpn.static_key import format_static_key
from sslvpn.store.db import session
from sslvpn.store.models import Certificate, User, utcnow
from sslvpn.store.queries import get_certificate, get_settings, get_user, record_audit

ItemKind = Literal["ca", "server", "client", "crl"]


@dataclass(frozen=True)
class ExpiryItem:
    """One thing that expires: a certificate or the CRL (whose expiry is nextUpdate)."""

    kind: ItemKind
    name: str
    serial: str | None
    not_after: datetime
    status: str  # valid, revoked, superseded or expired
    user: str | None = None
    device: str | None = None
    overlap_until: datetime | None = None  # renewed: works until then (or its renewal connects)
    superseded_by: str | None = None


@dataclass(frozen=True)
class RenderedProfile:
    """A profile ready to save or serve, with a file name that identifies it."""

    serial: str
    file_name: str
    text: str = field(repr=False)
    requirement: ClientRequirement  # which clients take it


def expiry_report(
    paths: DataPaths,
    engine: Engine,
    *,
    within: timedelta | None = None,
    now: datetime | None = None,
) -> list[ExpiryItem]:
    """Everything that expires, soonest first; with ``within``, only what is valid now
    (or already lapsed while still in use) and expires before ``now + within``."""
    now = now or utcnow()
    require_initialised(paths)
    items = _file_items(paths, now)
    with session(engine, write=False) as s:
        items += _certificate_items(s, now)
    if within is not None:
        horizon = now + within
        items = [i for i in items if i.status in ("valid", "expired") and i.not_after <= horizon]
    return sorted(items, key=lambda item: item.not_after)


def render_profile(
    engine: Engine,
    paths: DataPaths,
    *,
    serial: str | None = None,
    user_name: str | None = None,
    device: str | None = None,
    proto: Transport | None = None,
    actor: str,
    source_address: str | None = None,
    now: datetime | None = None,
) -> RenderedProfile:
    """The ``.ovpn`` for a certificate (by serial, or a user's newest for a device)."""
    if (serial is None) == (user_name is None):
        raise LifecycleError("name exactly one of a serial or a user")
    now = now or utcnow()
    require_initialised(paths)
    with file_refusals():
        ca_pem = certificate_pem(keyfiles.read_certificate(paths.ca_cert, keyfiles.CA_CERT))
        server = keyfiles.read_certificate(paths.server_cert, keyfiles.SERVER_CERT)
    server_name = certificate_facts(server).subject_cn
    with session(engine, write=True) as s:
        row = _profile_certificate(s, serial, user_name, device, now)
        settings = get_settings(s)
        nodes = node_addresses(s)
        addresses = [a for node in nodes for a in node] or settings.public_addresses
        try:
            remotes = remotes_for(
                dict.fromkeys(addresses),
                port=settings.port,
                protocols=_protocols(settings.protocols),
                only=proto,
            )
        except ValueError as exc:
            raise LifecycleError(str(exc)) from None
        use_v2 = settings.control_channel == "tls-crypt-v2"
        with file_refusals():
            tls_crypt_key = None if use_v2 else format_static_key(
                keyfiles.read_static_key(paths.tls_crypt_key, keyfiles.TLS_CRYPT)
            )
        material = ProfileMaterial(
            friendly_name=f"{row.subject_cn} @ {settings.public_addresses[0]}",
            server_name=server_name,
            remotes=remotes,
            ca_pem=ca_pem.decode("ascii"),
            cert_pem=row.cert_pem,
            key_pem=row.key_pem or "",
            tls_crypt_key=tls_crypt_key,
            tls_crypt_v2_key=row.tls_crypt_v2_key if use_v2 else None,
            spread=len(nodes) > 1,
            force_cookie=settings.tls_crypt_v2_force_cookie,
            two_factor=settings.vpn_two_factor,
        )
        text = render_ovpn(material)
        record_audit(
            s,
            actor=actor,
            action="profile.render",
            target=row.serial,
            at=now,
            source_address=source_address,
            detail=f"proto={proto or settings.protocols}",
        )
    return RenderedProfile(serial=row.serial, file_name=f"{row.subject_cn}.ovpn", text=text,
                           requirement=client_requirement(
                               settings.control_channel, udp=any(r.transport == "udp"
                                                                 for r in remotes),
                               force_cookie=settings.tls_crypt_v2_force_cookie))


def _protocols(value: str) -> Literal["udp", "tcp", "both"]:
    known: dict[str, Literal["udp", "tcp", "both"]] = {"udp": "udp", "tcp": "tcp", "both": "both"}
    if value not in known:
        raise LifecycleError(f"stored protocol setting {value!r} is unknown")
    return known[value]


def _profile_certificate(
    s: Session, serial: str | None, user_name: str | None, device: str | None, now: datetime
) -> Certificate:
    if serial is not None:
        row = get_certificate(s, serial=serial)
    else:
        row = _device_certificate(s, get_user(s, name=str(user_name)), device)
    if row.kind != "client" or row.key_pem is None:
        raise LifecycleError(f"certificate {row.serial} is not a client certificate")
    if row.status != "valid":
        raise LifecycleError(f"certificate {row.serial} is {row.status}")
    if row.not_after <= now:
        raise LifecycleError(f"certificate {row.serial} has expired; renew it")
    if row.user_id is not None:
        owner = s.get(User, row.user_id)
        if owner is not None and owner.disabled:
            raise LifecycleError(f"user {owner.name!r} is disabled")
    return row


def device_certificate(s: Session, *, user_id: int | None, device: str) -> Certificate | None:
    """The current (valid, unexpired, not replaced by a renewal) certificate of a device."""
    query = (
        select(Certificate)
        .where(Certificate.user_id == user_id, Certificate.kind == "client")
        .where(Certificate.status == "valid", Certificate.device == device)
        .where(col(Certificate.superseded_by).is_(None), col(Certificate.not_after) > utcnow())
    )
    return s.exec(query).first()


def _device_certificate(s: Session, user: User, device: str | None) -> Certificate:
    """The user's current certificate (not one a renewal replaces) for ``device``; with no
    device named, that of the user's only device (several: the operator picks one)."""
    query = (
        select(Certificate)
        .where(Certificate.user_id == user.id, Certificate.kind == "client")
        .where(Certificate.status == "valid", col(Certificate.superseded_by).is_(None))
        .order_by(col(Certificate.not_after).desc())
    )
    current = list(s.exec(query).all())
    named = [row for row in current if row.device == device]
    if named:
        return named[0]
    devices = sorted({row.device or "(none)" for row in current})
    if device is None and len(current) == 1:
        return current[0]
    if device is None and current:
        raise LifecycleError(f"user {user.name!r} has several devices: {', '.join(devices)}; "
                             "choose one with --device")
    which = f"device {device!r}" if device else "no --device"
    known = f"; devices with one: {', '.join(devices)}" if devices else ""
    raise LifecycleError(f"user {user.name!r} has no valid certificate for {which}{known}")


def _file_items(paths: DataPaths, now: datetime) -> list[ExpiryItem]:
    with file_refusals():
        ca = certificate_facts(keyfiles.read_certificate(paths.ca_cert, keyfiles.CA_CERT))
    items = [
        ExpiryItem(
            "ca", ca.subject_cn, ca.serial, ca.not_after, _status("valid", ca.not_after, now)
        )
    ]
    try:
        _, next_update = crl_next_update(paths.crl_pem.read_bytes())
    except (OSError, ValueError):
        next_update = now  # a missing or unreadable CRL is as bad as an expired one
    items.append(ExpiryItem("crl", "CRL", None, next_update, _status("valid", next_update, now)))
    return items


def _certificate_items(s: Session, now: datetime) -> list[ExpiryItem]:
    users = {u.id: u.name for u in s.exec(select(User)).all()}
    return [
        ExpiryItem(
            kind="server" if row.kind == "server" else "client",
            name=row.subject_cn,
            serial=row.serial,
            not_after=row.not_after,
            status=_status(row.status, row.not_after, now),
            user=users.get(row.user_id),
            device=row.device,
            overlap_until=row.overlap_until if row.status == "valid" else None,
            superseded_by=row.superseded_by,
        )
        for row in s.exec(select(Certificate)).all()
    ]


def _status(stored: str, not_after: datetime, now: datetime) -> str:
    return "expired" if stored == "valid" and not_after <= now else stored
