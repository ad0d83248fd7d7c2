"""What the gateway asks the store (may this certificate connect, the leases) and what it tells
it (accounting).

``Policy`` is the narrow interface the gateway depends on (a fake in tests); ``StorePolicy``
answers it from the sslvpn store, so a revocation or a disabled user written by any process
(CLI, portal) is seen by the gateway's next check or sweep. Its questions are coroutines
answered through ``AsyncStore`` (a store thread, bounded in time): a locked SQLite or a hung
PostgreSQL costs the asking handshake a ``StoreUnavailable``, never the loop that carries
packets.

A handshake need not wait for that read: the policy keeps a snapshot of the certificates
recent reads admitted with nothing left to decide per handshake (no limit of live sessions,
which counts every node's sessions, and no second factor), re-read every few seconds
(`refresh_admissions`) and dropped at a kick or a sweep's refusal; while a certificate's
latest read is at most ``KNOWN_FRESH`` old and the store answers, `admitted_now` admits it at
once, so the PUSH_REPLY goes out without a store round trip, and the gateway still reads
(`authorize`) and ends the session if that read refuses. Anything else waits for the read,
as before: a refusal is always the store's answer.

The write-behind queue that hands ``record`` its batches, in its own worker thread, is
``sslvpn.runtime.records.RecordWriter``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

from sslvpn.net.access import AccessPolicy
from sslvpn.runtime.vpn_login import (
    GUESSES,
    NO_CREDENTIALS,
    WRONG_CODE,
    Credentials,
    VpnAccount,
    check_login,
)
from sslvpn.store import (
    StoreError,
    StoreUnavailable,
    access_queries,
    fleet_queries,
    gateway_queries,
    queries,
)
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.gateway_queries import LeaseStored as LeaseStored
from sslvpn.store.gateway_queries import Record as Record
from sslvpn.store.gateway_queries import SessionCounted as SessionCounted
from sslvpn.store.gateway_queries import SessionEnded as SessionEnded
from sslvpn.store.gateway_queries import SessionOpened as SessionOpened
from sslvpn.store.gateway_queries import Standing
from sslvpn.store.gateway_queries import TrafficCounted as TrafficCounted
from sslvpn.store.models import utcnow
from sslvpn.throttle import LoginThrottle

if TYPE_CHECKING:  # the type of what a store thread hands the work, never opened here
    from sqlmodel import Session

log = logging.getLogger(__name__)

T = TypeVar("T")
WRITE_ATTEMPTS = 3
STARTUP_TIMEOUT = 30.0  # seconds a start-up call may take (SQLite waits 10 s for a writer)
KNOWN_FRESH = 4.5  # seconds an admission read admits without a new one (two refreshes)
KNOWN_KEPT = 900.0  # seconds a certificate no handshake presented stays in the snapshot
KNOWN_MAX = 512  # certificates in the snapshot at most (the least recently presented go):
#   its refresh costs a store thread ~25 us a certificate every 2 s, in every worker


class Answer(NamedTuple):
    """A certificate's standing, the refusal (None: it may connect), with VPN two-factor on
    its owner's secrets, and whether its owner has a limit of live sessions."""

    standing: Standing | None
    refusal: str | None
    account: VpnAccount | None
    limited: bool = False


@dataclass(frozen=True)
class Authorization:
    """Who a certificate belongs to and, when it may not connect, why (``refusal``);
    ``auth_token`` is pushed to a client that proved its second factor (VPN two-factor)."""

    user: str
    device: str
    refusal: str | None = None
    auth_token: str | None = field(default=None, repr=False)


class Policy(Protocol):
    """The gateway's questions to the store, answered off the loop (a ``StoreError`` when
    the store cannot answer now), and its accounting (``record`` runs in the accounting
    worker thread, never on the loop)."""

    async def authorize(self, serial: str, credentials: Credentials) -> Authorization: ...

    def admitted_now(self, serial: str) -> Authorization | None: ...

    def forget(self, *, serials: Collection[str] = (), user: str | None = None) -> None: ...

    async def refresh_admissions(self) -> None: ...

    async def unauthorized(self, serials: Collection[str]) -> dict[str, str]: ...

    async def ended_elsewhere(self, session_ids: Collection[str]) -> dict[str, str]: ...

    async def stored_leases(self) -> dict[str, str]: ...

    async def access_policy(self, known: int | None) -> AccessPolicy | None: ...

    def record(self, records: Sequence[Record]) -> None: ...


