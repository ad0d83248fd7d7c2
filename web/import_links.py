"""Single-use profile import links: minting tokens, building the links, spending them.

A token is 256 random bits shown exactly once (in the QR and the plain link); the store
keeps only its SHA-256. Spending it is atomic in the store, so a link yields one profile.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from aiohttp import web
from sqlmodel import Session

from sslvpn.store import NotFoundError, queries
from sslvpn.store.models import ImportToken
from web.portal import Portal

TOKEN_BYTES = 32
DEFAULT_TTL = timedelta(minutes=10)
DEEP_LINK_PREFIX = "openvpn://import-profile/"
TOKEN_PATH = "/rest/GetProfileViaToken"  # noqa: S105 (a URL path, not a secret)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ImportLink:
    """A freshly minted link; ``token`` exists nowhere else once this is rendered."""

    token_id: int
    url: str = field(repr=False)
    deep_link: str = field(repr=False)
    expires_at: datetime


def base_url(portal: Portal, request: web.Request) -> str:
    """Where phones reach this portal: the configured public URL or the host asked for."""
    if portal.settings.public_url:
        return portal.settings.public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


async def token_ttl(portal: Portal) -> timedelta:
    if portal.settings.import_token_ttl is not None:
        return portal.settings.import_token_ttl

    def stored(s: Session) -> timedelta:
        try:
            settings = queries.get_settings(s, name=portal.settings.gateway_name)
        except NotFoundError:
            return DEFAULT_TTL
        return timedelta(seconds=settings.import_token_ttl_seconds)

    return await portal.read(stored)


async def mint(portal: Portal, request: web.Request, *, user_id: int, serial: str) -> ImportLink:
    """Create a token for one certificate of one user and build both links for it."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = datetime.fromtimestamp(portal.clock(), UTC)
    expires = now + await token_ttl(portal)
    row = await portal.write(
        lambda s: queries.add_import_token(
            s,
            token_hash=token_hash(token),
            user_id=user_id,
            certificate_serial=serial,
            expires_at=expires,
            created_at=now,
        )
    )
    if row.id is None:
        raise RuntimeError("the store did not assign an id to the import token")
    url = f"{base_url(portal, request)}{TOKEN_PATH}?token={quote(token, safe='')}"
    return ImportLink(row.id, url, DEEP_LINK_PREFIX + url, expires)


def state_of(token: ImportToken, now: datetime) -> str:
    """What the owner sees next to a link."""
    if token.used_at is not None:
        return "used"
    if token.revoked:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    return "active"
