"""Logging in and out: password check, throttling, session rotation and audit of each try."""

from __future__ import annotations

import asyncio
import math

from aiohttp import web
from sqlmodel import Session

from client_profiles import two_factor
from client_profiles.passwords import hash_password, password_problem, verify_password
from sslvpn.store import NotFoundError, portal_logins, queries
from sslvpn.store.models import User
from web.pages import (
    audit,
    current_user,
    current_user_id,
    flash,
    form_of,
    portal_of,
    render,
    require_user,
    start_session,
    user_of,
)
from web.security import MAX_LOGIN_NAME, client_address


def find_user(s: Session, name: str) -> User | None:
    try:
        return queries.get_user(s, name=name)
    except NotFoundError:
        return None


def home_of(user: User) -> str:
    return "/admin" if user.role == "admin" else "/devices"


async def index(request: web.Request) -> web.StreamResponse:
    user = user_of(request)
    raise web.HTTPSeeOther(home_of(user) if user else "/login")


async def login_page(request: web.Request) -> web.StreamResponse:
    user = user_of(request)
    if user is not None:
        raise web.HTTPSeeOther(home_of(user))
    return render(request, "login.html")


async def throttled(request: web.Request, name: str, address: str) -> bool:
    """Whether this login must wait; when it must, the store is asked (once) whether an
    admin unlocked the account since (`sslvpn user unlock`, on any host), and the first
    refusal of the address in a window is audited."""
    throttle = portal_of(request).throttle
    if not throttle.blocked(name, address):
        return False
    user = await portal_of(request).read(lambda s: find_user(s, name)) if name else None
    if user is not None and user.unlocked_at is not None:
        throttle.unlocked(name, user.unlocked_at.timestamp())
    if not throttle.blocked(name, address):
        return False
    if throttle.first_refusal(address):  # audited once per address and window
        await audit(request, "login.throttled", actor=name or "anonymous", target=name)
    return True


async def check_credentials(request: web.Request, name: str, password: str) -> User | None:
    """The enabled user these credentials belong to; throttled and audited either way.

    Shared by the login form and the HTTP Basic profile endpoint.
    """
    portal = portal_of(request)
    address = client_address(request)
    if len(name) > MAX_LOGIN_NAME:
        return None  # no such user can exist: nothing to throttle, audit or look up
    if await throttled(request, name, address):
        return None
    user = await portal.read(lambda s: find_user(s, name)) if name else None
    good = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
    expired = (user is not None and user.password_one_time_until is not None
               and user.password_one_time_until.timestamp() <= portal.clock())
    if user is None or not good or user.disabled or expired:
        portal.throttle.failed(name, address)
        why = ("one-time password expired" if expired and good
               else "disabled" if user is not None and good else "bad credentials")
        await audit(request, "login.failed", actor=name or "anonymous", target=name, detail=why)
        return None
    if await second_factor_needed(request, user):  # the throttle clears on the code
        await audit(request, "login.password", actor=user.name, target=user.name)
        return user
    portal.throttle.succeeded(name, address)
    await audit(request, "login", actor=user.name, target=user.name)
    return user


async def second_factor_needed(request: web.Request, user: User) -> bool:
    """Whether this user signs in with a TOTP code too: enrolled, or required of them or
    of everyone (the gateway setting)."""
    if user.totp_secret is not None:
        return True
    portal = portal_of(request)
    return await portal.read(lambda s: two_factor.required_of(
        s, user=user, gateway=portal.settings.gateway_name))


def wait_message(request: web.Request, name: str, address: str) -> str:
    """What a throttled login (password or code) is told: the real wait."""
    minutes = math.ceil(portal_of(request).throttle.wait(name, address) / 60)
    return f"Too many failed logins. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


async def login(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    name = form.get("name", "").strip()
    address = client_address(request)
    if len(name) <= MAX_LOGIN_NAME and await throttled(request, name, address):
        return render(request, "login.html", {"name": name}, status=429,
                      errors=[wait_message(request, name, address)])
    user = await check_credentials(request, name, form.get("password", ""))
    if user is None or user.id is None:
        return render(
            request, "login.html", {"name": name}, status=401, errors=["Wrong name or password."]
        )
    if await second_factor_needed(request, user):  # not logged in before the code
        portal_of(request).sessions.start_second_factor(request, user.id)
        raise web.HTTPSeeOther("/login/code" if user.totp_secret else "/account/two-factor")
    start_session(request, user.id)
    raise web.HTTPSeeOther(home_of(user))


async def logout(request: web.Request) -> web.StreamResponse:
    start_session(request, None)  # the old session ends on every node
    raise web.HTTPSeeOther("/login")


@require_user
async def password_page(request: web.Request) -> web.StreamResponse:
    return render(request, "password.html")


@require_user
async def change_password(request: web.Request) -> web.StreamResponse:
    """A user changes their own password (needs the current one)."""
    me = current_user(request)
    form = await form_of(request)
    new = form.get("new_password", "")
    errors = []
    if not await asyncio.to_thread(verify_password, me.password_hash, form.get("password", "")):
        errors.append("The current password is wrong.")
    problem = await asyncio.to_thread(password_problem, new, user_inputs=(me.name, me.email))
    if problem is not None:
        errors.append(f"The new password is refused: {problem}.")
    if new != form.get("confirm", ""):
        errors.append("The two new passwords differ.")
    if errors:
        return render(request, "password.html", status=400, errors=errors)
    hashed = await asyncio.to_thread(hash_password, new)
    me_id = current_user_id(request)

    def change(s: Session) -> None:  # the user's own password: no longer one-time
        queries.set_user_password_hash(s, name=me.name, password_hash=hashed)
        portal_logins.end_user_logins(s, user_id=me_id)  # every other browser, every node

    await portal_of(request).write(change)
    await audit(request, "user.password_change", target=me.name)
    start_session(request, me_id)  # this browser goes on, with a new id
    flash(request, "Password changed.")
    raise web.HTTPSeeOther(home_of(me))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/account/password", password_page)
    app.router.add_post("/account/password", change_password)
