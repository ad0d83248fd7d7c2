"""The portal's calls into accounts and the certificate lifecycle, with actor and source
address filled in from the request and live sessions ended on revocation. Never
reimplements account or PKI work: everything delegates to `client_profiles`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web

from client_profiles import accounts, lifecycle, reports
from client_profiles.pki import CLIENT_DAYS
from client_profiles.pkifiles import LifecycleError
from sslvpn.store import StoreError, db, queries
from sslvpn.store.models import Certificate, User
from web.pages import portal_of, user_of
from web.security import client_address

OperationError = (LifecycleError, StoreError)
WARN_DAYS = (30, 7, 1)


def _actor(request: web.Request) -> str:
    user = user_of(request)
    return user.name if user else "anonymous"


async def add_user(
    request: web.Request, *, name: str, role: str, email: str | None, password: str
) -> User:
    """Create a user through the shared accounts code (validation, hashing, audit)."""
    portal = portal_of(request)
    return await asyncio.to_thread(
        accounts.add_user,
        portal.engine,
        name=name,
        email=email,
        admin=role == "admin",
        password=password,
        actor=_actor(request),
        source_address=client_address(request),
    )


def set_enabled(request: web.Request, name: str, *, enabled: bool) -> User:
    portal = portal_of(request)
    return accounts.set_user_enabled(
        portal.engine,
        name=name,
        enabled=enabled,
        actor=_actor(request),
        source_address=client_address(request),
    )


def issue(
    request: web.Request, *, user_name: str, device: str, days: int = CLIENT_DAYS
) -> Certificate:
    """A certificate and tls-crypt-v2 key for a user's new device."""
    portal = portal_of(request)
    return lifecycle.issue_client(
        portal.engine,
        portal.paths,
        user_name=user_name,
        device=device,
        days=days,
        actor=_actor(request),
        source_address=client_address(request),
        ca_passphrase=portal.settings.ca_passphrase,
    )


def renew(request: web.Request, serial: str) -> Certificate:
    portal = portal_of(request)
    return lifecycle.renew(
        portal.engine,
        portal.paths,
        serial=serial,
        actor=_actor(request),
        source_address=client_address(request),
        ca_passphrase=portal.settings.ca_passphrase,
    )


def revoke(request: web.Request, serial: str, reason: str) -> int:
    """Revoke one certificate and end its live sessions; how many sessions ended."""
    portal = portal_of(request)
    lifecycle.revoke(
        portal.engine,
        portal.paths,
        serial=serial,
        reason=reason,
        actor=_actor(request),
        source_address=client_address(request),
        ca_passphrase=portal.settings.ca_passphrase,
    )
    return portal.kick_certificate(serial, f"certificate revoked ({reason})")


def delete_user(request: web.Request, name: str) -> tuple[int, int]:
    """Revoke a user's certificates, end their sessions, delete them: (revoked, ended)."""
    portal = portal_of(request)
    try:
        revoked = lifecycle.revoke(
            portal.engine,
            portal.paths,
            user_name=name,
            reason="cessationOfOperation",
            actor=_actor(request),
            source_address=client_address(request),
            ca_passphrase=portal.settings.ca_passphrase,
        )
    except LifecycleError:
        revoked = []  # nothing left to revoke
    ended = sum(portal.kick_certificate(c.serial, "user deleted") for c in revoked)
    with db.session(portal.engine, write=True) as s:
        queries.delete_user(s, name=name)
    return len(revoked), ended


def render_profile(
    request: web.Request, serial: str, *, actor: str | None = None
) -> reports.RenderedProfile:
    portal = portal_of(request)
    return reports.render_profile(
        portal.engine,
        portal.paths,
        serial=serial,
        actor=actor or _actor(request),
        source_address=client_address(request),
    )


@dataclass(frozen=True)
class HealthItem:
    """One line of the dashboard's expiry table."""

    what: str
    expires_at: datetime
    days_left: int
    level: str  # "ok", "warn" (30 days), "bad" (7 days) or "critical" (1 day or lapsed)


def _level(days: float) -> str:
    if days <= WARN_DAYS[2]:
        return "critical"
    if days <= WARN_DAYS[1]:
        return "bad"
    if days <= WARN_DAYS[0]:
        return "warn"
    return "ok"


def expiry_health(request: web.Request, now: datetime) -> list[HealthItem]:
    """CA, server certificate and CRL always; client certificates within 30 days."""
    portal = portal_of(request)
    try:
        items = reports.expiry_report(portal.paths, portal.engine, now=now)
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
        level = _level(days)
        if item.kind == "crl" and level == "warn":
            level = "ok"  # a CRL lives 30 days and is re-signed at half-life: 30 is normal
        health.append(HealthItem(what, item.not_after, int(days // 1), level))
    return health
