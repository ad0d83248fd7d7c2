"""Portal two-factor sign-in: enrolment, the code step of a login, throttling, replay,
recovery codes, the admin's requirement and reset (portal, API, CLI), CSRF, and no secret
in the logs."""

from __future__ import annotations

import base64
import logging
import re

import pytest
from aiohttp.test_utils import TestClient
from click.testing import CliRunner
from sqlmodel import select

from client_profiles import two_factor
from sslvpn.cli import main
from sslvpn.store import db, queries
from sslvpn.store.models import PortalLogin, User
from tests.web.conftest import (
    PASSWORDS,
    Browser,
    Clock,
    Site,
    audit_actions,
    csrf_from,
    login,
    second_browser,
)
from tests.web.test_api import ADMIN_TOKEN, add_tokens, bearer
from web.security import THROTTLE_ACCOUNT_FAILURES

SECRET_SHOWN = re.compile(r"<code>([A-Z2-7]{32})</code>")
RECOVERY_SHOWN = re.compile(r"<code>([0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4})</code>")


def user_row(site: Site, name: str) -> User:
    with db.session(site.engine, write=False) as s:
        return queries.get_user(s, name=name)


def enrol_directly(site: Site, name: str, codes: list[str] | None = None) -> str:
    """Give ``name`` a confirmed authenticator (and these recovery codes); its secret."""
    secret = two_factor.new_secret()
    with db.session(site.engine, write=True) as s:
        user = queries.get_user(s, name=name)
        user.totp_secret = secret
        user.recovery_code_hashes = two_factor.hash_recovery_codes(codes or [])
    return secret


async def password_step(client: Browser, name: str) -> str:
    """Give the password; where the portal sends the browser next."""
    token = await csrf_from(client, "/login")
    response = await client.post("/login", allow_redirects=False, data={
        "name": name, "password": PASSWORDS[name], "csrf_token": token})
    assert response.status == 303, await response.text()
    return response.headers["Location"]


async def code_step(client: Browser, code: str) -> int:
    token = await csrf_from(client, "/login/code")
    response = await client.post("/login/code", allow_redirects=False,
                                 data={"code": code, "csrf_token": token})
    return response.status


async def logged_in(client: TestClient) -> bool:
    response = await client.get("/devices", allow_redirects=False)
    return response.status == 200


async def logout(client: TestClient) -> None:
    token = await csrf_from(client, "/account/two-factor")
    await client.post("/logout", data={"csrf_token": token}, allow_redirects=False)


async def enrol_through_page(client: TestClient, clock: Clock) -> tuple[str, list[str]]:
    """Scan (read the key off the page) and confirm; the secret and the recovery codes."""
    page = await (await client.get("/account/two-factor")).text()
    assert 'src="data:image/png;base64,' in page  # the QR, inline: the CSP allows data: images
    found = SECRET_SHOWN.search(page)
    assert found, page
    secret = found.group(1)
    token = await csrf_from(client, "/account/two-factor")
    response = await client.post("/account/two-factor", data={
        "code": two_factor.code_at(secret, clock.now), "csrf_token": token})
    assert response.status == 200
    return secret, RECOVERY_SHOWN.findall(await response.text())


async def test_enrol_and_confirm(client: TestClient, site: Site, clock: Clock) -> None:
    await login(client, "alice")
    page = await (await client.get("/account/two-factor")).text()
    secret = SECRET_SHOWN.search(page).group(1)  # type: ignore[union-attr]
    qr = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert qr and base64.b64decode(qr.group(1)).startswith(b"\x89PNG")
    token = await csrf_from(client, "/account/two-factor")
    wrong = await client.post("/account/two-factor", allow_redirects=False,
                              data={"code": "000000", "csrf_token": token})
    assert wrong.status == 303 and user_row(site, "alice").totp_secret is None
    _, codes = await enrol_through_page(client, clock)
    row = user_row(site, "alice")
    assert row.totp_secret == secret  # the secret of the QR shown, kept until confirmed
    assert len(codes) == 10 == len(set(codes)) == len(row.recovery_code_hashes)
    assert not set(codes) & set(row.recovery_code_hashes)  # stored hashed
    assert "user.2fa_enrol" in audit_actions(site)
    again = await (await client.get("/account/two-factor")).text()
    assert "10 unused recovery code(s)" in again and secret not in again  # shown once


