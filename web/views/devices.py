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
        context.update(await qr_context(link))
    return render(request, "device.html", context)


async def qr_context(link: import_links.ImportLink) -> dict[str, object]:
    """What the import link's QR block shows: the codes and whether a phone can reach it."""
    png, svg = await asyncio.to_thread(_qr_codes, link.deep_link)
    return {"qr_png": png, "qr_svg": svg,
            "loopback_link": not import_links.reachable_from_elsewhere(link.url)}


@require_user
async def download_profile(request: web.Request) -> web.StreamResponse:
    certificate = await owned_certificate(request)
    if certificate.status != "valid":
        raise web.HTTPGone(text="This device's certificate is no longer valid.")
    return profile_response(await rendered_profile(request, certificate.serial))


@require_user
async def create_import_link(request: web.Request) -> web.StreamResponse:
    """Mint a single-use link and send the browser to the page that shows it."""
    certificate = await owned_certificate(request)
    if certificate.status != "valid":
        raise web.HTTPGone(text="This device's certificate is no longer valid.")
    shown, link = await import_links.mint_and_show(
        portal_of(request), request, owner_id=current_user_id(request),
        serial=certificate.serial, page_prefix=f"/devices/{certificate.serial}/import-links")
    detail = f"id={link.token_id}"
    await audit(request, "import_link.create", target=certificate.serial, detail=detail)
    raise shown


@require_user
async def show_import_link(request: web.Request) -> web.StreamResponse:
    """The QR and links of one import link, or what became of it."""
    certificate = await owned_certificate(request)
    found = await import_links.shown_link(portal_of(request), request,
                                          owner_id=current_user_id(request),
                                          serial=certificate.serial)
    if isinstance(found, import_links.ImportLink):
        return await render_device(request, certificate, found)
    return await render_device(request, certificate, spent=found)


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
