"""End users' own devices: list, create (issue), download the profile, import links + QR,
revoke. Every handler looks certificates up through `owned_certificate`, so a user can
only ever reach their own (anything else is a 404, which also hides that it exists).
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime

from aiohttp import web
from sqlmodel import Session

from client_profiles.inputs import DEVICE_PATTERN
from client_profiles.ovpn import ClientRequirement, client_requirement
from client_profiles.qr import qr_png, qr_svg
from client_profiles.reports import RenderedProfile
from sslvpn.store import NotFoundError, queries
from sslvpn.store.models import Certificate, ImportToken
from web import import_links, pki_ops
from web.pages import (
    audit,
    current_user,
    current_user_id,
    flash,
    form_of,
    portal_of,
    render,
    require_user,
)

DEVICE_NAME = DEVICE_PATTERN  # the lifecycle's own check, so every face accepts the same
DEVICE_NAME_RULE = "1-32 letters, digits, '_' or '-', starting with a letter or digit"
PROFILE_TYPE = "application/x-openvpn-profile"


async def owned_certificate(request: web.Request) -> Certificate:
    """The logged-in user's own client certificate named in the path, or 404."""
    me_id = current_user_id(request)
    serial = request.match_info["serial"]
    try:
        certificate = await portal_of(request).read(
            lambda s: queries.get_certificate(s, serial=serial)
        )
    except NotFoundError:
        raise web.HTTPNotFound(text="No such device.") from None
    if certificate.user_id is None or certificate.user_id != me_id:
        raise web.HTTPNotFound(text="No such device.")
    if certificate.kind != "client":
        raise web.HTTPNotFound(text="No such device.")
    return certificate


def _qr_codes(deep_link: str) -> tuple[str, str]:
    """The import link as base64 PNG and SVG QR codes (tens of ms: off the loop)."""
    png = base64.b64encode(qr_png(deep_link)).decode()
    return png, base64.b64encode(qr_svg(deep_link).encode()).decode()


def profile_response(profile: RenderedProfile) -> web.Response:
    """An inline .ovpn as a download named after the certificate."""
    return web.Response(
        text=profile.text,
        content_type=PROFILE_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{profile.file_name}"'},
    )


async def rendered_profile(request: web.Request, serial: str) -> RenderedProfile:
    """The certificate's .ovpn, or 410 Gone when it can no longer be rendered."""
    try:
        return await pki_ops.render_profile(request, serial)
    except pki_ops.OperationError as exc:
        raise web.HTTPGone(text=str(exc)) from None


def now_of(request: web.Request) -> datetime:
    return datetime.fromtimestamp(portal_of(request).clock(), UTC)


@require_user
async def list_devices(request: web.Request) -> web.StreamResponse:
    return await render_devices(request)


async def render_devices(
    request: web.Request, *, status: int = 200, errors: list[str] | None = None, device: str = ""
) -> web.Response:
    me_id = current_user_id(request)

    def listed(s: Session) -> tuple[list[Certificate], set[str]]:
        imported = {
            t.certificate_serial
            for t in queries.list_import_tokens(s, user_id=me_id)
            if t.used_at is not None
        }
        return queries.list_certificates(s, user_id=me_id, kind="client"), imported

    certificates, imported = await portal_of(request).read(listed)
    shown = [c for c in certificates if c.status != "superseded"]
    # A renewal hands the owner a fresh import link: offered until the new one is imported.
    renewed = {
        c.superseded_by
        for c in certificates
        if c.superseded_by is not None and c.superseded_by not in imported
    }
    context = {
        "certificates": shown,
        "renewed": [c for c in shown if c.serial in renewed and c.status == "valid"],
        "now": now_of(request),
        "device": device,
    }
    return render(request, "devices.html", context, status=status, errors=errors)


@require_user
async def create_device(request: web.Request) -> web.StreamResponse:
    me = current_user(request)
    form = await form_of(request)
    device = form.get("device", "").strip()
    if not DEVICE_NAME.fullmatch(device):
        return await render_devices(
            request, status=400, errors=[f"Device name: {DEVICE_NAME_RULE}."], device=device
        )
    try:
        certificate = await pki_ops.issue(request, user_name=me.name, device=device)
    except pki_ops.OperationError as exc:
        return await render_devices(request, status=400, errors=[str(exc)], device=device)
    flash(request, f"Device {device} created.")
    raise web.HTTPSeeOther(f"/devices/{certificate.serial}")


@require_user
async def show_device(request: web.Request) -> web.StreamResponse:
    certificate = await owned_certificate(request)
    return await render_device(request, certificate)


