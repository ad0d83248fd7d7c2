"""Portal security machinery: CSRF tokens, login throttling (``sslvpn.throttle``, shared
with the VPN's two-factor check) and response headers.

Owns what a handler relies on to trust a request besides the session itself (kept in the
store by web/sessions.py): the per-session CSRF token checked on every state-changing form,
the login throttle (per account and per source address) and the middleware that adds a
strict Content-Security-Policy and the other security headers to every response.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from sslvpn.throttle import THROTTLE_ACCOUNT_FAILURES as THROTTLE_ACCOUNT_FAILURES
from sslvpn.throttle import THROTTLE_ADDRESS_FAILURES as THROTTLE_ADDRESS_FAILURES
from sslvpn.throttle import THROTTLE_WINDOW_SECONDS as THROTTLE_WINDOW_SECONDS
from sslvpn.throttle import Clock as Clock
from sslvpn.throttle import LoginThrottle as LoginThrottle

SESSION_COOKIE = "sslvpn_session"

MAX_LOGIN_NAME = 64  # the longest user name (client_profiles.accounts): longer is refused

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

SERVER_NAME = "sslvpn"  # no version
CSRF_KEY = "csrf"  # where a session keeps its CSRF token


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_valid(session: Mapping[str, Any] | None, submitted: object) -> bool:
    """True when the submitted form token matches this session's token."""
    expected = None if session is None else session.get(CSRF_KEY)
    if not isinstance(expected, str) or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())


def client_address(request: web.Request) -> str:
    """The peer address as seen on the socket (no proxy headers are trusted)."""
    return request.remote or "unknown"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response, errors included, carries the strict headers."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _apply_headers(exc, request)
        raise
    _apply_headers(response, request)
    return response


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``Server: sslvpn`` on every response, 500s included: aiohttp's default names the
    Python and aiohttp versions, a map for whoever looks for known holes."""
    response.headers["Server"] = SERVER_NAME


def _apply_headers(response: web.StreamResponse, request: web.Request) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
