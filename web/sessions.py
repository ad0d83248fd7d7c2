"""Portal sessions kept in the store, through aiohttp-session, so every node's portal serves
any logged-in user and a restart logs nobody out.

Why the store and not encrypted cookies: logging out (or a disabled user, a password reset)
must make a stolen cookie worthless at once on every node. A cookie that carries the session
can only be refused by a server-side list of revoked ones, which is a table anyway; keeping
the session itself in a row makes logout a DELETE that every node sees on its next request.

The browser holds a random 256-bit id (HttpOnly, SameSite=Strict, Secure under HTTPS); the
row is keyed by its SHA-256. Before login a visitor's id is never stored: its CSRF token is
an HMAC of it under the fleet's key, so the login page needs no store write. A login (or
logout) always starts a new id and ends the old row in the same transaction (no session
fixation). A session expires after `SESSION_IDLE_SECONDS` unused or
`SESSION_ABSOLUTE_SECONDS` after it began; last use is written at most once a
`TOUCH_SECONDS`, so reading a page costs one store read. Each new login first drops the
expired rows, its source address's least recently used beyond `MAX_SESSIONS_PER_ADDRESS`
(one source, even with a valid account, cannot push everyone else out) and, past
`MAX_SESSIONS`, the least recently used.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from aiohttp import web
from aiohttp_session import SESSION_KEY, AbstractStorage, Session, SessionData
from sqlmodel import Session as StoreSession

from sslvpn.store import portal_logins
from sslvpn.store.models import PortalLogin
from web.security import CSRF_KEY, SESSION_COOKIE, Clock, client_address, new_csrf_token

SESSION_IDLE_SECONDS = 30 * 60
SESSION_ABSOLUTE_SECONDS = 12 * 3600
TOUCH_SECONDS = 60
MAX_SESSIONS = 10_000
MAX_SESSIONS_PER_ADDRESS = 100  # logins kept per source address: one source evicts only its own
SECOND_FACTOR_SECONDS = 5 * 60  # time from a good password to the code (or enrolment)
SECOND_FACTOR_KEY = "second_factor_of"  # user id of a session that still owes its code
_MAX_COOKIE = 64  # token_urlsafe(32) is 43 characters; anything longer is not ours
_ANONYMOUS = "anon."  # prefix of a visitor's id before login (never a store row)
_REPLACED: web.RequestKey[str | None] = web.RequestKey("sslvpn_replaced_session")

T = TypeVar("T")
# aiohttp-session's API is a plain string key on the request (aiohttp recommends typed keys);
# the advice is about key clashes, which its unique name avoids: keep the log clean of it.
warnings.filterwarnings("ignore", message="It is recommended to use web.RequestKey",
                        category=web.NotAppKeyWarning, module=r"(aiohttp_session|web\.sessions)$")


class StoreGate(Protocol):
    """How the storage reaches the store: `Portal.read`/`Portal.write` (503 when it is down)."""

    def read(self, work: Callable[[StoreSession], T]) -> Awaitable[T]: ...

    def write(self, work: Callable[[StoreSession], T]) -> Awaitable[T]: ...


def _digest(browser_id: str) -> str:
    return hashlib.sha256(browser_id.encode()).hexdigest()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class StoreSessions(AbstractStorage):
    """aiohttp-session storage: logged-in sessions are `PortalLogin` rows; a visitor who is
    not logged in holds only ``anon.<random>``, whose CSRF token is an HMAC under the fleet's
    `PortalKey`, so the login page writes nothing (it works while the store refuses writes)
    and any node checks its form."""

    def __init__(self, gate: StoreGate, clock: Clock, max_sessions: int = MAX_SESSIONS,
                 per_address: int = MAX_SESSIONS_PER_ADDRESS) -> None:
        super().__init__(cookie_name=SESSION_COOKIE, httponly=True, samesite="Strict")
        self._gate = gate
        self._clock = clock
        self._max = max_sessions
        self._per_address = per_address
        self._key: bytes | None = None

    async def load_session(self, request: web.Request) -> Session:
        """The browser's live session, or a new empty one (saved only once it holds data)."""
        if self._key is None:
            self._key = bytes.fromhex(await self._gate.read(portal_logins.portal_key))
        browser_id = self.load_cookie(request)
        if not browser_id or len(browser_id) > _MAX_COOKIE:
            return Session(None, data=None, new=True)
        if browser_id.startswith(_ANONYMOUS):
            return self._anonymous(browser_id, new=False)
        id_hash = _digest(browser_id)
        row = await self._gate.read(lambda s: portal_logins.find_login(s, id_hash=id_hash))
        now = self._clock()
        if row is None or self._expired(row, now):
            return Session(None, data=None, new=True)
        if now - row.last_seen.timestamp() >= TOUCH_SECONDS:
            await self._gate.write(
                lambda s: portal_logins.touch_login(s, id_hash=id_hash, at=_at(now)))
        data: SessionData = {"created": int(row.created_at.timestamp()),
                             "session": dict(row.data)}
        return Session(browser_id, data=data, new=False)

    def start(self, request: web.Request, user_id: int | None) -> Session:
        """A new session (new id and CSRF token) for this request, logged in as ``user_id``
        or anonymous; the browser's previous one ends when this one is saved (login, logout:
        no session fixation)."""
        old: Session | None = request.get(SESSION_KEY)
        if old is not None and old.identity is not None and not old.new:
            request[_REPLACED] = str(old.identity)
        if user_id is None:
            session = self._anonymous(_ANONYMOUS + secrets.token_urlsafe(32), new=True)
            session.changed()
        else:
            session = Session(None, data=None, new=True)
            session.update({CSRF_KEY: new_csrf_token(), "user_id": user_id, "flash": []})
        request[SESSION_KEY] = session
        return session

    def start_second_factor(self, request: web.Request, user_id: int) -> Session:
        """A new session past the password of ``user_id`` but not logged in as them (no
        ``user_id``): only the code and enrolment pages read it, for
        `SECOND_FACTOR_SECONDS`. A row, so any node can finish the sign-in."""
        session = self.start(request, user_id)
        del session["user_id"]
        session.update({SECOND_FACTOR_KEY: user_id, "second_factor_since": self._clock()})
        return session

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        """Write what changed; a new session gets its cookie (ending the one it replaces)."""
        replaced = request.get(_REPLACED)
        if replaced is not None and not replaced.startswith(_ANONYMOUS):
            replaces: str | None = _digest(replaced)
        else:
            replaces = None
        identity = None if session.identity is None else str(session.identity)
        if (identity is not None and identity.startswith(_ANONYMOUS)) or session.empty:
            if replaces is not None:
                await self._gate.write(lambda s: portal_logins.end_login(s, id_hash=replaces))
            if identity is not None and session.new:
                self._set_cookie(request, response, identity)
            elif session.empty:
                response.del_cookie(self.cookie_name, path="/")
            return  # an anonymous session keeps nothing but its id
        data = {key: session[key] for key in session}
        user_id = data.get("user_id")
        if identity is not None and not session.new:
            id_hash = _digest(identity)
            await self._gate.write(lambda s: portal_logins.save_login(
                s, id_hash=id_hash, user_id=user_id, data=data))
            return
        browser_id = secrets.token_urlsafe(32)
        session.set_new_identity(browser_id)
        address = client_address(request)
        await self._gate.write(lambda s: self._open(s, _digest(browser_id), user_id, data,
                                                    replaces, address))
        self._set_cookie(request, response, browser_id)

    def _set_cookie(self, request: web.Request, response: web.StreamResponse, value: str) -> None:
        """HttpOnly, SameSite=Strict, Secure whenever the portal is served over HTTPS."""
        response.set_cookie(self.cookie_name, value, httponly=True, samesite="Strict",
                            secure=request.secure, path="/")

    def _anonymous(self, browser_id: str, *, new: bool) -> Session:
        if self._key is None:
            raise RuntimeError("the portal key is read before any session is made")
        token = hmac.new(self._key, browser_id.encode(), hashlib.sha256).hexdigest()
        data: SessionData = {"created": int(self._clock()), "session": {CSRF_KEY: token}}
        return Session(browser_id, data=data, new=new)

    def _open(self, s: StoreSession, id_hash: str, user_id: int | None,
              data: dict[str, object], replaces: str | None, address: str) -> None:
        now = self._clock()
        portal_logins.end_stale_logins(s, idle_before=_at(now - SESSION_IDLE_SECONDS),
                                       created_before=_at(now - SESSION_ABSOLUTE_SECONDS),
                                       keep=self._max - 1)
        portal_logins.open_login(s, id_hash=id_hash, user_id=user_id, data=data, at=_at(now),
                                 replaces=replaces, source_address=address,
                                 per_address=self._per_address)

    def _expired(self, row: PortalLogin, now: float) -> bool:
        return (now - row.last_seen.timestamp() > SESSION_IDLE_SECONDS
                or now - row.created_at.timestamp() > SESSION_ABSOLUTE_SECONDS)

    async def drop_user(self, user_id: int) -> None:
        """Log a user out on every node (disabled, deleted or password reset)."""
        await self._gate.write(lambda s: portal_logins.end_user_logins(s, user_id=user_id))


def end_session(request: web.Request) -> None:
    """End the browser's session (its user was disabled): the row goes, the cookie too."""
    old: Session | None = request.get(SESSION_KEY)
    if old is not None and old.identity is not None:
        request[_REPLACED] = str(old.identity)
        old.invalidate()
