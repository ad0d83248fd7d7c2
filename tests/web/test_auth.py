"""Login, throttling, session cookies, CSRF and the security headers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiohttp import ClientSession, DummyCookieJar
from aiohttp.test_utils import TestClient
from sqlmodel import select

from client_profiles import accounts
from sslvpn.store import db, queries
from sslvpn.store.models import PortalLogin
from tests.web.conftest import (
    NEW_PASSWORD,
    PASSWORDS,
    Clock,
    Site,
    audit_actions,
    csrf_from,
    login,
    second_browser,
)
from web.portal import PORTAL
from web.security import SESSION_COOKIE, THROTTLE_ACCOUNT_FAILURES, THROTTLE_WINDOW_SECONDS


async def try_login(client: TestClient, name: str, password: str) -> int:
    token = await csrf_from(client, "/login")
    response = await client.post(
        "/login",
        data={"name": name, "password": password, "csrf_token": token},
        allow_redirects=False,
    )
    return response.status


async def test_login_rotates_the_session_and_sets_strict_cookie(client: TestClient) -> None:
    await client.get("/login")
    before = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    token = await csrf_from(client, "/login")
    response = await client.post(
        "/login",
        data={"name": "alice", "password": PASSWORDS["alice"], "csrf_token": token},
        allow_redirects=False,
    )
    assert response.status == 303 and response.headers["Location"] == "/devices"
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie.value != before
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert not cookie["secure"]  # plain HTTP test server; Secure is set under HTTPS


async def test_admin_lands_on_the_dashboard(client: TestClient) -> None:
    token = await csrf_from(client, "/login")
    response = await client.post(
        "/login",
        data={"name": "root", "password": PASSWORDS["root"], "csrf_token": token},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/admin"


async def test_logins_are_audited_success_and_failure(client: TestClient, site: Site) -> None:
    assert await try_login(client, "alice", "wrong") == 401
    assert await try_login(client, "nobody", "wrong") == 401
    await login(client, "alice")
    assert "login.failed" in audit_actions(site, actor="alice")
    assert "login.failed" in audit_actions(site, actor="nobody")
    assert "login" in audit_actions(site, actor="alice")


async def test_wrong_password_shows_a_message(client: TestClient) -> None:
    token = await csrf_from(client, "/login")
    response = await client.post(
        "/login", data={"name": "alice", "password": "nope", "csrf_token": token}
    )
    assert response.status == 401
    assert "Wrong name or password." in await response.text()


async def test_account_is_throttled_then_released(client: TestClient, clock: Clock) -> None:
    for _ in range(THROTTLE_ACCOUNT_FAILURES):
        assert await try_login(client, "alice", "wrong") == 401
    # even the right password is refused while throttled
    assert await try_login(client, "alice", PASSWORDS["alice"]) == 429
    assert await try_login(client, "bob", PASSWORDS["bob"]) == 303  # other accounts unaffected
    clock.now += THROTTLE_WINDOW_SECONDS + 1
    assert await try_login(client, "alice", PASSWORDS["alice"]) == 303


async def test_the_lock_time_shown_is_the_real_one(client: TestClient, clock: Clock) -> None:
    for _ in range(THROTTLE_ACCOUNT_FAILURES):
        assert await try_login(client, "alice", "wrong") == 401
    clock.now += 10 * 60
    token = await csrf_from(client, "/login")
    page = await client.post("/login", data={"name": "alice", "password": PASSWORDS["alice"],
                                             "csrf_token": token})
    assert page.status == 429 and "Try again in 5 minutes." in await page.text()


async def test_an_admin_unlocks_a_throttled_account(
    client: TestClient, clock: Clock, site: Site
) -> None:
    """`sslvpn user unlock` (another process, maybe another host) lets the owner in now."""
    for _ in range(THROTTLE_ACCOUNT_FAILURES):
        assert await try_login(client, "alice", "wrong") == 401
    assert await try_login(client, "alice", PASSWORDS["alice"]) == 429
    accounts.unlock(site.engine, name="alice", actor="cli",
                    now=datetime.fromtimestamp(clock.now + 1, UTC))
    clock.now += 2
    assert await try_login(client, "alice", PASSWORDS["alice"]) == 303


async def test_source_address_is_throttled_across_accounts(client: TestClient) -> None:
    for i in range(20):
        assert await try_login(client, f"user{i}", "wrong") == 401
    assert await try_login(client, "alice", PASSWORDS["alice"]) == 429


async def test_disabled_user_cannot_log_in_and_is_logged_out(
    client: TestClient, site: Site
) -> None:
    await login(client, "alice")
    async with second_browser(client) as admin:
        csrf = await login(admin, "root")
        response = await admin.post(
            "/admin/users/alice/disable", data={"csrf_token": csrf}, allow_redirects=False
        )
        assert response.status == 303
    response = await client.get("/devices", allow_redirects=False)
    assert response.status == 303  # the live session is gone
    assert await try_login(client, "alice", PASSWORDS["alice"]) == 401


async def test_logout_ends_the_session(client: TestClient) -> None:
    csrf = await login(client, "alice")
    response = await client.post("/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert response.status == 303
    assert (await client.get("/devices", allow_redirects=False)).status == 303


@pytest.mark.parametrize(
    "path",
    [
        "/devices",
        "/admin/users",
        "/admin/certificates",
        "/admin/settings",
        "/logout",
        "/account/password",
        "/admin/api-tokens",
    ],
)
async def test_forms_without_the_right_csrf_token_are_refused(
    client: TestClient, site: Site, path: str
) -> None:
    await login(client, "root")
    missing = await client.post(path, data={"device": "x", "name": "eve"}, allow_redirects=False)
    wrong = await client.post(
        path, data={"csrf_token": "forged", "name": "eve"}, allow_redirects=False
    )
    assert missing.status == 403 and wrong.status == 403
    assert "eve" not in "".join(audit_actions(site))


async def test_login_form_needs_csrf_too(client: TestClient) -> None:
    response = await client.post(
        "/login", data={"name": "alice", "password": PASSWORDS["alice"]}, allow_redirects=False
    )
    assert response.status == 403


async def test_security_headers_on_pages_and_errors(client: TestClient) -> None:
    for path in ("/login", "/no-such-page", "/admin"):
        response = await client.get(path, allow_redirects=False)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Server"] == "sslvpn"  # no Python or aiohttp version


async def test_change_own_password(client: TestClient) -> None:
    csrf = await login(client, "alice")
    bad = await client.post(
        "/account/password",
        data={"csrf_token": csrf, "password": "wrong", "new_password": "x", "confirm": "y"},
    )
    assert bad.status == 400
    text = await bad.text()
    assert "current password is wrong" in text and "at least 12" in text
    common = await client.post(
        "/account/password",
        data={"csrf_token": csrf, "password": PASSWORDS["alice"],
              "new_password": "password1234", "confirm": "password1234"},
    )
    assert common.status == 400
    assert "common or guessable" in await common.text()
    good = await client.post(
        "/account/password",
        data={
            "csrf_token": csrf,
            "password": PASSWORDS["alice"],
            "new_password": NEW_PASSWORD,
            "confirm": NEW_PASSWORD,
        },
        allow_redirects=False,
    )
    assert good.status == 303
    assert await try_login(client, "alice", NEW_PASSWORD) == 303


async def test_changing_a_password_ends_the_users_other_portal_sessions(
    client: TestClient,
) -> None:
    """A password changed because it leaked must throw out whoever used it."""
    csrf = await login(client, "alice")
    async with second_browser(client) as elsewhere:
        await login(elsewhere, "alice")
        assert (await elsewhere.get("/devices", allow_redirects=False)).status == 200
        changed = await client.post("/account/password", allow_redirects=False, data={
            "csrf_token": csrf, "password": PASSWORDS["alice"],
            "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
        assert changed.status == 303
        gone = await elsewhere.get("/devices", allow_redirects=False)
        assert gone.status == 303 and gone.headers["Location"].startswith("/login")
    assert (await client.get("/devices", allow_redirects=False)).status == 200  # this one stays


async def test_cookieless_page_views_store_nothing_and_evict_no_one(
    client: TestClient, site: Site
) -> None:
    """10,050 visitors without a cookie (more than the 10,000 logins kept) add no row, so
    they cannot push a logged-in user's session out."""
    await login(client, "alice")
    before = _logins(site)
    async with ClientSession(base_url=client.make_url("/"),
                             cookie_jar=DummyCookieJar()) as anonymous:

        async def visit() -> int:
            async with anonymous.get("/login") as response:
                await response.read()
                return response.status

        for _ in range(201):
            assert set(await asyncio.gather(*(visit() for _ in range(50)))) == {200}
    assert _logins(site) == before and len(before) == 1
    page = await client.get("/devices", allow_redirects=False)
    assert page.status == 200  # alice is still logged in


async def test_a_throttled_address_is_audited_once_and_long_names_not_at_all(
    client: TestClient, site: Site, clock: Clock
) -> None:
    for i in range(20):
        assert await try_login(client, f"user{i}", "wrong") == 401
    throttle = client.app[PORTAL].throttle
    size = len(throttle)
    for name in ("alice", "bob", "x" * 60_000, "carol"):
        assert await try_login(client, name, "wrong") in (401, 429)
    assert len(throttle) == size  # a 60 KB name is not a key
    actions = audit_actions(site)
    assert actions.count("login.throttled") == 1
    assert not any(len(e) > 1000 for e in _audit_targets(site))
    clock.now += THROTTLE_WINDOW_SECONDS + 1
    for i in range(20):
        await try_login(client, f"user{i}", "wrong")
    await try_login(client, "alice", "wrong")
    assert audit_actions(site).count("login.throttled") == 2  # the next window's one


def _logins(site: Site) -> list[str]:
    with db.session(site.engine, write=False) as s:
        return [row.id_hash for row in s.exec(select(PortalLogin)).all()]


def _audit_targets(site: Site) -> list[str]:
    with db.session(site.engine, write=False) as s:
        return [e.target or "" for e in queries.list_audit(s, limit=1000)]