def refusal_of(standing: Standing | None, now: datetime) -> str | None:
    if standing is None:
        return "certificate unknown"
    if standing.kind != "client":
        return "not a client certificate"
    if standing.status != "valid":
        return f"certificate {standing.status}"
    if standing.overlap_until is not None and standing.overlap_until <= now:
        return "certificate superseded"  # its renewal connected, or the overlap ended
    if standing.user_name is None:
        return "certificate has no user"
    if standing.user_disabled:
        return "user disabled"
    return None


def _two_factor(s: Session, gateway_name: str) -> bool:
    """Whether the gateway asks VPN clients for a second factor (no settings row: no)."""
    try:
        return queries.get_settings(s, name=gateway_name).vpn_two_factor
    except StoreError:
        return False


def _vpn_account(s: Session, user_name: str) -> VpnAccount | None:
    """The owner's secrets, for a gateway that asks VPN clients for a second factor."""
    user = queries.get_user(s, name=user_name)
    if user.id is None:
        return None
    return VpnAccount(user.id, user.name, user.password_hash, user.totp_secret)


def _admission_answers(s: Session, *, serials: Sequence[str], gateway_name: str,
                       now: datetime) -> dict[str, Answer]:
    """Each certificate's standing, refusal and VPN two-factor account, in one
    transaction of a few queries whatever the number of ``serials`` (a burst of
    handshakes), plus one per owner to check with VPN two-factor on."""
    standings = gateway_queries.standings(s, serials=serials)
    refusals = {serial: refusal_of(standings.get(serial), now) for serial in serials}
    good = [serial for serial, refusal in refusals.items() if refusal is None]
    limits = gateway_queries.session_limits(s, serials=good, gateway_name=gateway_name)
    for serial, limit in gateway_queries.session_limits_reached(s, limits=limits).items():
        refusals[serial] = f"too many sessions (at most {limit})"
    two_factor = bool(good) and _two_factor(s, gateway_name)
    answers: dict[str, Answer] = {}
    for serial, refusal in refusals.items():
        standing = standings.get(serial)
        account = None
        if two_factor and refusal is None and standing is not None \
                and standing.user_name is not None:
            account = _vpn_account(s, standing.user_name)
        answers[serial] = Answer(standing, refusal, account, serial in limits)
    return answers


@dataclass
class _Known:
    """A certificate the last read admitted with nothing left to decide at connect time."""

    auth: Authorization
    read_at: float  # monotonic time the read that says so began
    seen_at: float  # monotonic time a handshake last presented it


