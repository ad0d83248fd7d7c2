"""Portal security machinery: sessions, CSRF tokens, login throttling and response headers.

Owns everything a handler relies on to trust a request: the server-side session store
(a random id in an HttpOnly, SameSite=Strict cookie, rotated on login), the per-session
CSRF token checked on every state-changing form, the login throttle (per account and per
source address) and the middleware that adds a strict Content-Security-Policy and the other
security headers to every response.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

SESSION_COOKIE = "sslvpn_session"
SESSION_IDLE_SECONDS = 30 * 60
SESSION_ABSOLUTE_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000

THROTTLE_WINDOW_SECONDS = 15 * 60
THROTTLE_ACCOUNT_FAILURES = 5
THROTTLE_ADDRESS_FAILURES = 20

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

Clock = Callable[[], float]


@dataclass
class PortalSession:
    """One browser's server-side state; the id itself is the only thing the browser holds."""

    session_id: str = field(repr=False)
    csrf_token: str = field(repr=False)
    created_at: float
    last_seen: float
    user_id: int | None = None
    flash: list[str] = field(default_factory=list)


class SessionStore:
    """In-memory sessions with idle and absolute expiry, bounded in size (oldest evicted).

    The sessions are kept in order of last use, so the idle ones lead: each new session
    first drops those, and memory holds only the sessions of the last idle period (every
    visit to the login page and every logout makes one) instead of ``max_sessions``.
    """

    def __init__(self, clock: Clock = time.time, max_sessions: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self._max = max_sessions
        self._sessions: OrderedDict[str, PortalSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: PortalSession, now: float) -> bool:
        return (
            now - session.last_seen > SESSION_IDLE_SECONDS
            or now - session.created_at > SESSION_ABSOLUTE_SECONDS
        )

    def new(self, user_id: int | None = None) -> PortalSession:
        """A fresh session with a fresh id and CSRF token."""
        now = self._clock()
        while self._sessions and self._expired(next(iter(self._sessions.values())), now):
            self._sessions.popitem(last=False)
        session = PortalSession(
            session_id=secrets.token_urlsafe(32),
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen=now,
            user_id=user_id,
        )
        self._sessions[session.session_id] = session
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> PortalSession | None:
        """The live session for this id, or None when unknown or expired."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def rotate(self, old: PortalSession | None, user_id: int) -> PortalSession:
        """Log in: drop the pre-login session and hand out a new id (defeats fixation)."""
        if old is not None:
            self._sessions.pop(old.session_id, None)
        return self.new(user_id)

    def drop(self, session: PortalSession) -> None:
        self._sessions.pop(session.session_id, None)

    def drop_user(self, user_id: int) -> None:
        """Log a user out everywhere (disabled, deleted or password reset)."""
        for key in [k for k, s in self._sessions.items() if s.user_id == user_id]:
            del self._sessions[key]


def csrf_valid(session: PortalSession | None, submitted: object) -> bool:
    """True when the submitted form token matches this session's token."""
    if session is None or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(session.csrf_token.encode(), submitted.encode())


class LoginThrottle:
    """Counts failed logins per account and per source address in a sliding window.

    Only keys with failures in the window are kept (asking about a name stores nothing), so
    a stream of made-up account names cannot grow it beyond the failures of one window.
    """

    def __init__(
        self,
        clock: Clock = time.time,
        *,
        window: float = THROTTLE_WINDOW_SECONDS,
        per_account: int = THROTTLE_ACCOUNT_FAILURES,
        per_address: int = THROTTLE_ADDRESS_FAILURES,
    ) -> None:
        self._clock = clock
        self._window = window
        self._limits = {"account": per_account, "address": per_address}
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, kind: str, key: str) -> int:
        """Failures of this key in the window; a key left with none is forgotten."""
        stamps = self._failures.get((kind, key))
        if stamps is None:
            return 0
        cutoff = self._clock() - self._window
        while stamps and stamps[0] < cutoff:
            stamps.popleft()
        if not stamps:
            del self._failures[(kind, key)]
        return len(stamps)

    def blocked(self, account: str, address: str) -> bool:
        """True while either the account or the address has too many recent failures."""
        return (
            self._recent("account", account.lower()) >= self._limits["account"]
            or self._recent("address", address) >= self._limits["address"]
        )

    def failed(self, account: str, address: str) -> None:
        now = self._clock()
        self._forget_stale(now)
        for key in (("account", account.lower()), ("address", address)):
            stamps = self._failures.pop(key, None) or deque()
            stamps.append(now)
            self._failures[key] = stamps  # re-inserted: the dict stays in order of last failure

    def _forget_stale(self, now: float) -> None:
        """Drop the keys whose last failure has left the window (they lead the dict)."""
        cutoff = now - self._window
        while self._failures:
            key, stamps = next(iter(self._failures.items()))
            if stamps and stamps[-1] >= cutoff:
                return
            del self._failures[key]

    def __len__(self) -> int:
        return len(self._failures)

    def succeeded(self, account: str) -> None:
        """A good password clears the account's count (the address keeps its history)."""
        self._failures.pop(("account", account.lower()), None)


def set_session_cookie(response: web.StreamResponse, request: web.Request, session_id: str) -> None:
    """HttpOnly, SameSite=Strict, Secure whenever the portal is served over HTTPS."""
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )


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


def _apply_headers(response: web.StreamResponse, request: web.Request) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
