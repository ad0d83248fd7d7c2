"""Two-factor sign-in pages: the code step of a login, enrolment from the account page, the
user's own turning off and new recovery codes, and the admin's requirement (everyone or per
user) and reset.

A login whose password was right but owes a code holds a session that is not logged in
(`StoreSessions.start_second_factor`): it reaches only `/login/code` or, when the user must
enrol first, `/account/two-factor`; the logged-in session starts once the code is taken.
Codes count in the login throttle like passwords, and a wrong one is audited.
"""

from __future__ import annotations

import asyncio
import base64

from aiohttp import web
from sqlmodel import Session

from client_profiles import two_factor
from client_profiles.passwords import verify_password
from client_profiles.qr import qr_png
from sslvpn.store import NotFoundError, queries
from sslvpn.store.models import User
from web.pages import (
    act_as,
    audit,
    current_user,
    flash,
    form_of,
    portal_of,
    render,
    require_admin,
    require_user,
    session_of,
    start_session,
    user_of,
)
from web.security import client_address
from web.sessions import SECOND_FACTOR_KEY, SECOND_FACTOR_SECONDS
from web.views.admin import user_named
from web.views.auth import home_of, throttled, wait_message

ENROLLING_KEY = "totp_enrolling"  # the secret shown in the QR until a code confirms it


async def owing_user(request: web.Request) -> User | None:
    """The user whose password this browser gave and who still owes the second factor."""
    session = session_of(request)
    if session is None:
        return None
    user_id, since = session.get(SECOND_FACTOR_KEY), session.get("second_factor_since")
    portal = portal_of(request)
    if not isinstance(user_id, int) or not isinstance(since, int | float):
        return None
    if portal.clock() - since > SECOND_FACTOR_SECONDS:
        return None
    user = await portal.read(lambda s: s.get(User, user_id))
    return None if user is None or user.disabled else user


async def code_page(request: web.Request) -> web.StreamResponse:
    user = await owing_user(request)
    if user is None or user.totp_secret is None:
        raise web.HTTPSeeOther("/login")
    return render(request, "login_code.html")


async def check_code(request: web.Request, user: User, code: str) -> str | None:
    """How ``code`` proves the second factor (``totp``, ``recovery code``), None when it
    does not: wrong, a step already used, or a recovery code already used."""
    portal = portal_of(request)
    user_id, secret = user.id, user.totp_secret
    if user_id is None or secret is None:
        return None
    step = two_factor.matching_step(secret, code, portal.clock())
    if step is not None:
        taken = await portal.write(lambda s: queries.accept_totp_step(s, user_id=user_id,
                                                                      step=step))
        return "totp" if taken else None
    used = await asyncio.to_thread(two_factor.matching_recovery_hash,
                                   list(user.recovery_code_hashes), code)
    if used is not None and await portal.write(
            lambda s: two_factor.use_recovery_code(s, user_id=user_id, code_hash=used)):
        return "recovery code"
    return None


async def submit_code(request: web.Request) -> web.StreamResponse:
    user = await owing_user(request)
    if user is None or user.id is None or user.totp_secret is None:
        flash(request, "Sign in again: the time for the code ran out.")
        raise web.HTTPSeeOther("/login")
    address = client_address(request)
    if await throttled(request, user.name, address):
        return render(request, "login_code.html", status=429,
                      errors=[wait_message(request, user.name, address)])
    how = await check_code(request, user, (await form_of(request)).get("code", ""))
    throttle = portal_of(request).throttle
    if how is None:
        throttle.failed(user.name, address)
        await audit(request, "login.failed", actor=user.name, target=user.name,
                    detail="wrong or reused second factor")
        return render(request, "login_code.html", status=401,
                      errors=["That code is wrong or was used already."])
    throttle.succeeded(user.name, address)
    await audit(request, "login", actor=user.name, target=user.name, detail=how)
    start_session(request, user.id)
    raise web.HTTPSeeOther(home_of(user))


async def _enrolling(request: web.Request) -> tuple[User, bool]:
    """Who enrols: the logged-in user, or one who gave their password and must enrol
    before anything else (True)."""
    user = user_of(request)
    if user is not None:
        return user, False
    owing = await owing_user(request)
    if owing is None:
        raise web.HTTPSeeOther("/login")
    if owing.totp_secret is not None:
        raise web.HTTPSeeOther("/login/code")
    return owing, True


