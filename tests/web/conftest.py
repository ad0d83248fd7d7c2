"""Portal fixtures: an initialised data folder with an admin and two users, a fake gateway,
the portal app on aiohttp's test server, and helpers to log in and pull CSRF tokens.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine

from client_profiles import lifecycle
from client_profiles.passwords import hash_password
from sslvpn.config import DataPaths, database_url
from sslvpn.runtime.control import ListenerStatus, SessionInfo, TrafficSample, TunnelStatus
from sslvpn.store import db, queries
from sslvpn.store.db import open_engine, upgrade
from web.app import create_app
from web.portal import PortalSettings

# Functional tests wait for the store as long as it takes: on a loaded test machine a healthy
# call can take seconds, and the outage tests pin the real budget (answers within 5 s).
PATIENT = 60.0
PASSWORDS = {"root": "admin-password-1", "alice": "alice-password-1", "bob": "bob-password-1"}
NEW_PASSWORD = "violet-harbour-lantern-9"  # one the password policy accepts
_HASHES = {name: hash_password(password) for name, password in PASSWORDS.items()}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class FakeGateway:
    """A GatewayControl double: sessions are a list the test fills in."""

    sessions: list[SessionInfo] = field(default_factory=list)
    kicked: list[str] = field(default_factory=list)
    bytes_in: int = 0
    listeners: ListenerStatus = field(default_factory=ListenerStatus)
    hits: list[tuple[str, bool, int]] = field(default_factory=list)  # access rules'

    def list_sessions(self) -> list[SessionInfo]:
        return list(self.sessions)

    def kick(self, session_id: str, reason: str = "kicked by admin") -> bool:
        before = len(self.sessions)
        self.sessions = [s for s in self.sessions if s.session_id != session_id]
        self.kicked.append(session_id)
        return len(self.sessions) < before

    def kick_certificate(self, serial: str, reason: str = "certificate revoked") -> int:
        ended = [s for s in self.sessions if s.certificate_serial == serial]
        for s in ended:
            self.kick(s.session_id, reason)
        return len(ended)

    def traffic(self) -> TrafficSample:
        self.bytes_in += 1000
        return TrafficSample(at=datetime.now(UTC), bytes_in=self.bytes_in, bytes_out=0)

    def tunnel_status(self) -> list[TunnelStatus]:
        return []

    def listener_status(self) -> ListenerStatus:
        return self.listeners

    def access_hits(self) -> list[tuple[str, bool, int]]:
        return self.hits

    def tunnel_action(self, name: str, action: str) -> str:
        raise ValueError("no IPsec service runs in this gateway")

    def add(self, session_id: str, user: str, serial: str, *,
            client: tuple[str | None, str | None, str | None] = ("2.6.14", "linux", None)
            ) -> None:
        """A live session; ``client`` is its version, platform and GUI (peer-info)."""
        now = datetime.now(UTC)
        self.sessions.append(
            SessionInfo(
                session_id=session_id,
                user=user,
                certificate_serial=serial,
                device="phone",
                real_address="198.18.0.9:50000",
                vpn_address="10.8.0.2",
                protocol="udp",
                connected_at=now - timedelta(minutes=3),
                last_activity=now,
                bytes_in=1234,
                bytes_out=5678,
                client_version=client[0],
                client_platform=client[1],
                client_gui=client[2],
            )
        )


@dataclass
class Clock:
    """A clock tests move by hand (throttling and token expiry)."""

    now: float = field(default_factory=lambda: datetime.now(UTC).timestamp())

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Site:
    paths: DataPaths
    engine: Engine


def make_site(root: Path, url: str | None = None) -> Site:
    """An initialised data folder with admin root and users alice and bob (the store in the
    folder's SQLite file unless ``url`` names another database)."""
    root.mkdir(mode=0o700, exist_ok=True)
    paths = DataPaths(root)
    engine = open_engine(database_url(root, url))
    upgrade(engine)
    lifecycle.initialise(paths, engine, public_addresses=["198.18.0.1"], proto="udp")
    with db.session(engine, write=True) as s:
        for name, hashed in _HASHES.items():
            role = "admin" if name == "root" else "user"
            queries.create_user(s, name=name, role=role, password_hash=hashed)
    return Site(paths, engine)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = make_site(tmp_path / "data")
    yield made
    made.engine.dispose()


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(site: Site, gateway: FakeGateway, clock: Clock) -> AsyncIterator[TestClient]:
    app = create_app(
        engine=site.engine,
        paths=site.paths,
        control=gateway,
        settings=PortalSettings(public_url="https://vpn.example.test", store_budget=PATIENT),
        clock=clock,
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


Browser = TestClient | ClientSession


@asynccontextmanager
async def second_browser(client: TestClient) -> AsyncIterator[ClientSession]:
    """Another browser (own cookie jar) on the same test server."""
    async with ClientSession(
        base_url=client.make_url("/"), cookie_jar=CookieJar(unsafe=True)
    ) as browser:
        yield browser


@asynccontextmanager
async def second_browser_at(url: str) -> AsyncIterator[ClientSession]:
    """A browser (own cookie jar) for a portal at ``url``."""
    async with ClientSession(base_url=url, cookie_jar=CookieJar(unsafe=True)) as browser:
        yield browser


async def csrf_from(client: Browser, path: str) -> str:
    """The CSRF token in the form on ``path``."""
    response = await client.get(path)
    found = CSRF.search(await response.text())
    assert found, f"no CSRF token on {path} ({response.status})"
    return found.group(1)


async def login(client: Browser, name: str, password: str | None = None) -> str:
    """Log in through the form; returns the new session's CSRF token."""
    token = await csrf_from(client, "/login")
    response = await client.post(
        "/login",
        data={"name": name, "password": password or PASSWORDS[name], "csrf_token": token},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    return await csrf_from(client, "/account/password")


def issue_for(site: Site, user: str, device: str = "phone") -> str:
    """Issue a client certificate straight through the lifecycle; returns its serial."""
    row = lifecycle.issue_client(
        site.engine, site.paths, user_name=user, device=device, actor="test"
    )
    return row.serial


def audit_actions(site: Site, *, actor: str | None = None) -> list[str]:
    with db.session(site.engine, write=False) as s:
        return [e.action for e in queries.list_audit(s, actor=actor, limit=1000)]
