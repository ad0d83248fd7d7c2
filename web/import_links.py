"""Single-use profile import links: minting tokens, building the links, spending them.

A token is 256 random bits shown exactly once (in the QR and the plain link); the store
keeps only its SHA-256. Spending it is atomic in the store, so a link yields one profile.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

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
    created_at: datetime
    expires_at: datetime


async def base_url(portal: Portal, request: web.Request) -> str:
    """Where phones reach this portal: ``--public-url``, else the settings' public URL, else
    the gateway's first public address on the port and scheme this request came in on. Never
    the request's Host header, which whoever sends the request chooses."""
    if portal.settings.public_url:
        return portal.settings.public_url.rstrip("/")

    def stored(s: Session) -> tuple[str | None, str | None]:
        try:
            settings = queries.get_settings(s, name=portal.settings.gateway_name)
        except NotFoundError:
            return None, None
        first = settings.public_addresses[0] if settings.public_addresses else None
        return settings.portal_public_url, first

    configured, address = await portal.read(stored)
    if configured:
        return configured.rstrip("/")
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else (443 if request.secure else 80)
    host = address or (sockname[0] if sockname else "localhost")
    shown = f"[{host}]" if ":" in host else host
    return f"{request.scheme}://{shown}:{port}"


def reachable_from_elsewhere(url: str) -> bool:
    """False for a loopback host (localhost, 127.x, ::1): a phone cannot open such a link."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a DNS name


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


async def mint(
    portal: Portal, request: web.Request, *, user_id: int, serial: str
) -> tuple[ImportLink, str]:
    """Create a token for one certificate of one user; both links for it and its secret."""
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
    return await link_of(portal, request, row, token), token


async def link_of(
    portal: Portal, request: web.Request, row: ImportToken, token: str
) -> ImportLink:
    """Both links for a token whose secret the caller holds (just minted, or from the
    browser that minted it)."""
    if row.id is None:
        raise RuntimeError("an import token without an id")
    url = f"{await base_url(portal, request)}{TOKEN_PATH}?token={quote(token, safe='')}"
    return ImportLink(row.id, url, DEEP_LINK_PREFIX + url, row.created_at, row.expires_at)


def cookie_name(token_id: int) -> str:
    """The cookie that lets the minting browser show its link again (reload, bookmark) while
    the store keeps only the token's hash."""
    return f"sslvpn_import_{token_id}"


def state_of(token: ImportToken, now: datetime) -> str:
    """What the owner sees next to a link."""
    if token.used_at is not None:
        return "used"
    if token.revoked:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    return "active"


async def mint_and_show(
    portal: Portal, request: web.Request, *, owner_id: int, serial: str, page_prefix: str
) -> tuple[web.HTTPSeeOther, ImportLink]:
    """Mint a link for ``serial`` and the redirect to its own page (``page_prefix/ID``): a
    reload or bookmark of that page shows the same link again and mints none. The secret
    stays with the browser that asked for it (the store keeps its hash only), for as long as
    the link can work, and only on that page."""
    link, token = await mint(portal, request, user_id=owner_id, serial=serial)
    page = f"{page_prefix}/{link.token_id}"
    shown = web.HTTPSeeOther(page)
    now = datetime.fromtimestamp(portal.clock(), UTC)
    lifetime = max(1, int((link.expires_at - now).total_seconds()))
    shown.set_cookie(cookie_name(link.token_id), token, max_age=lifetime, path=page,
                     httponly=True, samesite="Strict", secure=request.secure)
    return shown, link


async def shown_link(
    portal: Portal, request: web.Request, *, owner_id: int, serial: str
) -> ImportLink | tuple[ImportToken, str]:
    """The link named in the path, to the browser that minted it while it can still be
    used; otherwise its row and what became of it. 404 for anything not this certificate's."""
    try:
        token_id = int(request.match_info["token_id"])
    except ValueError:
        raise web.HTTPNotFound(text="No such import link.") from None
    rows = await portal.read(lambda s: queries.list_import_tokens(s, user_id=owner_id))
    row = next((t for t in rows if t.id == token_id and t.certificate_serial == serial), None)
    if row is None:
        raise web.HTTPNotFound(text="No such import link.")
    secret = request.cookies.get(cookie_name(token_id), "")
    state = state_of(row, datetime.fromtimestamp(portal.clock(), UTC))
    if state == "active" and secret and token_hash(secret) == row.token_hash:
        return await link_of(portal, request, row, secret)
    return row, state
