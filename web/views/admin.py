"""Admin pages for people and their certificates: create, disable, reset, delete users;
issue, renew and revoke certificates; download the CRL.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from sqlmodel import Session

from client_profiles.passwords import generate_password, hash_password, one_time_until
from sslvpn.store import NotFoundError, list_pages, queries
from sslvpn.store.models import (
    CERTIFICATE_STATUS_VALUES,
    ROLE_VALUES,
    Certificate,
    GatewaySettings,
    User,
)
from web import import_links, pki_ops
from web.listing import Listing, window_of
from web.pages import (
    audit,
    current_user,
    flash,
    form_of,
    portal_of,
    render,
    require_admin,
)
from web.views.devices import (
    DEVICE_NAME,
    DEVICE_NAME_RULE,
    now_of,
    profile_response,
    qr_context,
    rendered_profile,
)

REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)
MAX_LIFETIME_DAYS = 3650
DEFAULT_LIFETIME_DAYS = 365


async def user_named(request: web.Request) -> User:
    name = request.match_info["name"]
    try:
        return await portal_of(request).read(lambda s: queries.get_user(s, name=name))
    except NotFoundError:
        raise web.HTTPNotFound(text="No such user.") from None


async def certificate_of(request: web.Request) -> Certificate:
    serial = request.match_info["serial"]
    try:
        return await portal_of(request).read(lambda s: queries.get_certificate(s, serial=serial))
    except NotFoundError:
        raise web.HTTPNotFound(text="No such certificate.") from None


# Users ------------------------------------------------------------------------------------


@require_admin
async def users_page(request: web.Request) -> web.StreamResponse:
    return await render_users(request)


async def render_users(
    request: web.Request,
    *,
    status: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    gateway = portal_of(request).settings.gateway_name
    window = window_of(request, list_pages.USER_SORTS, default_sort="name")

    def listed(s: Session) -> tuple[list[User], int, dict[int, int], GatewaySettings]:
        users, total = list_pages.users_page(s, window=window)
        settings = queries.get_settings(s, name=gateway)
        ids = [u.id for u in users if u.id is not None]
        return users, total, queries.valid_certificate_counts(s, user_ids=ids), settings

    users, total, counts, settings = await portal_of(request).read(listed)
    context = {"users": users, "counts": counts, "form": form or {}, "roles": ROLE_VALUES,
               "everyone_2fa": settings.require_two_factor,
               "vpn_2fa": settings.vpn_two_factor,
               "listing": Listing("/admin/users", window, total)}
    return render(request, "admin_users.html", context, status=status, errors=errors)


@require_admin
async def create_user(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    name = form.get("name", "").strip()
    role = form.get("role", "user")
    password = form.get("password", "")
    errors = []
    if role not in ROLE_VALUES:
        errors.append("Role must be admin or user.")
    if errors:
        return await render_users(request, status=400, errors=errors, form=form)
    generated = not password
    password = password or generate_password()
    try:
        await pki_ops.add_user(
            request, name=name, role=role, email=form.get("email") or None, password=password,
            one_time=generated,
        )
    except pki_ops.OperationError as exc:
        return await render_users(request, status=400, errors=[str(exc)], form=form)
    shown = f" One-time password: {password}" if generated else ""
    flash(request, f"User {name} created.{shown}")
    raise web.HTTPSeeOther("/admin/users")


@require_admin
async def set_disabled(request: web.Request) -> web.StreamResponse:
    """Disabling blocks logins and new VPN sessions but revokes nothing."""
    user = await user_named(request)
    disabled = request.match_info["action"] == "disable"
    if disabled and user.id == current_user(request).id:
        flash(request, "You cannot disable yourself.")
        raise web.HTTPSeeOther("/admin/users")
    await pki_ops.set_enabled(request, user.name, enabled=not disabled)
    if disabled and user.id is not None:
        await portal_of(request).sessions.drop_user(user.id)
    flash(request, f"User {user.name} {'disabled' if disabled else 'enabled'}.")
    raise web.HTTPSeeOther("/admin/users")


@require_admin
async def reset_password(request: web.Request) -> web.StreamResponse:
    user = await user_named(request)
    password = generate_password()
    hashed = await asyncio.to_thread(hash_password, password)
    until = one_time_until(now_of(request))
    await portal_of(request).write(
        lambda s: queries.set_user_password_hash(s, name=user.name, password_hash=hashed,
                                                 one_time_until=until)
    )
    if user.id is not None and user.id != current_user(request).id:
        await portal_of(request).sessions.drop_user(user.id)
    await audit(request, "user.password_reset", target=user.name)
    flash(request, f"New one-time password for {user.name}: {password}")
    raise web.HTTPSeeOther("/admin/users")


@require_admin
async def delete_user(request: web.Request) -> web.StreamResponse:
    """Deleting a user revokes every certificate they still hold."""
    user = await user_named(request)
    if user.id == current_user(request).id:
        flash(request, "You cannot delete yourself.")
        raise web.HTTPSeeOther("/admin/users")
    revoked, ended = await pki_ops.delete_user(request, user.name)  # audited there
    if user.id is not None:
        await portal_of(request).sessions.drop_user(user.id)
    flash(
        request,
        f"User {user.name} deleted; {revoked} certificate(s) revoked, {ended} session(s) ended.",
    )
    raise web.HTTPSeeOther("/admin/users")


# Certificates -----------------------------------------------------------------------------


@require_admin
async def certificates_page(request: web.Request) -> web.StreamResponse:
    return await render_certificates(request)


async def render_certificates(
    request: web.Request,
    *,
    status: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    window = window_of(request, list_pages.CERTIFICATE_SORTS, default_sort="created",
                       default_descending=True)
    status_shown = request.query.get("status", "")
    status_filter = status_shown if status_shown in CERTIFICATE_STATUS_VALUES else None

    def listed(s: Session) -> tuple[list[tuple[Certificate, str | None]], int]:
        return list_pages.client_certificates_page(s, window=window, status=status_filter)

    rows, total = await portal_of(request).read(listed)
    filters = {"status": status_filter} if status_filter else {}
    context = {
        "rows": rows,
        "listing": Listing("/admin/certificates", window, total, filters),
        "status": status_filter or "",
        "statuses": CERTIFICATE_STATUS_VALUES,
        "now": now_of(request),
        "reasons": REVOCATION_REASONS,
        "form": form or {"days": str(DEFAULT_LIFETIME_DAYS)},
    }
    return render(request, "admin_certificates.html", context, status=status, errors=errors)


@require_admin
async def issue_certificate(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    device = form.get("device", "").strip()
    days_text = form.get("days", "").strip()
    errors = []
    if not DEVICE_NAME.fullmatch(device):
        errors.append(f"Device name: {DEVICE_NAME_RULE}.")
    if not days_text.isdigit() or not 1 <= int(days_text) <= MAX_LIFETIME_DAYS:
        errors.append(f"Lifetime must be 1 to {MAX_LIFETIME_DAYS} days.")
    owner = None
    try:
        owner = await portal_of(request).read(
            lambda s: queries.get_user(s, name=form.get("user", ""))
        )
    except NotFoundError:
        errors.append("Choose an existing user.")
    if errors or owner is None:
        return await render_certificates(request, status=400, errors=errors, form=form)
    try:
        certificate = await pki_ops.issue(
            request, user_name=owner.name, device=device, days=int(days_text)
        )
    except pki_ops.OperationError as exc:
        return await render_certificates(request, status=400, errors=[str(exc)], form=form)
    flash(request, f"Issued {owner.name}/{device} (serial {certificate.serial}).")
    raise web.HTTPSeeOther("/admin/certificates")


@require_admin
async def renew_certificate(request: web.Request) -> web.StreamResponse:
    old = await certificate_of(request)
    if old.status != "valid":
        flash(request, f"Certificate {old.serial} is {old.status}; only valid ones renew.")
        raise web.HTTPSeeOther("/admin/certificates")
    try:
        new = await pki_ops.renew(request, old.serial)
    except pki_ops.OperationError as exc:
        flash(request, f"Not renewed: {exc}")
        raise web.HTTPSeeOther("/admin/certificates") from None
    flash(
        request,
        f"Renewed {old.subject_cn}: new serial {new.serial}. The owner's devices page offers "
        "a fresh import link.",
    )
    raise web.HTTPSeeOther("/admin/certificates")


@require_admin
async def revoke_certificate(request: web.Request) -> web.StreamResponse:
    certificate = await certificate_of(request)
    form = await form_of(request)
    reason = form.get("reason", "unspecified")
    if reason not in REVOCATION_REASONS:
        return await render_certificates(request, status=400, errors=["Choose a listed reason."])
    if certificate.status == "revoked":
        flash(request, f"Certificate {certificate.serial} was already revoked.")
        raise web.HTTPSeeOther("/admin/certificates")
    ended = await pki_ops.revoke(request, certificate.serial, reason)
    flash(request, f"Revoked {certificate.subject_cn}; {ended} live session(s) ended.")
    raise web.HTTPSeeOther("/admin/certificates")


@require_admin
async def admin_profile(request: web.Request) -> web.StreamResponse:
    certificate = await certificate_of(request)
    if certificate.status != "valid" or certificate.kind != "client":
        raise web.HTTPGone(text="Only valid client certificates have a profile.")
    return profile_response(await rendered_profile(request, certificate.serial))


async def importable(request: web.Request) -> tuple[Certificate, int]:
    """A valid client certificate of a user (an import link goes to its owner), or 410."""
    certificate = await certificate_of(request)
    if certificate.status != "valid" or certificate.kind != "client" or certificate.user_id is None:
        raise web.HTTPGone(text="Only valid client certificates of a user have an import link.")
    return certificate, certificate.user_id


@require_admin
async def admin_import_link(request: web.Request) -> web.StreamResponse:
    """A single-use import link (QR) for the owner's device, made by the admin, e.g. to show
    on a screen the owner scans; shown on its own page like the owner's."""
    certificate, owner_id = await importable(request)
    shown, link = await import_links.mint_and_show(
        portal_of(request), request, owner_id=owner_id, serial=certificate.serial,
        page_prefix=f"/admin/certificates/{certificate.serial}/import-links")
    await audit(request, "import_link.create", target=certificate.serial,
                detail=f"id={link.token_id}")
    raise shown


