"""End users' devices: issue, download, single-use import links (QR) and revocation."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

from aiohttp.test_utils import TestClient, TestServer

from sslvpn.store import db, queries
from tests.web.conftest import (
    PATIENT,
    Clock,
    FakeGateway,
    Site,
    audit_actions,
    issue_for,
    login,
    second_browser,
)
from web.app import create_app
from web.portal import PortalSettings

LINK = re.compile(r'id="plain-link">([^<]+)<')
QR = re.compile(r'id="qr"[^>]*src="data:image/png;base64,([^"]+)"')
PUBLIC = "https://vpn.example.test"


async def create_device(client: TestClient, csrf: str, name: str = "phone") -> str:
    response = await client.post(
        "/devices", data={"device": name, "csrf_token": csrf}, allow_redirects=False
    )
    assert response.status == 303, await response.text()
    return response.headers["Location"].rsplit("/", 1)[1]


async def import_link(client: TestClient, csrf: str, serial: str) -> tuple[str, str]:
    """(path of the plain link on this server, html of the page the POST sends to)."""
    made = await client.post(f"/devices/{serial}/import-links", data={"csrf_token": csrf},
                             allow_redirects=False)
    assert made.status == 303
    assert re.fullmatch(rf"/devices/{serial}/import-links/\d+", made.headers["Location"])
    response = await client.get(made.headers["Location"])
    assert response.status == 200
    page = await response.text()
    found = LINK.search(page)
    assert found
    url = html.unescape(found.group(1))
    assert url.startswith(PUBLIC + "/rest/GetProfileViaToken?token=")
    return url.removeprefix(PUBLIC), page


async def test_create_device_issues_and_downloads_a_profile(client: TestClient, site: Site) -> None:
    csrf = await login(client, "alice")
    serial = await create_device(client, csrf)
    response = await client.get(f"/devices/{serial}/profile.ovpn")
    assert response.status == 200
    assert response.content_type == "application/x-openvpn-profile"
    assert "alice.phone.ovpn" in response.headers["Content-Disposition"]
    profile = await response.text()
    assert "<cert>" in profile and "<key>" in profile and "remote 198.18.0.1 1194 udp" in profile
    page = await (await client.get(f"/devices/{serial}")).text()
    assert "Needs OpenVPN 2.4 or later, or OpenVPN 3 (Connect)." in page
    with db.session(site.engine, write=False) as s:
        row = queries.get_certificate(s, serial=serial)
    assert row.device == "phone" and row.tls_crypt_v2_key
    actions = audit_actions(site, actor="alice")
    assert "certificate.issue" in actions and "profile.render" in actions


async def test_bad_device_name_explains_and_changes_nothing(client: TestClient, site: Site) -> None:
    csrf = await login(client, "alice")
    response = await client.post("/devices", data={"device": "no spaces!", "csrf_token": csrf})
    assert response.status == 400
    assert "Device name: 1-32 letters" in await response.text()
    with db.session(site.engine, write=False) as s:
        assert queries.list_certificates(s, kind="client") == []


async def test_import_link_works_once_then_gone(client: TestClient, site: Site) -> None:
    csrf = await login(client, "alice")
    serial = await create_device(client, csrf)
    path, page = await import_link(client, csrf, serial)
    assert QR.search(page), "the QR image is on the page"
    assert "openvpn://import-profile/" not in page.split('id="plain-link"')[1][:40]
    async with second_browser(client) as phone:  # no portal cookie, as the deep link needs
        first = await phone.get(path, headers={"User-Agent": "OpenVPNConnect/3.4"})
        assert first.status == 200
        assert first.content_type == "application/x-openvpn-profile"
        assert "<key>" in await first.text()
        second = await phone.get(path)
        assert second.status == 410
    device_page = await (await client.get(f"/devices/{serial}")).text()
    assert "imported at" in device_page and "OpenVPNConnect/3.4" in device_page
    assert "profile.import" in audit_actions(site, actor="alice")
    with db.session(site.engine, write=False) as s:
        (token,) = queries.list_import_tokens(s, user_id=queries.get_user(s, name="alice").id)
    assert token.used_at is not None and token.user_agent == "OpenVPNConnect/3.4"
    assert len(token.token_hash) == 64 and token.token_hash not in page


async def test_a_head_probe_does_not_spend_the_link(client: TestClient) -> None:
    csrf = await login(client, "alice")
    serial = await create_device(client, csrf)
    path, _ = await import_link(client, csrf, serial)
    assert (await client.head(path)).status == 405
    assert (await client.get(path)).status == 200


async def test_import_link_expires(client: TestClient, clock: Clock) -> None:
    csrf = await login(client, "alice")
    serial = await create_device(client, csrf)
    path, _ = await import_link(client, csrf, serial)
    clock.now += timedelta(minutes=10, seconds=1).total_seconds()
    assert (await client.get(path)).status == 410


async def test_import_link_can_be_revoked_by_its_owner(client: TestClient) -> None:
    csrf = await login(client, "alice")
    serial = await create_device(client, csrf)
    path, page = await import_link(client, csrf, serial)
    token_id = re.search(r"/import-links/(\d+)/revoke", page)
    assert token_id
    for beyond in ("0", str(2**63), "25787878989725409280"):  # no such link, not a 500
        missing = await client.post(f"/devices/{serial}/import-links/{beyond}/revoke",
                                    data={"csrf_token": csrf}, allow_redirects=False)
        assert missing.status == 404
    response = await client.post(
        f"/devices/{serial}/import-links/{token_id.group(1)}/revoke",
        data={"csrf_token": csrf},
        allow_redirects=False,
    )
    assert response.status == 303
    assert (await client.get(path)).status == 410


async def test_unknown_or_garbage_tokens(client: TestClient) -> None:
    assert (await client.get("/rest/GetProfileViaToken?token=nope")).status == 404
    assert (await client.get("/rest/GetProfileViaToken")).status == 404
    assert (await client.get("/rest/GetProfileViaToken?token=" + "a" * 500)).status == 404


async def test_revoking_a_device_ends_its_sessions_and_kills_links(
    client: TestClient, site: Site, gateway: FakeGateway
) -> None:
    csrf = await login(client, "alice")
    serial = await create_device(client, csrf)
    path, _ = await import_link(client, csrf, serial)
    gateway.add("s1", "alice", serial)
    response = await client.post(f"/devices/{serial}/revoke", data={"csrf_token": csrf})
    assert "1 live session(s) ended" in await response.text()
    assert gateway.kicked == ["s1"]
    assert (await client.get(path)).status == 410
    assert (await client.get(f"/devices/{serial}/profile.ovpn")).status == 410
    with db.session(site.engine, write=False) as s:
        assert queries.get_certificate(s, serial=serial).status == "revoked"
    assert site.paths.crl_pem.read_text().startswith("-----BEGIN X509 CRL-----")


async def test_users_see_only_their_own_devices(client: TestClient, site: Site) -> None:
    mine = issue_for(site, "alice", "laptop")
    theirs = issue_for(site, "bob", "tablet")
    await login(client, "alice")
    page = await (await client.get("/devices")).text()
    assert mine in page and theirs not in page and "tablet" not in page


async def test_import_links_never_take_the_host_header(site: Site, clock: Clock) -> None:
    """Without --public-url, links use the settings' public URL or the gateway's first public
    address, whatever Host the request claims; a loopback URL is warned about."""
    app = create_app(engine=site.engine, paths=site.paths, control=FakeGateway(),
                     settings=PortalSettings(store_budget=PATIENT), clock=clock)
    async with TestClient(TestServer(app)) as portal:
        csrf = await login(portal, "alice")
        serial = await create_device(portal, csrf)

        async def link() -> tuple[str, str]:
            response = await portal.post(f"/devices/{serial}/import-links",
                                         data={"csrf_token": csrf},
                                         headers={"Host": "evil.example"})
            page = await response.text()
            found = LINK.search(page)
            assert found, page
            return html.unescape(found.group(1)), page

        url, page = await link()
        port = portal.server.port
        assert url.startswith(f"http://198.18.0.1:{port}/rest/GetProfileViaToken?token=")
        assert "evil.example" not in page and 'id="loopback-warning"' not in page
        for public, warned in (("https://vpn.example.org:8443", False),
                               ("http://127.0.0.1:8080", True)):
            with db.session(site.engine, write=True) as s:
                settings = queries.get_settings(s)
                settings.portal_public_url = public
                queries.save_settings(s, settings=settings)
            url, page = await link()
            assert url.startswith(f"{public}/rest/GetProfileViaToken?token=")
            assert ('id="loopback-warning"' in page) is warned


async def test_the_qr_page_is_a_get_that_shows_the_same_link_again(
    client: TestClient, site: Site, clock: Clock
) -> None:
    """POST mints and redirects; reloading (or a bookmark of) the page shows the same link
    and mints none, only in the browser that made it, and only while it can still work."""
    csrf = await login(client, "alice")
    serial = await create_device(client, csrf)
    path, _ = await import_link(client, csrf, serial)
    assert 'id="plain-link"' not in await (await client.get(f"/devices/{serial}")).text()
    with db.session(site.engine, write=False) as s:
        (token,) = queries.list_import_tokens(s, user_id=queries.get_user(s, name="alice").id)
    link_page = f"/devices/{serial}/import-links/{token.id}"
    again = LINK.search(await (await client.get(link_page)).text())
    assert again and html.unescape(again.group(1)) == PUBLIC + path
    with db.session(site.engine, write=False) as s:
        assert len(queries.list_import_tokens(s, user_id=token.user_id)) == 1  # none minted
    async with second_browser(client) as elsewhere:  # the owner, in another browser
        await login(elsewhere, "alice")
        other = await (await elsewhere.get(link_page)).text()
        assert 'id="plain-link"' not in other and "shown only in the browser that made it" in other
    async with second_browser(client) as bob:
        await login(bob, "bob")
        assert (await bob.get(link_page)).status == 404
    clock.now += timedelta(minutes=10, seconds=1).total_seconds()
    gone = await (await client.get(link_page)).text()
    assert 'id="plain-link"' not in gone and 'id="link-gone"' in gone and "is expired" in gone


async def test_the_qr_page_opens_openvpn_connect_and_says_when_the_link_was_made(
    client: TestClient, clock: Clock
) -> None:
    csrf = await login(client, "alice")
    serial = await create_device(client, csrf)
    path, page = await import_link(client, csrf, serial)
    connect = re.search(r'href="([^"]+)" id="open-in-connect"|id="open-in-connect" href="([^"]+)"',
                        page)
    assert connect
    assert html.unescape(connect.group(1) or connect.group(2)) == (
        "openvpn://import-profile/" + PUBLIC + path)
    assert f'href="{html.escape(PUBLIC + path)}" id="plain-link"' in page  # tappable
    made = datetime.fromtimestamp(clock.now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert re.search(rf'id="link-made">Link made <time datetime="{made}"', page)
