"""Endpoints OpenVPN Connect calls by itself (facts from OpenVPN 3's doc/webauth.md):

- ``GET /rest/GetProfileViaToken?token=...``: the target of the
  ``openvpn://import-profile/https://...`` deep link; no login (the single-use token is the
  credential), ``application/x-openvpn-profile``, 410 Gone once used, revoked or expired.
- ``GET /rest/GetUserlogin``: "import from URL" with HTTP Basic portal credentials; the
  profile of the user's "connect" device (issued on the first call, reused after), as
  ``text/plain``; errors in Access Server's XML shape.
- ``HEAD/GET /openvpn-api/profile``: the web-based download probe. We answer it directly
  (no redirect) and without ``Ovpn-WebAuth``, which tells Connect to use the REST method.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from aiohttp import web
from sqlmodel import Session

from client_profiles import reports
from sslvpn.store import ConflictError, NotFoundError, queries
from sslvpn.store.models import ImportToken, User
from web import pki_ops
from web.import_links import token_hash
from web.pages import act_as, audit, portal_of
from web.security import client_address
from web.views.auth import check_credentials, second_factor_needed
from web.views.devices import profile_response, rendered_profile

MAX_TOKEN_LENGTH = 128
MAX_USER_AGENT = 200
BASIC_REALM = 'Basic realm="sslvpn", charset="UTF-8"'
ONBOARDING_DEVICE = "connect"  # the device OpenVPN Connect's "import from URL" gets


async def profile_via_token(request: web.Request) -> web.StreamResponse:
    """Spend a single-use import token and answer with its profile."""
    portal = portal_of(request)
    token = request.query.get("token", "")
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise web.HTTPNotFound(text="Unknown import link.")
    now = datetime.fromtimestamp(portal.clock(), UTC)
    agent = request.headers.get("User-Agent", "")[:MAX_USER_AGENT]
    hashed, address = token_hash(token), client_address(request)

    def spend(s: Session) -> tuple[ImportToken, User]:
        row = queries.mark_import_token_used(
            s, token_hash=hashed, at=now, used_from=address, user_agent=agent or None
        )
        return row, queries.get_user_by_id(s, user_id=row.user_id)

    try:
        row, owner = await portal.write(spend)
    except NotFoundError:
        raise web.HTTPNotFound(text="Unknown import link.") from None
    except ConflictError:
        await audit(request, "profile.import_refused", detail=f"agent={agent}")
        raise web.HTTPGone(text="This import link was already used, revoked or expired.") from None
    act_as(request, owner)
    profile = await rendered_profile(request, row.certificate_serial)
    await audit(
        request,
        "profile.import",
        target=row.certificate_serial,
        detail=f"link={row.id} agent={agent}",
    )
    return profile_response(profile)


def rest_error(status: int, kind: str, message: str) -> web.Response:
    """An error in the XML shape Access Server uses and Connect parses."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Type>{escape(kind)}</Type>\n  <Synopsis>REST method failed</Synopsis>\n"
        f"  <Message>{escape(message)}</Message>\n</Error>\n"
    )
    headers = {"WWW-Authenticate": BASIC_REALM} if status == 401 else {}
    return web.Response(status=status, text=body, content_type="text/xml", headers=headers)


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


async def get_userlogin(request: web.Request) -> web.StreamResponse:
    """Issue a new device for the Basic-authenticated user; the profile as text/plain."""
    credentials = basic_credentials(request)
    if credentials is None:
        return rest_error(401, "Authorization Required", "AUTH_FAILED: credentials required (9007)")
    user = await check_credentials(request, *credentials)
    if user is None:
        return rest_error(401, "Authorization Required", "AUTH_FAILED: bad credentials (9007)")
    if await second_factor_needed(request, user):  # a password alone must not mint a profile
        return rest_error(403, "Access denied", "This account signs in with a second factor: "
                          "import the profile from the portal's device page.")
    act_as(request, user)
    if user.password_one_time_until is not None:
        return rest_error(403, "Access denied",
                          "Replace your one-time password in the portal first.")
    if await _needs_tls_crypt_v2(request) and request.query.get("tls-cryptv2") != "1":
        return rest_error(
            403, "Access denied", "This gateway needs a client with tls-crypt-v2 support."
        )
    try:
        serial = await _onboarding_certificate(request, user)
        profile = await pki_ops.render_profile(request, serial)
    except pki_ops.OperationError as exc:
        return rest_error(500, "Internal Server Error", f"PROFILE_FAILED: {exc}")
    await audit(request, "profile.import", target=serial, detail="rest=GetUserlogin")
    return web.Response(
        text=profile.text,
        content_type="text/plain",
        headers={"Content-Disposition": f'attachment; filename="{profile.file_name}"'},
    )


async def _onboarding_certificate(request: web.Request, user: User) -> str:
    """The serial of the user's Connect device: the current one when there is one (each
    import used to mint a new certificate), else a new one. Two imports at once: the
    second one's issue is refused as a second device and it takes the first one's."""
    portal = portal_of(request)

    def current(s: Session) -> str | None:
        row = reports.device_certificate(s, user_id=user.id, device=ONBOARDING_DEVICE)
        return None if row is None else row.serial

    found = await portal.read(current)
    if found is not None:
        return found
    try:
        return (await pki_ops.issue(request, user_name=user.name, device=ONBOARDING_DEVICE)).serial
    except pki_ops.OperationError:
        found = await portal.read(current)
        if found is None:
            raise
        return found


async def _needs_tls_crypt_v2(request: web.Request) -> bool:
    """Profiles carry tls-crypt-v2 keys when the gateway uses them; the client must say so."""
    portal = portal_of(request)
    name = portal.settings.gateway_name
    try:
        settings = await portal.read(lambda s: queries.get_settings(s, name=name))
    except NotFoundError:
        return False
    return settings.control_channel == "tls-crypt-v2"


async def openvpn_api_profile(request: web.Request) -> web.StreamResponse:
    """The web-download probe: answered here, without Ovpn-WebAuth (use the REST method)."""
    return web.Response(
        text="Import from URL uses /rest/GetUserlogin with your portal name and password.\n",
        content_type="text/plain",
    )


def add_routes(app: web.Application) -> None:
    # No HEAD: a probe must never spend a single-use link or issue a certificate.
    app.router.add_get("/rest/GetProfileViaToken", profile_via_token, allow_head=False)
    app.router.add_get("/rest/GetUserlogin", get_userlogin, allow_head=False)
    app.router.add_get("/openvpn-api/profile", openvpn_api_profile)