async def enrol_page(request: web.Request) -> web.StreamResponse:
    user, owing = await _enrolling(request)
    portal = portal_of(request)
    if user.totp_secret is not None:
        required = await portal.read(lambda s: two_factor.required_of(
            s, user=user, gateway=portal.settings.gateway_name))
        return render(request, "two_factor.html", {
            "enrolled": True, "left": len(user.recovery_code_hashes), "required": required})
    session = session_of(request)
    if session is None:
        raise web.HTTPSeeOther("/login")
    secret = session.get(ENROLLING_KEY)
    if not isinstance(secret, str):
        secret = session[ENROLLING_KEY] = two_factor.new_secret()
    uri = two_factor.provisioning_uri(secret, user.name)
    context = {"enrolled": False, "owing": owing, "secret": secret,
               "qr_png": base64.b64encode(qr_png(uri)).decode()}
    return render(request, "two_factor.html", context)


async def confirm_enrolment(request: web.Request) -> web.StreamResponse:
    """The first code from the app proves it holds the secret; the recovery codes are
    shown in this answer only."""
    user, owing = await _enrolling(request)
    session = session_of(request)
    secret = None if session is None else session.get(ENROLLING_KEY)
    if user.id is None or user.totp_secret is not None or not isinstance(secret, str):
        raise web.HTTPSeeOther("/account/two-factor")
    user_id, portal = user.id, portal_of(request)
    code = (await form_of(request)).get("code", "")
    step = two_factor.matching_step(secret, code, portal.clock())
    if step is None:
        flash(request, "That code is not right: check the app's clock and try the next one.")
        raise web.HTTPSeeOther("/account/two-factor")
    codes = two_factor.new_recovery_codes()
    hashes = await asyncio.to_thread(two_factor.hash_recovery_codes, codes)
    if not await portal.write(lambda s: two_factor.confirm_enrolment(
            s, user_id=user_id, secret=secret, step=step, recovery_hashes=hashes)):
        raise web.HTTPSeeOther("/account/two-factor")
    await audit(request, "user.2fa_enrol", actor=user.name, target=user.name)
    if owing:  # enrolment was the second step of this sign-in
        portal.throttle.succeeded(user.name, client_address(request))
        await audit(request, "login", actor=user.name, target=user.name, detail="enrolled")
        start_session(request, user_id)
        act_as(request, user)
    elif session is not None:
        del session[ENROLLING_KEY]
    return render(request, "two_factor.html",
                  {"enrolled": True, "recovery_codes": codes, "home": home_of(user)})


async def _proven(request: web.Request, user: User) -> bool:
    """The user's own change needs their password and a code (an authenticator's or a
    recovery code, taken once): failures count in the login throttle and are audited."""
    form = await form_of(request)
    address, throttle = client_address(request), portal_of(request).throttle
    if await throttled(request, user.name, address):
        flash(request, wait_message(request, user.name, address))
        return False
    if (await asyncio.to_thread(verify_password, user.password_hash, form.get("password", ""))
            and await check_code(request, user, form.get("code", "")) is not None):
        return True
    throttle.failed(user.name, address)
    await audit(request, "user.2fa_change_failed", target=user.name,
                detail="wrong password or code")
    flash(request, "The password or the code is wrong, or the code was used already.")
    return False


@require_user
async def turn_off(request: web.Request) -> web.StreamResponse:
    """A user who is not required to use two-factor sign-in turns it off (password and
    code); they may enrol again later."""
    me, portal = current_user(request), portal_of(request)
    if await portal.read(lambda s: two_factor.required_of(
            s, user=me, gateway=portal.settings.gateway_name)):
        flash(request, "Your administrator requires two-factor sign-in: it stays on.")
        raise web.HTTPSeeOther("/account/two-factor")
    if me.totp_secret is not None and await _proven(request, me):
        await portal.write(lambda s: two_factor.reset(s, name=me.name))
        await audit(request, "user.2fa_disable", target=me.name)
        flash(request, "Two-factor sign-in is off.")
    raise web.HTTPSeeOther("/account/two-factor")