async def render_device(
    request: web.Request,
    certificate: Certificate,
    link: import_links.ImportLink | None = None,
    *,
    spent: tuple[ImportToken, str] | None = None,
) -> web.Response:
    me_id = current_user_id(request)
    name = portal_of(request).settings.gateway_name

    def read(s: Session) -> tuple[list[ImportToken], ClientRequirement | None]:
        tokens = queries.list_import_tokens(s, user_id=me_id)
        try:
            settings = queries.get_settings(s, name=name)
        except NotFoundError:
            return tokens, None
        return tokens, client_requirement(
            settings.control_channel, udp=settings.protocols != "tcp",
            force_cookie=settings.tls_crypt_v2_force_cookie)

    listed, requirement = await portal_of(request).read(read)
    tokens = [t for t in listed if t.certificate_serial == certificate.serial]
    now = now_of(request)
    context: dict[str, object] = {
        "requirement": requirement,
        "certificate": certificate,
        "tokens": [(t, import_links.state_of(t, now)) for t in tokens],
        "now": now,
        "link": link,
        "spent": spent,
    }
    if link is not None:
        png, svg = await asyncio.to_thread(_qr_codes, link.deep_link)
        context["qr_png"], context["qr_svg"] = png, svg
        context["loopback_link"] = not import_links.reachable_from_elsewhere(link.url)
    return render(request, "device.html", context)


@require_user
async def download_profile(request: web.Request) -> web.StreamResponse:
    certificate = await owned_certificate(request)
    if certificate.status != "valid":
        raise web.HTTPGone(text="This device's certificate is no longer valid.")
    return profile_response(await rendered_profile(request, certificate.serial))


@require_user
async def create_import_link(request: web.Request) -> web.StreamResponse:
    """Mint a single-use link and send the browser to the page that shows it: a reload or a
    bookmark of that page shows the same link again, it never mints a second one."""
    me_id = current_user_id(request)
    certificate = await owned_certificate(request)
    if certificate.status != "valid":
        raise web.HTTPGone(text="This device's certificate is no longer valid.")
    portal = portal_of(request)
    link, token = await import_links.mint(
        portal, request, user_id=me_id, serial=certificate.serial
    )
    detail = f"id={link.token_id}"
    await audit(request, "import_link.create", target=certificate.serial, detail=detail)
    page = f"/devices/{certificate.serial}/import-links/{link.token_id}"
    shown = web.HTTPSeeOther(page)
    # The secret stays with the browser that asked for it (the store keeps its hash only),
    # for as long as the link can work, and only on that link's page.
    lifetime = max(1, int((link.expires_at - now_of(request)).total_seconds()))
    shown.set_cookie(import_links.cookie_name(link.token_id), token, max_age=lifetime,
                     path=page, httponly=True, samesite="Strict", secure=request.secure)
    raise shown


@require_user
async def show_import_link(request: web.Request) -> web.StreamResponse:
    """The QR and links of one import link, to the browser that minted it while it can
    still be used; otherwise the device page says what became of it."""
    certificate = await owned_certificate(request)
    me_id = current_user_id(request)
    try:
        token_id = int(request.match_info["token_id"])
    except ValueError:
        raise web.HTTPNotFound(text="No such import link.") from None
    rows = await portal_of(request).read(
        lambda s: queries.list_import_tokens(s, user_id=me_id)
    )
    row = next((t for t in rows if t.id == token_id
                and t.certificate_serial == certificate.serial), None)
    if row is None:
        raise web.HTTPNotFound(text="No such import link.")
    secret = request.cookies.get(import_links.cookie_name(token_id), "")
    state = import_links.state_of(row, now_of(request))
    if state == "active" and secret and import_links.token_hash(secret) == row.token_hash:
        link = await import_links.link_of(portal_of(request), request, row, secret)
        return await render_device(request, certificate, link)
    return await render_device(request, certificate, spent=(row, state))


@require_user
async def revoke_import_link(request: web.Request) -> web.StreamResponse:
    certificate = await owned_certificate(request)
    token_id = request.match_info["token_id"]
    me_id = current_user_id(request)
    try:
        token = await portal_of(request).write(
            lambda s: queries.revoke_import_token(s, token_id=int(token_id), user_id=me_id)
        )
    except (NotFoundError, ValueError):
        raise web.HTTPNotFound(text="No such import link.") from None
    if token.certificate_serial != certificate.serial:
        raise web.HTTPNotFound(text="No such import link.")
    await audit(request, "import_link.revoke", target=certificate.serial, detail=f"id={token_id}")
    flash(request, "Import link revoked.")
    raise web.HTTPSeeOther(f"/devices/{certificate.serial}")


@require_user
async def revoke_device(request: web.Request) -> web.StreamResponse:
    certificate = await owned_certificate(request)
    if certificate.status != "valid":
        flash(request, "This device was already revoked.")
        raise web.HTTPSeeOther("/devices")
    ended = await pki_ops.revoke(request, certificate.serial, "cessationOfOperation")
    flash(request, f"Device {certificate.device} revoked; {ended} live session(s) ended.")
    raise web.HTTPSeeOther("/devices")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/devices", list_devices)
    app.router.add_post("/devices", create_device)
    app.router.add_get("/devices/{serial}", show_device)
    app.router.add_get("/devices/{serial}/profile.ovpn", download_profile)
    app.router.add_post("/devices/{serial}/import-links", create_import_link)
    app.router.add_get("/devices/{serial}/import-links/{token_id}", show_import_link)
    app.router.add_post("/devices/{serial}/import-links/{token_id}/revoke", revoke_import_link)
    app.router.add_post("/devices/{serial}/revoke", revoke_device)