class StorePolicy:
    """``Policy`` over the sslvpn store for the gateway named ``gateway_name``, running as
    fleet node ``node`` (None: the single implicit node)."""

    def __init__(self, store: AsyncStore, *, gateway_name: str = "default",
                 node: str | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._monotonic = monotonic  # the age of the snapshot's reads
        self._gateway_name = gateway_name
        self._node = node
        self._clock = clock  # for TOTP steps, session tokens and the throttle
        # wrong VPN passwords and codes, per (user, source address) and per source address,
        # as the portal counts its logins (in this process)
        self._throttle = LoginThrottle(clock)
        self._asked: list[tuple[str, asyncio.Future[Answer]]] = []  # for the next read
        self._reader: asyncio.Task[None] | None = None  # reading the asked serials
        # the admission snapshot: serial -> what its latest read said, least recently
        # presented first; a read begun before the latest `forget` adds nothing to it
        self._known: dict[str, _Known] = {}
        self._forgot_at = float("-inf")

    async def authorize(self, serial: str,
                        credentials: Credentials = NO_CREDENTIALS) -> Authorization:
        """The certificate joined with its owner, and when it is in good standing, the
        owner's limit of live sessions and, with VPN two-factor on, the client's password
        and code or session token (`vpn_login`).

        The store part is read together with the other handshakes asking at the same time
        (`_standing`): a burst is one read of many serials, not one call per handshake."""
        standing, refusal, account, _ = await self._standing(serial.lower())
        token = None
        if account is not None:
            refusal, token = await self._second_factor(account, credentials, serial)
        return Authorization(
            user=(standing.user_name or "") if standing else "",
            device=standing.device if standing else "",
            refusal=refusal,
            auth_token=token,
        )

    async def _standing(self, serial: str) -> Answer:
        """This serial's answer from the next read of every serial asked so far.

        One read is under way at a time; the serials asked meanwhile wait for the next,
        each for at most the store's timeout from its asking, so a hung store still tells
        every handshake to retry within that time (`StoreUnavailable`)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        self._asked.append((serial, answer))
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read_asked(), name="admission-reads")
        try:
            async with asyncio.timeout(self._store.timeout):
                return await answer  # a timeout cancels it: the reader skips it
        except TimeoutError:
            raise StoreUnavailable("the store did not answer in time; try again later") \
                from None

    async def _read_asked(self) -> None:
        """Read the serials asked, batch after batch, until none waits."""
        while self._asked:
            asked, self._asked = self._asked, []
            waiting = [(serial, answer) for serial, answer in asked if not answer.done()]
            if not waiting:
                continue
            try:
                answers = await self._read_answers({serial for serial, _ in waiting},
                                                   presented=True)
            except Exception as exc:  # StoreUnavailable mostly; a bug fails them closed too
                for _, answer in waiting:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for serial, answer in waiting:
                if not answer.done():
                    answer.set_result(answers[serial])

    async def _read_answers(self, serials: Collection[str], *,
                            presented: bool) -> dict[str, Answer]:
        """The admission answers of ``serials`` in one read, remembered in the snapshot
        (``presented``: by handshakes, not by a refresh)."""
        began = self._monotonic()
        answers = await self._store.read(partial(
            _admission_answers, serials=sorted(serials), gateway_name=self._gateway_name,
            now=utcnow()))
        for serial, answer in answers.items():
            self._remember(serial, answer, began, presented)
        return answers

    def _remember(self, serial: str, answer: Answer, began: float, presented: bool) -> None:
        standing = answer.standing
        if standing is None or answer.refusal is not None or answer.account is not None \
                or answer.limited:
            self._known.pop(serial, None)  # refused, or decided per handshake: always read
            return
        if began < self._forgot_at:
            return  # begun before a kick or a refusal the read may not show yet
        auth = Authorization(user=standing.user_name or "", device=standing.device)
        known = self._known.get(serial)
        if known is None:
            if presented:
                self._known[serial] = _Known(auth, began, began)
                if len(self._known) > KNOWN_MAX:
                    del self._known[next(iter(self._known))]
        elif began >= known.read_at:
            known.auth, known.read_at = auth, began
            if presented:
                known.seen_at = began

    def admitted_now(self, serial: str) -> Authorization | None:
        """The admission of ``serial`` from the snapshot, without waiting for the store: when
        a read at most ``KNOWN_FRESH`` old admitted it and left nothing to decide per
        handshake (no session limit, no second factor), and the store is answering. None:
        ask `authorize`, which the gateway does anyway to confirm a snapshot's admission."""
        serial, now = serial.lower(), self._monotonic()
        known = self._known.get(serial)
        if known is None or not self._store.available or now - known.read_at > KNOWN_FRESH:
            return None
        del self._known[serial]  # presented again: the most recent now
        self._known[serial] = known
        known.seen_at = now
        return known.auth

    def forget(self, *, serials: Collection[str] = (), user: str | None = None) -> None:
        """Drop ``serials`` and ``user``'s certificates from the snapshot (a kick, a refusal):
        their next handshake waits for a read, and reads begun earlier do not put them back."""
        self._forgot_at = self._monotonic()
        for serial in serials:
            self._known.pop(serial.lower(), None)
        if user is not None:
            for serial in [s for s, k in self._known.items() if k.auth.user == user]:
                del self._known[serial]

    async def refresh_admissions(self) -> None:
        """Read the snapshot's certificates again, in one read, so that it follows the store
        (a revocation, a disabled or deleted user, a new session limit or second factor take
        a certificate out of it); those no handshake presented for ``KNOWN_KEPT`` go."""
        now = self._monotonic()
        for serial in [s for s, k in self._known.items() if now - k.seen_at > KNOWN_KEPT]:
            del self._known[serial]
        if self._known:
            await self._read_answers(list(self._known), presented=False)

    async def _second_factor(self, account: VpnAccount, credentials: Credentials,
                             serial: str) -> tuple[str | None, str | None]:
        """The refusal or the token to push: the argon2 verify in a thread, then the code's
        step claimed once in the store (a replay, here or on the portal, is refused).
        Wrong passwords and codes are throttled as the portal's logins are."""
        wait = self._throttle.wait(account.name, credentials.source)
        if wait > 0:
            return f"too many wrong passwords or codes: try again in {math.ceil(wait)} s", None
        check = await asyncio.to_thread(check_login, account, credentials, serial=serial,
                                        now=self._clock())
        refusal = check.refusal
        if refusal is None and check.step is not None:
            step, user_id = check.step, account.user_id
            if not await self._store.write(
                    lambda s: queries.accept_totp_step(s, user_id=user_id, step=step)):
                refusal = WRONG_CODE
        if refusal in GUESSES:
            self._throttle.failed(account.name, credentials.source)
        elif refusal is None:
            self._throttle.succeeded(account.name, credentials.source)
        return refusal, None if refusal else check.token

    async def unauthorized(self, serials: Collection[str]) -> dict[str, str]:
        if not serials:
            return {}
        now = utcnow()
        refused = await self._store.read(
            lambda s: gateway_queries.not_in_good_standing(s, serials=serials, now=now))
        if refused:
            self.forget(serials=refused)
        result = {}
        for serial in serials:
            lowered = serial.lower()
            if lowered in refused:
                result[serial] = refusal_of(refused[lowered], now) or "certificate unknown"
        return result

    async def ended_elsewhere(self, session_ids: Collection[str]) -> dict[str, str]:
        """Live sessions of this node the fleet wants ended (a kick from another process,
        or a survivor that took this node for down), with the reason."""
        if not session_ids:
            return {}
        return await self._store.read(lambda s: fleet_queries.ended_elsewhere(
            s, node=self._node, session_ids=session_ids))

    async def stored_leases(self) -> dict[str, str]:
        """Read once at start, before any client is served."""
        return await self._store.read(gateway_queries.lease_map, timeout=STARTUP_TIMEOUT)

    async def access_policy(self, known: int | None) -> AccessPolicy | None:
        """The access policy when its revision is not ``known`` (None: always), else None:
        a poll costs one read of one row."""

        def ask(s: Session) -> AccessPolicy | None:
            if known is not None and access_queries.revision(s) == known:
                return None
            return access_queries.load_policy(s)

        return await self._store.read(ask, timeout=STARTUP_TIMEOUT if known is None else None)

    async def close_stale_records(self, within: IPv4Network | None = None) -> int:
        """Close records a crashed run of this gateway left open (at start); a worker
        process closes only those of addresses ``within`` its slice."""
        return await self._store.write(lambda s: queries.close_stale_session_records(
            s, gateway_name=self._gateway_name, node=self._node, at=utcnow(), within=within
        ), timeout=STARTUP_TIMEOUT)

    def record(self, records: Sequence[Record]) -> None:
        """Write a batch of accounting records in one transaction (one fsync), in the
        accounting worker thread."""
        if records:
            self._write(lambda s: gateway_queries.write_records(
                s, records=records, gateway_name=self._gateway_name, now=utcnow(),
                node=self._node))

    def _write(self, work: Callable[[Session], T]) -> T:
        """One write transaction in this (worker) thread, retried when SQLite still says
        "locked" (another writer held the lock for longer than the busy timeout)."""
        for _ in range(WRITE_ATTEMPTS - 1):
            try:
                return self._store.write_here(work)
            except StoreError as exc:
                if "locked" not in str(exc):
                    raise
        return self._store.write_here(work)