@require_user
async def new_recovery_codes(request: web.Request) -> web.StreamResponse:
    """Ten new recovery codes replace the old ones (used up or seen by someone else);
    shown in this answer only."""
    me, portal = current_user(request), portal_of(request)
    if me.id is None or me.totp_secret is None or not await _proven(request, me):
        raise web.HTTPSeeOther("/account/two-factor")
    user_id, codes = me.id, two_factor.new_recovery_codes()
    hashes = await asyncio.to_thread(two_factor.hash_recovery_codes, codes)
    if not await portal.write(lambda s: two_factor.replace_recovery_codes(
            s, user_id=user_id, hashes=hashes)):
        raise web.HTTPSeeOther("/account/two-factor")
    await audit(request, "user.2fa_recovery_codes", target=me.name)
    return render(request, "two_factor.html",
                  {"enrolled": True, "recovery_codes": codes, "home": home_of(me)})


@require_admin
async def reset_user(request: web.Request) -> web.StreamResponse:
    """The user's authenticator is lost: they enrol again at their next sign-in (or not at
    all, unless 2FA is required of them)."""
    user = await user_named(request)
    await portal_of(request).write(lambda s: two_factor.reset(s, name=user.name))
    await audit(request, "user.2fa_reset", target=user.name)
    flash(request, f"Two-factor sign-in of {user.name} reset.")
    raise web.HTTPSeeOther("/admin/users")


def _on(form: dict[str, str]) -> bool:
    return form.get("required") == "1"


@require_admin
async def require_user_2fa(request: web.Request) -> web.StreamResponse:
    user = await user_named(request)
    required = _on(await form_of(request))
    await portal_of(request).write(
        lambda s: two_factor.set_required(s, name=user.name, required=required))
    await audit(request, "user.2fa_require", target=user.name, detail=f"required={required}")
    flash(request, f"Two-factor sign-in {'required of' if required else 'optional for'} "
                   f"{user.name}.")
    raise web.HTTPSeeOther("/admin/users")


@require_admin
async def require_everyone(request: web.Request) -> web.StreamResponse:
    """The gateway setting: every user signs in with a code (enrolling at their next
    sign-in)."""
    required = _on(await form_of(request))
    portal, me = portal_of(request), current_user(request)

    def save(s: Session) -> None:
        try:
            two_factor.require_of_everyone(s, gateway=portal.settings.gateway_name,
                                           required=required, keep=me.id)
        except NotFoundError:
            raise web.HTTPNotFound(text="No gateway settings to change.") from None

    await portal.write(save)
    await audit(request, "settings.update", target=portal.settings.gateway_name,
                detail=f"require_two_factor={required}")
    flash(request, f"Two-factor sign-in {'required of everyone' if required else 'per user'}.")
    raise web.HTTPSeeOther("/admin/users")


@require_admin
async def require_on_vpn(request: web.Request) -> web.StreamResponse:
    """The gateway setting: VPN clients give their password and a code (profiles change)."""
    required = _on(await form_of(request))
    portal = portal_of(request)
    actor, address = current_user(request).name, client_address(request)
    try:
        missing = await portal.call(lambda engine: two_factor.require_on_vpn(
            engine, gateway=portal.settings.gateway_name, required=required, actor=actor,
            source_address=address))
    except NotFoundError:
        raise web.HTTPNotFound(text="No gateway settings to change.") from None
    shown = f" Not enrolled, cannot connect: {', '.join(missing)}." if required and missing else ""
    flash(request, f"VPN two-factor {'on' if required else 'off'}: users import their profiles "
                   f"again.{shown}")
    raise web.HTTPSeeOther("/admin/users")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/login/code", code_page)
    app.router.add_post("/login/code", submit_code)
    app.router.add_get("/account/two-factor", enrol_page)
    app.router.add_post("/account/two-factor", confirm_enrolment)
    app.router.add_post("/account/two-factor/off", turn_off)
    app.router.add_post("/account/two-factor/recovery-codes", new_recovery_codes)
    app.router.add_post("/admin/users/{name}/two-factor/reset", reset_user)
    app.router.add_post("/admin/users/{name}/two-factor/require", require_user_2fa)
    app.router.add_post("/admin/two-factor", require_everyone)
    app.router.add_post("/admin/two-factor/vpn", require_on_vpn)
