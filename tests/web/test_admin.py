"""Admin pages: users, certificates, sessions and kick, audit, settings, API tokens."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

from aiohttp.test_utils import TestClient

from sslvpn.runtime.control import ListenerStatus
from sslvpn.store import db, queries
from tests.web.conftest import (
    Clock,
    FakeGateway,
    Site,
    audit_actions,
    csrf_from,
    issue_for,
    login,
    second_browser,
)
from tests.web.test_onboarding import basic


async def post(client: TestClient, path: str, csrf: str, **data: str) -> tuple[int, str]:
    response = await client.post(path, data={"csrf_token": csrf, **data})
    return response.status, await response.text()


async def test_create_user_with_generated_password_that_works(
    client: TestClient, site: Site
) -> None:
    csrf = await login(client, "root")
    status, page = await post(client, "/admin/users", csrf, name="carol", role="user")
    assert status == 200 and "User carol created." in page
    password = re.search(r"One-time password: ([A-Za-z0-9_-]+)", page)
    assert password
    async with second_browser(client) as carol:
        await login(carol, "carol", password.group(1))
    assert "user.add" in audit_actions(site, actor="root")


async def test_bad_user_input_explains_and_changes_nothing(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    status, page = await post(client, "/admin/users", csrf, name="carol", role="king")
    assert status == 400 and "Role must be admin or user." in page
    status, page = await post(client, "/admin/users", csrf, name="Bad Name!", role="user")
    assert status == 400 and "a user name is 1-64 letters" in page
    status, page = await post(client, "/admin/users", csrf, name="carol", password="short")
    assert status == 400 and "at least 12 characters" in page
    status, page = await post(client, "/admin/users", csrf, name="carol", password="qwerty123456")
    assert status == 400 and "common or guessable" in page
    status, page = await post(client, "/admin/users", csrf, name="alice", role="user")
    assert status == 400 and "already exists" in page
    with db.session(site.engine, write=False) as s:
        assert [u.name for u in queries.list_users(s)] == ["alice", "bob", "root"]


async def test_disable_enable_and_reset_password(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    await post(client, "/admin/users/bob/disable", csrf)
    with db.session(site.engine, write=False) as s:
        assert queries.get_user(s, name="bob").disabled
    await post(client, "/admin/users/bob/enable", csrf)
    status, page = await post(client, "/admin/users/bob/password", csrf)
    new = re.search(r"New one-time password for bob: ([A-Za-z0-9_-]+)", page)
    assert new
    async with second_browser(client) as bob:
        await login(bob, "bob", new.group(1))
    actions = audit_actions(site, actor="root")
    assert {"user.disable", "user.enable", "user.password_reset"} <= set(actions)


async def test_a_one_time_password_must_be_replaced_and_dies_after_a_day(
    client: TestClient, clock: Clock
) -> None:
    csrf = await login(client, "root")
    passwords = {}
    for name in ("bob", "alice"):
        _, page = await post(client, f"/admin/users/{name}/password", csrf)
        found = re.search(rf"New one-time password for {name}: ([A-Za-z0-9_-]+)", page)
        assert found
        passwords[name] = found.group(1)
    async with second_browser(client) as bob:
        bob_csrf = await login(bob, "bob", passwords["bob"])
        for path in ("/devices", "/admin/users"):
            page = await bob.get(path, allow_redirects=False)
            assert page.status == 303 and page.headers["Location"] == "/account/password", path
        connect = await bob.get("/rest/GetUserlogin", headers=basic("bob", passwords["bob"]))
        assert connect.status == 403 and "one-time password" in await connect.text()
        changed = await bob.post("/account/password", allow_redirects=False, data={
            "csrf_token": bob_csrf, "password": passwords["bob"],
            "new_password": "bobs-own-password", "confirm": "bobs-own-password"})
        assert changed.status == 303
        assert (await bob.get("/devices", allow_redirects=False)).status == 200
    clock.now += 24 * 3600 + 1  # alice never used hers
    async with second_browser(client) as alice:
        token = await csrf_from(alice, "/login")
        late = await alice.post("/login", allow_redirects=False, data={
            "name": "alice", "password": passwords["alice"], "csrf_token": token})
        assert late.status == 401


async def test_delete_user_revokes_their_certificates(
    client: TestClient, site: Site, gateway: FakeGateway
) -> None:
    serial = issue_for(site, "bob")
    gateway.add("s9", "bob", serial)
    csrf = await login(client, "root")
    status, page = await post(client, "/admin/users/bob/delete", csrf)
    assert "1 certificate(s) revoked, 1 session(s) ended" in page
    with db.session(site.engine, write=False) as s:
        assert queries.get_certificate(s, serial=serial).status == "revoked"
        assert "bob" not in [u.name for u in queries.list_users(s)]


async def test_admin_cannot_disable_or_delete_themselves(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    _, page = await post(client, "/admin/users/root/delete", csrf)
    assert "You cannot delete yourself." in page
    _, page = await post(client, "/admin/users/root/disable", csrf)
    assert "You cannot disable yourself." in page


async def test_issue_renew_revoke_from_the_certificates_page(
    client: TestClient, site: Site, gateway: FakeGateway
) -> None:
    csrf = await login(client, "root")
    status, page = await post(
        client, "/admin/certificates", csrf, user="alice", device="laptop", days="30"
    )
    assert status == 200 and "Issued alice/laptop" in page
    with db.session(site.engine, write=False) as s:
        (first,) = queries.list_certificates(s, kind="client")
    assert (first.not_after - first.not_before).days in (29, 30)
    _, page = await post(client, f"/admin/certificates/{first.serial}/renew", csrf)
    assert "Renewed alice.laptop" in page
    with db.session(site.engine, write=False) as s:
        old = queries.get_certificate(s, serial=first.serial)
    assert old.status == "valid" and old.superseded_by and old.overlap_until
    page = await (await client.get("/admin/certificates")).text()
    assert f"works until <time datetime=\"{old.overlap_until:%Y-%m-%dT%H:%M:%S}Z\"" in page
    assert page.count("/renew") == 1  # the renewed one is not offered again
    gateway.add("s1", "alice", old.superseded_by)
    gateway.add("s2", "alice", old.superseded_by)
    _, page = await post(
        client, f"/admin/certificates/{old.superseded_by}/revoke", csrf, reason="keyCompromise"
    )
    assert "2 live session(s) ended" in page
    async with second_browser(client) as alice:
        await login(alice, "alice")
        devices = await (await alice.get("/devices")).text()
    assert "was renewed" not in devices  # the renewal was revoked since
    crl = await client.get("/admin/crl.pem")
    assert crl.status == 200 and (await crl.text()).startswith("-----BEGIN X509 CRL-----")


async def test_renewal_offers_the_owner_a_fresh_import_link(client: TestClient, site: Site) -> None:
    serial = issue_for(site, "alice")
    csrf = await login(client, "root")
    await post(client, f"/admin/certificates/{serial}/renew", csrf)
    async with second_browser(client) as alice:
        alice_csrf = await login(alice, "alice")
        devices = await (await alice.get("/devices")).text()
        assert "was renewed" in devices
        assert "works until" in devices and devices.count("Download .ovpn") == 1  # the new one
        new = re.search(r'id="renewed-([0-9a-f]+)"', devices)
        assert new and new.group(1) != serial
        link = await alice.post(
            f"/devices/{new.group(1)}/import-links", data={"csrf_token": alice_csrf}
        )
        assert 'id="plain-link"' in await link.text()


async def test_bad_certificate_input_explains(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    status, page = await post(
        client, "/admin/certificates", csrf, user="nobody", device="a b", days="0"
    )
    assert status == 400
    assert "Choose an existing user." in page and "Lifetime must be 1 to 3650 days." in page
    with db.session(site.engine, write=False) as s:
        assert queries.list_certificates(s, kind="client") == []


async def test_sessions_page_and_kick(client: TestClient, site: Site, gateway: FakeGateway) -> None:
    serial = issue_for(site, "alice")
    gateway.add("s1", "alice", serial)
    csrf = await login(client, "root")
    page = await (await client.get("/admin/sessions")).text()
    assert "198.18.0.9:50000" in page and "10.8.0.2" in page and "1234 / 5678" in page
    gateway.listeners = ListenerStatus(
        clients=7, half_open={"udp": 2, "tcp": 5}, half_open_peak={"udp": 3, "tcp": 16},
        refused={"half-open-per-address": 40}, top_refused_sources={"203.0.113.9": 40},
        limits={"half_open_per_address": 16})
    page = await (await client.get("/admin/sessions")).text()
    assert ("Clients held: 7. Not authenticated yet:\nudp 2 (peak 3), tcp 5 (peak 16); at most "
            "16 per source.") in page
    assert "half-open-per-address 40" in page and "203.0.113.9</span> 40" in page
    _, page = await post(client, "/admin/sessions/s1/kick", csrf)
    assert "Session of alice (phone) ended." in page
    assert gateway.kicked == ["s1"]
    assert "session.kick" in audit_actions(site, actor="root")
    _, page = await post(client, "/admin/sessions/s1/kick", csrf)
    assert "already ended" in page


async def test_sessions_page_shows_clients_and_filters_older_ones(
    client: TestClient, site: Site, gateway: FakeGateway
) -> None:
    serial = issue_for(site, "alice")
    gateway.add("s1", "alice", serial, client=("2.4.12", "linux", None))
    gateway.add("s2", "alice", serial, client=("3.10", "ios", "net.openvpn.connect.ios_3.5"))
    gateway.add("s3", "alice", serial, client=(None, None, "<b>odd</b>"))
    await login(client, "root")
    page = await (await client.get("/admin/sessions")).text()
    assert "2.4.12 linux" in page and "3.10 ios<br><small>net.openvpn.connect.ios_3.5" in page
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "<b>odd" not in page  # the client's own words
    older = await (await client.get("/admin/sessions?older_than=2.5")).text()
    assert "2.4.12 linux" in older and "3.10 ios" not in older and "odd" in older
    assert 'value="2.5"' in older
    bad = await client.get("/admin/sessions?older_than=two")
    assert "&#39;two&#39; is not a version" in await bad.text() and "3.10 ios" in await bad.text()


async def test_dashboard_expiry_health_and_traffic(
    client: TestClient, site: Site, gateway: FakeGateway, clock: Clock
) -> None:
    issue_for(site, "alice", "short")
    from client_profiles import lifecycle

    lifecycle.issue_client(
        site.engine, site.paths, user_name="bob", device="soon", days=5, actor="test"
    )
    await login(client, "root")
    page = await (await client.get("/admin")).text()
    assert "CA certificate" in page and "Server certificate" in page and "CRL nextUpdate" in page
    assert "Client bob / soon" in page and "Client alice / short" not in page
    assert re.search(r'Client bob / soon.*?class="bad"', page, re.S)
    # issued on the page's clock: X.509 drops sub-seconds, so a later real "now" could leave
    # the certificate a fraction over one day from the page's point of view
    lifecycle.issue_client(
        site.engine, site.paths, user_name="bob", device="today", days=1, actor="test",
        now=datetime.fromtimestamp(clock.now, UTC),
    )
    page = await (await client.get("/admin")).text()
    assert re.search(r'Client bob / today.*?class="critical"', page, re.S)
    assert 'id="traffic-chart"' in page
    data = await (await client.get("/admin/traffic.json")).json()
    assert data["gateway"] == "default" and isinstance(data["points"], list)


async def test_the_crl_warns_at_its_own_stages_and_the_page_says_so(
    client: TestClient, clock: Clock
) -> None:
    """A CRL is re-signed at half of its 30-day life: 29 days left is normal, not a warning,
    and the page states its stages so the green row under "Warnings at 30" is not a puzzle."""
    await login(client, "root")
    page = await (await client.get("/admin")).text()
    assert "for the CRL, re-signed at half of its 30-day life, at 7, 1 days" in page
    assert re.search(r'CRL nextUpdate.*?class="ok"', page, re.S)
    clock.now += 24 * 86400  # a CRL that was not re-signed: about 6 days left
    await login(client, "root")
    page = await (await client.get("/admin")).text()
    assert re.search(r'CRL nextUpdate.*?class="bad"', page, re.S)


async def test_audit_log_filters(client: TestClient, site: Site) -> None:
    await login(client, "alice")
    await login(client, "root")
    page = await (await client.get("/admin/audit?actor=alice&action=login")).text()
    rows = re.findall(r"<tr><td>", page)
    assert len(rows) == 1 and "127.0.0.1" in page
    future = await (await client.get("/admin/audit?since=2999-01-01")).text()
    assert "No entries." in future
    bad = await (await client.get("/admin/audit?since=yesterday")).text()
    assert "Since must be a date" in bad


async def test_settings_validate_and_save(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    good = {
        "public_addresses": "vpn.example.test 198.18.0.1",
        "port": "443",
        "protocols": "both",
        "vpc_networks": "10.20.0.0/16, 10.30.0.0/16",
        "dns_servers": "10.20.0.2",
        "pool_cidr": "10.8.0.0/24",
        "import_token_ttl_seconds": "300",
    }
    status, page = await post(
        client, "/admin/settings", csrf, **{**good, "port": "99999", "dns_servers": "x"}
    )
    assert status == 400 and "Port must be 1 to 65535." in page and "is not an IP address" in page
    with db.session(site.engine, write=False) as s:
        assert queries.get_settings(s).port == 1194
    status, page = await post(client, "/admin/settings", csrf, **good)
    assert status == 200 and "Settings saved." in page
    assert '<a href="/admin/sessions?older_than=2.6" id="older-clients">' in page
    with db.session(site.engine, write=False) as s:
        saved = queries.get_settings(s)
    assert saved.port == 443 and saved.vpc_networks == ["10.20.0.0/16", "10.30.0.0/16"]
    assert saved.import_token_ttl_seconds == 300 and saved.protocols == "both"
    assert (saved.max_clients, saved.max_clients_per_address) == (0, 0)  # left out: kept
    assert saved.tls_crypt_v2_force_cookie
    status, page = await post(client, "/admin/settings", csrf, **good, max_clients="-1",
                              tls_crypt_v2_force_cookie="maybe")
    assert status == 400 and "Max clients must be 0 (no cap) to 1,000,000." in page
    caps = {"max_clients": "5000", "max_clients_per_address": "50",
            "tls_crypt_v2_force_cookie": "off"}
    status, page = await post(client, "/admin/settings", csrf, **good, **caps)
    assert status == 200 and 'name="max_clients_per_address" type="number"' in page
    with db.session(site.engine, write=False) as s:
        saved = queries.get_settings(s)
    assert (saved.max_clients, saved.max_clients_per_address) == (5000, 50)
    assert not saved.tls_crypt_v2_force_cookie


async def test_api_tokens_are_shown_once_and_stored_hashed(client: TestClient, site: Site) -> None:
    csrf = await login(client, "root")
    _, page = await post(client, "/admin/api-tokens", csrf, name="automation")
    token = re.search(r'id="new-token">(svt_[^<]+)<', page)
    assert token
    listing = await (await client.get("/admin/api-tokens")).text()
    assert token.group(1) not in listing and "automation" in listing
    with db.session(site.engine, write=False) as s:
        (row,) = queries.list_api_tokens(s, user_id=queries.get_user(s, name="root").id)
    assert token.group(1) not in row.token_hash
    assert (row.scope, row.expires_at) == ("full", None)
    status, page = await post(client, "/admin/api-tokens", csrf, name="ci", scope="issue-only",
                              expires_days="30")
    assert status == 200 and "issue-only" in page
    status, page = await post(client, "/admin/api-tokens", csrf, name="x", scope="root",
                              expires_days="-1")
    assert status == 400 and "Scope must be one of" in page and "Expiry must be 1 to" in page


async def test_the_dashboard_warns_when_no_vpc_network_is_configured(
    client: TestClient, site: Site
) -> None:
    await login(client, "root")
    page = await (await client.get("/admin")).text()
    assert 'id="no-vpc"' in page and "clients connect but reach nothing" in page
    with db.session(site.engine, write=True) as s:
        settings = queries.get_settings(s)
        settings.vpc_networks = ["10.20.0.0/16"]
        queries.save_settings(s, settings=settings)
    assert 'id="no-vpc"' not in await (await client.get("/admin")).text()


async def test_the_admin_shows_a_users_import_qr_from_the_certificate_row(
    client: TestClient, site: Site
) -> None:
    serial = issue_for(site, "alice", "laptop")
    csrf = await login(client, "root")
    page = await (await client.get("/admin/certificates")).text()
    assert f'action="/admin/certificates/{serial}/import-links"' in page
    assert f'href="/admin/certificates/{serial}/profile.ovpn"' in page
    made = await client.post(f"/admin/certificates/{serial}/import-links",
                             data={"csrf_token": csrf}, allow_redirects=False)
    assert made.status == 303
    where = made.headers["Location"]
    assert re.fullmatch(rf"/admin/certificates/{serial}/import-links/\d+", where)
    shown = await (await client.get(where)).text()
    assert "Import link for alice/laptop" in shown and 'id="qr"' in shown
    url = re.search(r'href="https://vpn.example.test([^"]+)" id="plain-link"', shown)
    assert url
    assert (await client.get(html.unescape(url.group(1)))).status == 200
    assert (await client.get(html.unescape(url.group(1)))).status == 410  # once
    assert "is used" in await (await client.get(where)).text()
    assert "import_link.create" in audit_actions(site, actor="root")
    async with second_browser(client) as alice:  # the owner sees the link on her device
        await login(alice, "alice")
        assert "imported at" in await (await alice.get(f"/devices/{serial}")).text()
    status, _ = await post(client, f"/admin/certificates/{serial}/revoke", csrf)
    gone = await client.post(f"/admin/certificates/{serial}/import-links",
                             data={"csrf_token": csrf})
    assert gone.status == 410
