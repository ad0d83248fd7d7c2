"""What every HTML handler shares: who is asking (session and user), the CSRF gate, the
authorisation guards, audit writing and template rendering with flash messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import wraps
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import SESSION_KEY, Session, get_session

from sslvpn.store import queries
from sslvpn.store.models import User
from web.portal import PORTAL, Portal
from web.security import CSRF_KEY, client_address, csrf_valid
from web.sessions import end_session

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_USER: web.RequestKey[User | None] = web.RequestKey("sslvpn_user")
# Paths whose state-changing requests authenticate with a bearer token or HTTP Basic
# instead of a cookie, so a cross-site form cannot ride on them.
CSRF_EXEMPT_PREFIXES = ("/api/", "/rest/", "/openvpn-api/")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PASSWORD_PAGE = "/account/password"  # noqa: S105 (a path: where a one-time password goes)


def portal_of(request: web.Request) -> Portal:
    return request.app[PORTAL]


def session_of(request: web.Request) -> Session | None:
    """The browser's session (aiohttp-session, kept in the store), None when it has none."""
    session: Session | None = request.get(SESSION_KEY)
    return None if session is None or session.empty else session


def user_of(request: web.Request) -> User | None:
    return request.get(_USER)


def act_as(request: web.Request, user: User) -> None:
    """Requests authenticated without a cookie (token, Basic) act as this user."""
    request[_USER] = user


def start_session(request: web.Request, user_id: int | None) -> Session:
    """Replace the browser's session with a new id and CSRF token (login, logout); the old
    one ends and the cookie is set when the response goes out."""
    return portal_of(request).sessions.start(request, user_id)


def ensure_session(request: web.Request) -> Session:
    """An anonymous session so a login form can carry a CSRF token."""
    return session_of(request) or start_session(request, None)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Attach the session and its (still enabled) user; a disabled or deleted user's session
    ends here."""
    session = await get_session(request)
    request[_USER] = None
    user_id = session.get("user_id")
    if isinstance(user_id, int):
        user = await portal_of(request).read(lambda s: s.get(User, user_id))
        if user is None or user.disabled:
            end_session(request)
        else:
            request[_USER] = user
    return await handler(request)


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every state-changing form must carry this session's CSRF token."""
    if request.method in STATE_CHANGING and not request.path.startswith(CSRF_EXEMPT_PREFIXES):
        form = await request.post()
        if not csrf_valid(session_of(request), form.get("csrf_token")):
            raise web.HTTPForbidden(
                text="The form expired or did not come from this portal. Reload and try again."
            )
    return await handler(request)


def require_user(handler: Handler) -> Handler:
    """Anonymous visitors go to the login page."""

    @wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        user = user_of(request)
        if user is None:
            raise web.HTTPSeeOther("/login")
        _own_password_first(request, user)
        return await handler(request)

    return guarded


def _own_password_first(request: web.Request, user: User) -> None:
    """A user holding a one-time password sees only the page that replaces it."""
    if user.password_one_time_until is not None and request.path != PASSWORD_PAGE:
        raise web.HTTPSeeOther(PASSWORD_PAGE)


def require_admin(handler: Handler) -> Handler:
    """Only admins; a logged-in user gets 403, an anonymous one the login page."""

    @wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        user = user_of(request)
        if user is None:
            raise web.HTTPSeeOther("/login")
        _own_password_first(request, user)
        if user.role != "admin":
            raise web.HTTPForbidden(text="Administrators only.")
        return await handler(request)

    return guarded


def current_user(request: web.Request) -> User:
    """The logged-in user inside a guarded handler."""
    user = user_of(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    return user


def current_user_id(request: web.Request) -> int:
    """The logged-in user's id (stored rows always have one)."""
    user_id = current_user(request).id
    if user_id is None:
        raise web.HTTPSeeOther("/login")
    return user_id


async def audit(
    request: web.Request,
    action: str,
    *,
    target: str | None = None,
    detail: str | None = None,
    actor: str | None = None,
) -> None:
    """One audit row with the actor, time and source address of this request."""
    user = user_of(request)
    who = actor or (user.name if user else "anonymous")
    where = client_address(request)
    await portal_of(request).write(
        lambda s: queries.record_audit(
            s, actor=who, action=action, target=target, source_address=where, detail=detail
        )
    )


def flash(request: web.Request, message: str) -> None:
    """A one-time message shown on the next rendered page."""
    session = session_of(request)
    if session is not None:
        session["flash"] = [*session.get("flash", []), message]


def render(
    request: web.Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    errors: list[str] | None = None,
) -> web.Response:
    """Render with the user, CSRF token, flash messages and any form errors."""
    session = ensure_session(request)
    messages = session.get("flash", [])
    if messages:
        session["flash"] = []
    full = {
        "me": user_of(request),
        "csrf_token": session[CSRF_KEY],
        "messages": messages,
        "errors": errors or [],
        **(context or {}),
    }
    return aiohttp_jinja2.render_template(template, request, full, status=status)


async def form_of(request: web.Request) -> dict[str, str]:
    """The submitted form as plain strings (files are ignored)."""
    data = await request.post()
    return {key: value for key, value in data.items() if isinstance(value, str)}