async def test_login_needs_the_code_and_no_session_before(
        client: TestClient, site: Site, clock: Clock) -> None:
    secret = enrol_directly(site, "alice")
    assert await password_step(client, "alice") == "/login/code"
    assert not await logged_in(client)  # the password alone logs nobody in
    with db.session(site.engine, write=False) as s:
        assert all(row.user_id is None for row in s.exec(select(PortalLogin)))
    assert await code_step(client, two_factor.code_at(secret, clock.now)) == 303
    assert await logged_in(client)


async def test_wrong_codes_are_refused_and_throttled(
        client: TestClient, site: Site, clock: Clock) -> None:
    secret = enrol_directly(site, "alice")
    await password_step(client, "alice")
    good = two_factor.code_at(secret, clock.now)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    for _ in range(THROTTLE_ACCOUNT_FAILURES - 1):
        assert await code_step(client, wrong) == 401
    # the password again does not buy new guesses: the count clears on a good code only
    assert await password_step(client, "alice") == "/login/code"
    assert await code_step(client, wrong) == 401
    assert await code_step(client, good) == 429  # even the right code waits now
    assert not await logged_in(client)
    assert audit_actions(site, actor="alice").count("login.failed") == THROTTLE_ACCOUNT_FAILURES


async def test_a_code_is_not_taken_twice(client: TestClient, site: Site, clock: Clock) -> None:
    secret = enrol_directly(site, "alice")
    code = two_factor.code_at(secret, clock.now)
    await password_step(client, "alice")
    assert await code_step(client, code) == 303
    await logout(client)
    await password_step(client, "alice")
    assert await code_step(client, code) == 401  # replayed in its own window
    clock.now += two_factor.STEP_SECONDS
    assert await code_step(client, two_factor.code_at(secret, clock.now)) == 303


async def test_a_recovery_code_works_once(client: TestClient, site: Site) -> None:
    codes = two_factor.new_recovery_codes()[:2]
    enrol_directly(site, "alice", codes)
    await password_step(client, "alice")
    assert await code_step(client, codes[0].upper()) == 303  # as typed: case does not matter
    assert len(user_row(site, "alice").recovery_code_hashes) == 1
    await logout(client)
    await password_step(client, "alice")
    assert await code_step(client, codes[0]) == 401
    assert await code_step(client, codes[1]) == 303


async def test_required_two_factor_forces_enrolment(
        client: TestClient, site: Site, clock: Clock) -> None:
    async with second_browser(client) as bobs:
        await login(bobs, "bob")
        token = await login(client, "root")
        response = await client.post("/admin/users/bob/two-factor/require",
                                     allow_redirects=False,
                                     data={"required": "1", "csrf_token": token})
        assert response.status == 303 and user_row(site, "bob").two_factor_required
        # his open session ends too: he cannot carry on without enrolling
        assert (await bobs.get("/devices", allow_redirects=False)).status == 303
    await logout(client)
    assert await password_step(client, "bob") == "/account/two-factor"
    for path in ("/devices", "/account/password", "/login/code"):
        answer = await client.get(path, allow_redirects=False)
        assert answer.headers.get("Location") == "/login", path  # nothing else is reachable
    _, codes = await enrol_through_page(client, clock)
    assert len(codes) == 10 and await logged_in(client)


async def test_admins_cannot_skip_two_factor_required_of_everyone(
        client: TestClient, site: Site, clock: Clock) -> None:
    secret = enrol_directly(site, "bob")
    async with second_browser(client) as alices, second_browser(client) as bobs:
        await login(alices, "alice")
        await password_step(bobs, "bob")
        assert await code_step(bobs, two_factor.code_at(secret, clock.now)) == 303
        token = await login(client, "root")
        response = await client.post("/admin/two-factor", allow_redirects=False,
                                     data={"required": "1", "csrf_token": token})
        assert response.status == 303
        assert (await alices.get("/devices", allow_redirects=False)).status == 303
        assert (await bobs.get("/devices", allow_redirects=False)).status == 200  # enrolled
    assert (await client.get("/admin", allow_redirects=False)).status == 200  # who changed it
    await logout(client)
    assert await password_step(client, "root") == "/account/two-factor"
    assert (await client.get("/admin", allow_redirects=False)).headers["Location"] == "/login"
    root_secret, _ = await enrol_through_page(client, clock)
    assert (await client.get("/admin", allow_redirects=False)).status == 200
    await logout(client)
    clock.now += two_factor.STEP_SECONDS
    assert await password_step(client, "root") == "/login/code"
    assert await code_step(client, two_factor.code_at(root_secret, clock.now)) == 303


