"""The portal's shared state (`Portal`), its settings, and the app key handlers find it by."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web
from sqlalchemy import Engine

from sslvpn.config import DataPaths
from sslvpn.runtime.control import GatewayControl, SessionInfo
from web.security import Clock, LoginThrottle, SessionStore
from web.traffic import TrafficHistory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortalSettings:
    """How this portal presents itself; None values fall back to the gateway settings."""

    public_url: str | None = None  # e.g. "https://vpn.example.com"; default: the request's host
    import_token_ttl: timedelta | None = None
    gateway_name: str = "default"
    refresh_seconds: float = 5.0  # gateway sampling and live page refresh period
    ca_passphrase: str | None = field(default=None, repr=False)


@dataclass
class Portal:
    """Everything a handler may need, created once per application."""

    engine: Engine
    paths: DataPaths
    control: GatewayControl | None
    settings: PortalSettings
    sessions: SessionStore
    throttle: LoginThrottle
    traffic: TrafficHistory
    clock: Clock

    def live_sessions(self) -> list[SessionInfo]:
        """The gateway's sessions, or none when no gateway is attached or it fails to answer."""
        if self.control is None:
            return []
        try:
            return self.control.list_sessions()
        except Exception as exc:  # a dead gateway must not take the portal down with it
            log.warning("gateway did not list its sessions: %s", exc)
            return []

    def kick_certificate(self, serial: str, reason: str) -> int:
        """End every live session of a certificate; how many ended."""
        if self.control is None:
            return 0
        try:
            return self.control.kick_certificate(serial, reason)
        except Exception as exc:
            log.warning("gateway did not kick certificate sessions: %s", exc)
            return 0

    def sample_traffic(self) -> None:
        if self.control is None:
            return
        try:
            self.traffic.add(self.control.traffic())
        except Exception as exc:
            log.debug("gateway did not report traffic: %s", exc)


PORTAL = web.AppKey("portal", Portal)