@require_admin
async def show_admin_import_link(request: web.Request) -> web.StreamResponse:
    certificate, owner_id = await importable(request)
    found = await import_links.shown_link(portal_of(request), request, owner_id=owner_id,
                                          serial=certificate.serial)
    owner = await portal_of(request).read(lambda s: queries.get_user_by_id(s, user_id=owner_id))
    context: dict[str, object] = {"certificate": certificate, "owner": owner.name,
                                  "link": None, "spent": None}
    if isinstance(found, import_links.ImportLink):
        context.update(link=found, **await qr_context(found))
    else:
        context["spent"] = found
    return render(request, "admin_import_link.html", context)


@require_admin
async def download_crl(request: web.Request) -> web.StreamResponse:
    crl = portal_of(request).paths.crl_pem
    try:
        body = await asyncio.to_thread(crl.read_bytes)
    except FileNotFoundError:
        raise web.HTTPNotFound(text="No CRL has been published yet.") from None
    return web.Response(
        body=body,
        content_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="crl.pem"'},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/users", users_page)
    app.router.add_post("/admin/users", create_user)
    app.router.add_post("/admin/users/{name}/{action:disable|enable}", set_disabled)
    app.router.add_post("/admin/users/{name}/password", reset_password)
    app.router.add_post("/admin/users/{name}/delete", delete_user)
    app.router.add_get("/admin/certificates", certificates_page)
    app.router.add_post("/admin/certificates", issue_certificate)
    app.router.add_post("/admin/certificates/{serial}/renew", renew_certificate)
    app.router.add_post("/admin/certificates/{serial}/revoke", revoke_certificate)
    app.router.add_get("/admin/certificates/{serial}/profile.ovpn", admin_profile)
    app.router.add_post("/admin/certificates/{serial}/import-links", admin_import_link)
    app.router.add_get("/admin/certificates/{serial}/import-links/{token_id}",
                       show_admin_import_link)
    app.router.add_get("/admin/crl.pem", download_crl)