async def test_admin_resets_an_enrolment_in_the_portal_api_and_cli(
        client: TestClient, site: Site) -> None:
    enrol_directly(site, "alice", two_factor.new_recovery_codes())
    token = await login(client, "root")
    response = await client.post("/admin/users/alice/two-factor/reset", allow_redirects=False,
                                 data={"csrf_token": token})
    assert response.status == 303
    row = user_row(site, "alice")
    assert row.totp_secret is None and not row.recovery_code_hashes
    assert await password_step(client, "alice") == "/devices"  # no longer asked for a code

    add_tokens(site)
    enrol_directly(site, "alice")
    answer = await client.post("/api/v1/users/alice/two-factor/reset", headers=bearer(ADMIN_TOKEN))
    assert answer.status == 200 and (await answer.json())["two_factor_enrolled"] is False
    required = await client.patch("/api/v1/users/alice", json={"two_factor_required": True},
                                  headers=bearer(ADMIN_TOKEN))
    assert (await required.json())["two_factor_required"] is True

    enrol_directly(site, "alice")
    result = CliRunner().invoke(main, ["--data-dir", str(site.paths.data_dir), "user",
                                       "2fa-reset", "alice"], catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout == "two-factor sign-in of alice reset\n"
    assert user_row(site, "alice").totp_secret is None
    result = CliRunner().invoke(main, ["--data-dir", str(site.paths.data_dir), "user",
                                       "2fa-require", "alice", "--off"], catch_exceptions=False)
    assert result.exit_code == 0 and not user_row(site, "alice").two_factor_required
    assert audit_actions(site).count("user.2fa_reset") == 3


async def own_change(client: TestClient, path: str, code: str,
                     password: str = PASSWORDS["alice"]) -> str:
    """Post the user's own two-factor change; the page it ends on."""
    token = await csrf_from(client, "/account/two-factor")
    response = await client.post(path, data={"password": password, "code": code,
                                              "csrf_token": token})
    assert response.status == 200
    return await response.text()


async def test_a_user_turns_two_factor_off_with_password_and_code(
        client: TestClient, site: Site, clock: Clock) -> None:
    secret = enrol_directly(site, "alice")
    code = two_factor.code_at(secret, clock.now)
    await password_step(client, "alice")
    assert await code_step(client, code) == 303
    assert "Turn two-factor sign-in off" in await (await client.get("/account/two-factor")).text()
    clock.now += two_factor.STEP_SECONDS
    fresh = two_factor.code_at(secret, clock.now)
    page = await own_change(client, "/account/two-factor/off", fresh, password="not-her-password")
    assert "wrong" in page and user_row(site, "alice").totp_secret == secret
    page = await own_change(client, "/account/two-factor/off", code)  # used at sign-in
    assert "wrong" in page and user_row(site, "alice").totp_secret == secret
    page = await own_change(client, "/account/two-factor/off", fresh)
    assert "Two-factor sign-in is off." in page and user_row(site, "alice").totp_secret is None
    assert {"user.2fa_change_failed", "user.2fa_disable"} <= set(audit_actions(site))
    await logout(client)
    assert await password_step(client, "alice") == "/devices"  # no code asked any more


async def test_two_factor_required_cannot_be_turned_off_by_its_user(
        client: TestClient, site: Site, clock: Clock) -> None:
    secret = enrol_directly(site, "alice")
    with db.session(site.engine, write=True) as s:
        queries.get_user(s, name="alice").two_factor_required = True
    await password_step(client, "alice")
    assert await code_step(client, two_factor.code_at(secret, clock.now)) == 303
    page = await (await client.get("/account/two-factor")).text()
    assert "Turn two-factor sign-in off" not in page and "New recovery codes" in page
    clock.now += two_factor.STEP_SECONDS
    page = await own_change(client, "/account/two-factor/off",
                            two_factor.code_at(secret, clock.now))
    assert "requires two-factor sign-in" in page and user_row(site, "alice").totp_secret


async def test_new_recovery_codes_replace_the_old_ones(
        client: TestClient, site: Site, clock: Clock) -> None:
    old = two_factor.new_recovery_codes()[:2]
    enrol_directly(site, "alice", old)
    await password_step(client, "alice")
    assert await code_step(client, old[0]) == 303
    page = await own_change(client, "/account/two-factor/recovery-codes", "000000")
    assert "wrong" in page and not RECOVERY_SHOWN.findall(page)
    page = await own_change(client, "/account/two-factor/recovery-codes", old[1])
    new = RECOVERY_SHOWN.findall(page)
    assert len(new) == 10 and not set(new) & set(old)
    assert len(user_row(site, "alice").recovery_code_hashes) == 10
    assert "user.2fa_recovery_codes" in audit_actions(site)
    await logout(client)
    await password_step(client, "alice")
    assert await code_step(client, old[1]) == 401  # the old ones are gone
    assert await code_step(client, new[0]) == 303


async def test_the_cli_requires_two_factor_of_everyone(client: TestClient, site: Site) -> None:
    await login(client, "alice")

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, ["--data-dir", str(site.paths.data_dir), "user",
                                           "2fa-require", *args], catch_exceptions=False)
        return f"{result.exit_code} {result.output}"

    def everyone() -> bool:
        with db.session(site.engine, write=False) as s:
            return queries.get_settings(s).require_two_factor

    assert cli("--everyone") == "0 two-factor sign-in required of everyone\n" and everyone()
    assert not await logged_in(client)  # not enrolled: she enrols at her next sign-in
    assert await password_step(client, "alice") == "/account/two-factor"
    assert cli("--everyone", "--off") == "0 two-factor sign-in optional for everyone\n"
    assert not everyone()
    assert cli().startswith("2 ") and cli("alice", "--everyone").startswith("2 ")
    assert audit_actions(site).count("settings.update") == 2


