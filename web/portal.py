"""The portal's shared state (`Portal`), its settings, and the app key handlers find it by.

`Portal` is also the only way a handler reaches the store and the gateway, and both ways
keep the portal's event loop free: store work runs in the portal's `AsyncStore` threads,
bounded by what is left of the request's budget (`StoreDown` when the store does not answer
in it), and `GatewayControl` calls run in a thread too (the control socket client blocks;
an in-process gateway answers on its own loop), bounded by `CONTROL_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from aiohttp import web
from sqlalchemy import Engine
from sqlmodel import Session

from sslvpn.config import DataPaths
from sslvpn.runtime import fleet_sessions
from sslvpn.runtime.control import GatewayControl, ListenerStatus, SessionInfo
from sslvpn.store import StoreUnavailable, fleet_queries
from sslvpn.store.async_store import AsyncStore
from web.outage import STORE_BUDGET, StoreDown, store_wait
from web.security import Clock, LoginThrottle
from web.sessions import StoreSessions
from web.traffic import TrafficHistory

log = logging.getLogger(__name__)

T = TypeVar("T")
CONTROL_TIMEOUT = 3.0  # seconds the portal waits for the gateway to answer one call


@dataclass(frozen=True)
class PortalSettings:
    """How this portal presents itself; None values fall back to the gateway settings."""

    public_url: str | None = None  # e.g. "https://vpn.example.com"; default: the request's host
    import_token_ttl: timedelta | None = None
    gateway_name: str = "default"
    refresh_seconds: float = 5.0  # gateway sampling and live page refresh period
    store_budget: float = STORE_BUDGET  # seconds a request may wait for the store in all
    ca_passphrase: str | None = field(default=None, repr=False)


class NoGateway(LookupError):
    """This portal has no gateway to ask (a portal-only process with no control socket)."""


@dataclass
class Portal:
    """Everything a handler may need, created once per application."""

    store: AsyncStore
    paths: DataPaths
    control: GatewayControl | None
    settings: PortalSettings
    throttle: LoginThrottle
    traffic: TrafficHistory
    clock: Clock
    sessions: StoreSessions = field(init=False)  # portal logins, in the store

    def __post_init__(self) -> None:
        self.sessions = StoreSessions(self, self.clock)

    async def read(self, work: Callable[[Session], T]) -> T:
        """``work`` in one read-only transaction, off the portal's loop."""
        try:
            return await self.store.read(work, timeout=store_wait())
        except StoreUnavailable:
            raise StoreDown from None

    async def write(self, work: Callable[[Session], T]) -> T:
        """``work`` in one write transaction, off the portal's loop."""
        try:
            return await self.store.write(work, timeout=store_wait())
        except StoreUnavailable:
            raise StoreDown from None

    async def call(self, work: Callable[[Engine], T], *, writes: bool = True) -> T:
        """Store work that opens its own sessions (accounts, certificate lifecycle)."""
        try:
            return await self.store.call(work, timeout=store_wait(), writes=writes)
        except StoreUnavailable:
            raise StoreDown from None

    async def ask_gateway(self, question: Callable[[GatewayControl], T]) -> T:
        """One GatewayControl call in a thread; `NoGateway`, `TimeoutError` or its error."""
        control = self.control
        if control is None:
            raise NoGateway("no gateway is attached to this portal")
        # not asyncio.wait_for: on 3.11 it can swallow a cancellation that arrives as the call
        # finishes, and the traffic sampler, cancelled at shutdown, would never end
        async with asyncio.timeout(CONTROL_TIMEOUT):
            return await asyncio.to_thread(question, control)

    async def live_sessions(self) -> list[SessionInfo]:
        """Every node's live sessions in a fleet (from the store, with what a gateway on this
        host knows of its own), else the gateway's; none when neither answers."""
        try:
            fleet = await self.read(fleet_sessions.fleet_sessions)
        except StoreDown:  # this host's own gateway can still answer for itself
            fleet = None
        local = await self._local_sessions()
        return local if fleet is None else fleet_sessions.with_local(fleet, local)

    async def _local_sessions(self) -> list[SessionInfo]:
        if self.control is None:
            return []
        try:
            return await self.ask_gateway(lambda c: c.list_sessions())
        except Exception as exc:  # a dead gateway must not take the portal down with it
            log.warning("gateway did not list its sessions: %r", exc)
            return []

    async def listener_status(self) -> ListenerStatus | None:
        """What this host's gateway's OpenVPN listeners hold and refused (None: no gateway
        attached or it did not answer)."""
        if self.control is None:
            return None
        try:
            return await self.ask_gateway(lambda c: c.listener_status())
        except Exception as exc:  # a dead gateway must not take the portal down with it
            log.warning("gateway did not report its listeners: %r", exc)
            return None

    async def access_hits(self) -> dict[tuple[str, bool], int] | None:
        """This host's gateway's packets per access rule and action (None: no gateway
        attached or it did not answer)."""
        if self.control is None:
            return None
        try:
            hits = await self.ask_gateway(lambda c: c.access_hits())
        except Exception as exc:  # a dead gateway must not take the portal down with it
            log.warning("gateway did not report its access rule hits: %r", exc)
            return None
        return {(rule, allow): packets for rule, allow, packets in hits}

    async def kick(self, session_id: str, reason: str) -> bool:
        """End one live session, on whichever node holds it; False when it had ended or
        nobody could be asked."""
        if await self._in_fleet():
            return bool(await self.write(lambda s: fleet_queries.request_end(
                s, session_id=session_id, reason=reason)))
        try:
            return await self.ask_gateway(lambda c: c.kick(session_id, reason))
        except Exception as exc:
            log.warning("gateway did not kick a session: %r", exc)
            return False

    async def kick_certificate(self, serial: str, reason: str) -> int:
        """End every live session of a certificate, on every node; how many were ended (in a
        fleet: asked to end)."""
        if await self._in_fleet():
            return len(await self.write(lambda s: fleet_queries.request_end(
                s, certificate_serial=serial, reason=reason)))
        if self.control is None:
            return 0
        try:
            return await self.ask_gateway(lambda c: c.kick_certificate(serial, reason))
        except Exception as exc:
            log.warning("gateway did not kick certificate sessions: %r", exc)
            return 0

    async def _in_fleet(self) -> bool:
        """Whether kicks go through the store (it has nodes); False when it cannot answer,
        so this host's own gateway is still asked."""
        try:
            return await self.read(fleet_sessions.in_fleet)
        except StoreDown:
            return False

    async def sample_traffic(self) -> None:
        if self.control is None:
            return
        try:
            self.traffic.add(await self.ask_gateway(lambda c: c.traffic()))
        except Exception as exc:
            log.debug("gateway did not report traffic: %r", exc)


PORTAL = web.AppKey("portal", Portal)
