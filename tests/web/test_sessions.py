"""Portal sessions live in the store: a login made on one portal (node) is accepted by another
and by a restarted one; logout, a disabled user and expiry end it on all of them; the store
holds only a hash of the browser's id and drops idle rows as new ones arrive."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import select

from sslvpn.store import db
from sslvpn.store.models import PortalLogin
from tests.web.conftest import (
    PASSWORDS,
    PATIENT,
    Clock,
    FakeGateway,
    Site,
    csrf_from,
    login,
    second_browser,
)
from web.app import create_app
from web.portal import PORTAL, PortalSettings
from web.security import SESSION_COOKIE
from web.sessions import SESSION_ABSOLUTE_SECONDS, SESSION_IDLE_SECONDS

Portal = Callable[[], AbstractAsyncContextManager[TestClient]]


def portal_on(site: Site, clock: Clock) -> Portal:
    """Another portal process on the same store (a second node, or this one restarted)."""

    @asynccontextmanager
    async def running() -> AsyncIterator[TestClient]:
        app = create_app(engine=site.engine, paths=site.paths, control=FakeGateway(),
                         settings=PortalSettings(store_budget=PATIENT), clock=clock)
        async with TestClient(TestServer(app)) as client:
            yield client

    return running


def cookie_of(client: TestClient) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value


async def landing(client: TestClient | ClientSession, cookie: str) -> str:
    """Where a browser holding ``cookie`` lands when it opens its devices page."""
    response = await client.get("/devices", cookies={SESSION_COOKIE: cookie},
                                allow_redirects=False)
    return "login" if response.status == 303 else str(response.status)


def logins(site: Site) -> list[PortalLogin]:
    with db.session(site.engine, write=False) as s:
        return list(s.exec(select(PortalLogin)).all())


async def test_a_login_on_one_portal_is_accepted_by_another_and_after_a_restart(
    client: TestClient, site: Site, clock: Clock
) -> None:
    await login(client, "alice")
    cookie = cookie_of(client)
    other = portal_on(site, clock)
    async with other() as node_b:
        assert await landing(node_b, cookie) == "200"
    await client.close()  # node a's portal stops; a new one starts on the same store
    async with other() as restarted:
        assert await landing(restarted, cookie) == "200"
    [row] = [r for r in logins(site) if r.user_id is not None]
    assert row.id_hash == hashlib.sha256(cookie.encode()).hexdigest() != cookie


async def test_logout_on_one_portal_makes_the_cookie_worthless_on_every_portal(
    client: TestClient, site: Site, clock: Clock
) -> None:
    await login(client, "alice")
    stolen = cookie_of(client)
    async with portal_on(site, clock)() as node_b:
        assert await landing(node_b, stolen) == "200"
        token = await csrf_from(client, "/devices")
        response = await client.post("/logout", data={"csrf_token": token},
                                     allow_redirects=False)
        assert response.status == 303 and cookie_of(client) != stolen
        assert await landing(node_b, stolen) == "login"
    assert await landing(client, stolen) == "login"
    assert all(r.user_id is None for r in logins(site))


async def test_disabling_a_user_on_one_portal_logs_them_out_on_the_other(
    client: TestClient, site: Site, clock: Clock
) -> None:
    await login(client, "alice")
    alice = cookie_of(client)
    async with portal_on(site, clock)() as node_b, second_browser(node_b) as admin:
        token = await login(admin, "root")
        response = await admin.post("/admin/users/alice/disable", data={"csrf_token": token},
                                    allow_redirects=False)
        assert response.status == 303
        assert await landing(client, alice) == "login"


async def test_sessions_expire_when_idle_and_after_the_absolute_limit(
    client: TestClient, clock: Clock
) -> None:
    await login(client, "alice")
    cookie = cookie_of(client)
    clock.now += SESSION_IDLE_SECONDS - 60
    assert await landing(client, cookie) == "200"  # used again: no longer idle
    clock.now += SESSION_IDLE_SECONDS - 60
    assert await landing(client, cookie) == "200"
    clock.now += SESSION_IDLE_SECONDS + 1
    assert await landing(client, cookie) == "login"
    await login(client, "alice")
    cookie = cookie_of(client)
    used_for, step = 0.0, SESSION_IDLE_SECONDS / 2
    while used_for + step <= SESSION_ABSOLUTE_SECONDS:
        clock.now += step
        used_for += step
        assert await landing(client, cookie) == "200"
    clock.now += 60
    assert await landing(client, cookie) == "login"  # busy all along, but open too long


async def test_visitors_store_nothing_and_idle_logins_make_room_for_new_ones(
    client: TestClient, site: Site, clock: Clock
) -> None:
    for _ in range(20):  # visitors who open the login page and leave
        async with second_browser(client) as visitor:
            await csrf_from(visitor, "/login")
    assert logins(site) == []
    for _ in range(5):  # logins left to go idle
        async with second_browser(client) as browser:
            await login(browser, "bob")
    await login(client, "alice")
    cookie = cookie_of(client)
    assert len(logins(site)) == 6
    clock.now += SESSION_IDLE_SECONDS - 60
    assert await landing(client, cookie) == "200"
    clock.now += 120  # bob's have been idle past the limit
    async with second_browser(client) as browser:
        await login(browser, "bob")
    assert len(logins(site)) == 2
    assert await landing(client, cookie) == "200"


async def test_a_login_form_token_only_works_with_its_own_visitor_id(
    client: TestClient, site: Site, clock: Clock
) -> None:
    """Before login nothing is stored: the form's token is bound to the visitor's random id
    under the fleet's key, so another visitor's token, a made-up id or a made-up token is
    refused, while the form itself works on any node."""
    token = await csrf_from(client, "/login")
    visitor = cookie_of(client)
    assert visitor.startswith("anon.") and logins(site) == []
    form = {"name": "alice", "password": PASSWORDS["alice"]}
    async with second_browser(client) as other:
        other_token = await csrf_from(other, "/login")
        for cookie, submitted in ((visitor, other_token), ("anon.chosen-by-eve", token),
                                  (visitor, "forged")):
            refused = await other.post("/login", data={**form, "csrf_token": submitted},
                                       cookies={SESSION_COOKIE: cookie}, allow_redirects=False)
            assert refused.status == 403, (cookie, submitted)
    async with portal_on(site, clock)() as node_b:
        response = await node_b.post("/login", data={**form, "csrf_token": token},
                                     cookies={SESSION_COOKIE: visitor}, allow_redirects=False)
        assert response.status == 303
        assert response.cookies[SESSION_COOKIE].value not in (visitor, "")


async def test_one_source_keeps_only_its_share_of_the_stored_logins(
    client: TestClient, site: Site, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logging in again and again from one address (with a valid account) ends that
    address's oldest logins, never beyond its share."""
    portal = client.app[PORTAL]
    monkeypatch.setattr(portal.sessions, "_per_address", 3)
    await login(client, "alice")
    first = cookie_of(client)
    for _ in range(5):
        clock.now += 1
        async with second_browser(client) as browser:
            await login(browser, "bob")
    rows = logins(site)
    assert len(rows) == 3 and {row.source_address for row in rows} == {"127.0.0.1"}
    assert await landing(client, first) == "login"  # the oldest of this address went