async def test_an_admin_asks_vpn_clients_for_a_code(client: TestClient, site: Site) -> None:
    enrol_directly(site, "alice")
    token = await login(client, "root")
    page = await (await client.get("/admin/users")).text()
    assert "connect with their certificate alone" in page
    response = await client.post("/admin/two-factor/vpn", data={"required": "1",
                                                                 "csrf_token": token})
    page = await response.text()
    assert "VPN two-factor on" in page and "Not enrolled, cannot connect: bob, root." in page
    assert "connect with their password and a two-factor code" in page
    with db.session(site.engine, write=False) as s:
        assert queries.get_settings(s).vpn_two_factor
    await client.post("/admin/two-factor/vpn", data={"required": "0", "csrf_token": token})
    with db.session(site.engine, write=False) as s:
        assert not queries.get_settings(s).vpn_two_factor
    assert audit_actions(site, actor="root").count("settings.update") == 2


@pytest.mark.parametrize("path", ["/login/code", "/account/two-factor",
                                  "/account/two-factor/off", "/admin/two-factor/vpn",
                                  "/account/two-factor/recovery-codes",
                                  "/admin/users/alice/two-factor/reset",
                                  "/admin/users/alice/two-factor/require", "/admin/two-factor"])
async def test_every_two_factor_form_needs_the_csrf_token(
        client: TestClient, site: Site, path: str) -> None:
    enrol_directly(site, "alice")
    await login(client, "root")
    response = await client.post(path, data={"required": "1", "code": "123456"},
                                 allow_redirects=False)
    assert response.status == 403
    row = user_row(site, "alice")
    assert row.totp_secret is not None and not row.two_factor_required


async def test_a_password_alone_gets_no_profile_over_basic(client: TestClient, site: Site) -> None:
    enrol_directly(site, "alice")
    answer = await client.get("/rest/GetUserlogin", auth=None, headers={
        "Authorization": "Basic " + base64.b64encode(
            f"alice:{PASSWORDS['alice']}".encode()).decode()})
    assert answer.status == 403


async def test_no_secret_in_the_logs(client: TestClient, site: Site, clock: Clock,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await login(client, "alice")
    secret, codes = await enrol_through_page(client, clock)
    await logout(client)
    clock.now += two_factor.STEP_SECONDS
    await password_step(client, "alice")
    assert await code_step(client, two_factor.code_at(secret, clock.now)) == 303
    await logout(client)
    await password_step(client, "alice")
    assert await code_step(client, codes[0]) == 303
    with db.session(site.engine, write=False) as s:
        audit = " ".join(f"{e.detail} {e.target}" for e in queries.list_audit(s, limit=1000))
    assert caplog.records  # the portal did log (access and store lines)
    for text in (caplog.text, audit, repr(user_row(site, "alice"))):
        assert secret not in text and not any(code in text for code in codes)
