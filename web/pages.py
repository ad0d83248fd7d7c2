"""What every HTML handler shares: who is asking (session and user), the CSRF gate, the
authorisation guards, audit writing and template rendering with flash messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import wraps
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from sslvpn.store import queries
from sslvpn.store.models import User
from web.portal import PORTAL, Portal
from web.security import (
    SESSION_COOKIE,
    PortalSession,
    client_address,
    csrf_valid,
    set_session_cookie,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SESSION: web.RequestKey[PortalSession | None] = web.RequestKey("sslvpn_session")
_USER: web.RequestKey[User | None] = web.RequestKey("sslvpn_user")
_NEW_SESSION: web.RequestKey[PortalSession | None] = web.RequestKey("sslvpn_new_session")
# Paths whose state-changing requests authenticate with a bearer token or HTTP Basic
# instead of a cookie, so a cross-site form cannot ride on them.
CSRF_EXEMPT_PREFIXES = ("/api/", "/rest/", "/openvpn-api/")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def portal_of(request: web.Request) -> Portal:
    return request.app[PORTAL]


def session_of(request: web.Request) -> PortalSession | None:
    return request.get(_SESSION)


def user_of(request: web.Request) -> User | None:
    return request.get(_USER)


def act_as(request: web.Request, user: User) -> None:
    """Requests authenticated without a cookie (token, Basic) act as this user."""
    request[_USER] = user


def start_session(request: web.Request, user_id: int | None) -> PortalSession:
    """Replace the request's session (rotating the id); the middleware sets the cookie."""
    portal = portal_of(request)
    old = session_of(request)
    session = portal.sessions.rotate(old, user_id) if user_id is not None else portal.sessions.new()
    if old is not None and user_id is None:
        portal.sessions.drop(old)
    request[_SESSION] = session
    request[_NEW_SESSION] = session
    return session


def ensure_session(request: web.Request) -> PortalSession:
    """An anonymous session so a login form can carry a CSRF token."""
    return session_of(request) or start_session(request, None)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Attach the session and its (still enabled) user; set the cookie when it changed."""
    portal = portal_of(request)
    session = portal.sessions.get(request.cookies.get(SESSION_COOKIE))
    request[_SESSION] = session
    request[_USER] = None
    if session is not None and session.user_id is not None:
        user_id = session.user_id
        user = await portal.read(lambda s: s.get(User, user_id))
        if user is None or user.disabled:
            portal.sessions.drop(session)
            request[_SESSION] = None
        else:
            request[_USER] = user
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _set_cookie_if_new(request, exc)
        raise
    _set_cookie_if_new(request, response)
    return response


def _set_cookie_if_new(request: web.Request, response: web.StreamResponse) -> None:
    new = request.get(_NEW_SESSION)
    if new is not None and not response.prepared:
        set_session_cookie(response, request, new.session_id)


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
        if user_of(request) is None:
            raise web.HTTPSeeOther("/login")
        return await handler(request)

    return guarded


def require_admin(handler: Handler) -> Handler:
    """Only admins; a logged-in user gets 403, an anonymous one the login page."""

    @wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        user = user_of(request)
        if user is None:
            raise web.HTTPSeeOther("/login")
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
        session.flash.append(message)


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
    messages, session.flash = session.flash, []
    full = {
        "me": user_of(request),
        "csrf_token": session.csrf_token,
        "messages": messages,
        "errors": errors or [],
        **(context or {}),
    }
    return aiohttp_jinja2.render_template(template, request, full, status=status)


async def form_of(request: web.Request) -> dict[str, str]:
    """The submitted form as plain strings (files are ignored)."""
    data = await request.post()
    return {key: value for key, value in data.items() if isinstance(value, str)}
