"""The portal's calls into accounts and the certificate lifecycle, with actor and source
address filled in from the request and live sessions ended on revocation. Never
reimplements account or PKI work: everything delegates to `client_profiles`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web

from client_profiles import accounts, lifecycle, reports
from client_profiles.pki import CLIENT_DAYS
from client_profiles.pkifiles import LifecycleError
from sslvpn.store import StoreError
from sslvpn.store.models import Certificate, User
from web.pages import portal_of, user_of
from web.security import client_address

OperationError = (LifecycleError, StoreError)
WARN_DAYS = (30, 7, 1)
# A CRL lives 30 days and is re-signed at half-life, so 30 days left is its normal state: it
# warns at the alarm rule's stages instead (sslvpn alarm: crl-expiry.days)
CRL_WARN_DAYS = (7, 1)


def _actor(request: web.Request) -> str:
    user = user_of(request)
    return user.name if user else "anonymous"


async def add_user(
    request: web.Request, *, name: str, role: str, email: str | None, password: str,
    one_time: bool = False,
) -> User:
    """Create a user through the shared accounts code (validation, hashing, audit);
    ``one_time`` for a generated password."""
    actor, address = _actor(request), client_address(request)
    return await portal_of(request).call(
        lambda engine: accounts.add_user(
            engine,
            name=name,
            email=email,
            admin=role == "admin",
            password=password,
            one_time=one_time,
            actor=actor,
            source_address=address,
        )
    )


async def set_enabled(request: web.Request, name: str, *, enabled: bool) -> User:
    actor, address = _actor(request), client_address(request)
    return await portal_of(request).call(
        lambda engine: accounts.set_user_enabled(
            engine, name=name, enabled=enabled, actor=actor, source_address=address
        )
    )


async def issue(
    request: web.Request, *, user_name: str, device: str, days: int = CLIENT_DAYS
) -> Certificate:
    """A certificate and tls-crypt-v2 key for a user's new device."""
    portal = portal_of(request)
    actor, address = _actor(request), client_address(request)
    return await portal.call(
        lambda engine: lifecycle.issue_client(
            engine,
            portal.paths,
            user_name=user_name,
            device=device,
            days=days,
            actor=actor,
            source_address=address,
            ca_passphrase=portal.settings.ca_passphrase,
        )
    )


async def renew(
    request: web.Request, serial: str, *, overlap_days: int = lifecycle.RENEWAL_OVERLAP_DAYS
) -> Certificate:
    """A replacement certificate; the old one works until the overlap ends (`lifecycle`)."""
    portal = portal_of(request)
    actor, address = _actor(request), client_address(request)
    return await portal.call(
        lambda engine: lifecycle.renew(
            engine,
            portal.paths,
            serial=serial,
            overlap_days=overlap_days,
            actor=actor,
            source_address=address,
            ca_passphrase=portal.settings.ca_passphrase,
        )
    )


async def revoke(request: web.Request, serial: str, reason: str) -> int:
    """Revoke one certificate and end its live sessions; how many sessions ended."""
    portal = portal_of(request)
    actor, address = _actor(request), client_address(request)
    await portal.call(
        lambda engine: lifecycle.revoke(
            engine,
            portal.paths,
            serial=serial,
            reason=reason,
            actor=actor,
            source_address=address,
            ca_passphrase=portal.settings.ca_passphrase,
        )
    )
    return await portal.kick_certificate(serial, f"certificate revoked ({reason})")


async def delete_user(request: web.Request, name: str) -> tuple[int, int]:
    """Revoke a user's certificates, delete them (`accounts.delete_user`) and end their live
    sessions here at once: (revoked, ended)."""
    portal = portal_of(request)
    actor, address = _actor(request), client_address(request)
    revoked = await portal.call(
        lambda engine: accounts.delete_user(
            engine, portal.paths, name=name, actor=actor, source_address=address,
            ca_passphrase=portal.settings.ca_passphrase,
        )
    )
    ended = 0
    for certificate in revoked:
        ended += await portal.kick_certificate(certificate.serial, "user deleted")
    return len(revoked), ended


async def render_profile(
    request: web.Request, serial: str, *, actor: str | None = None
) -> reports.RenderedProfile:
    portal = portal_of(request)
    who, address = actor or _actor(request), client_address(request)
    return await portal.call(
        lambda engine: reports.render_profile(
            engine, portal.paths, serial=serial, actor=who, source_address=address
        )
    )


@dataclass(frozen=True)
class HealthItem:
    """One line of the dashboard's expiry table."""

    what: str
    expires_at: datetime
    days_left: int
    level: str  # "ok", "warn" (30 days), "bad" (7 days) or "critical" (1 day or lapsed)


def _level(days: float, stages: tuple[int, ...]) -> str:
    """The last stage is critical, the one before bad, the one before that a warning."""
    for level, stage in zip(("critical", "bad", "warn"), reversed(stages), strict=False):
        if days <= stage:
            return level
    return "ok"


async def expiry_health(request: web.Request, now: datetime) -> list[HealthItem]:
    """CA, server certificate and CRL always; client certificates within 30 days."""
    portal = portal_of(request)
    try:
        items = await portal.call(
            lambda engine: reports.expiry_report(portal.paths, engine, now=now), writes=False
        )
    except LifecycleError as exc:
        return [HealthItem(f"PKI unavailable: {exc}", now, 0, "bad")]
    health = []
    labels = {"ca": "CA certificate", "server": "Server certificate", "crl": "CRL nextUpdate"}
    for item in items:
        days = (item.not_after - now) / timedelta(days=1)
        if item.kind == "client":
            if item.status not in ("valid", "expired") or days > WARN_DAYS[0]:
                continue
            what = f"Client {item.user or '(no owner)'} / {item.device or item.name}"
        else:
            if item.status == "superseded":
                continue
            what = f"{labels[item.kind]} {item.name if item.kind != 'crl' else ''}".strip()
        level = _level(days, CRL_WARN_DAYS if item.kind == "crl" else WARN_DAYS)
        health.append(HealthItem(what, item.not_after, int(days // 1), level))
    return health
