"""OpenVPN Connect's own endpoints: REST GetUserlogin with Basic auth and the web probe."""

from __future__ import annotations

import base64

from aiohttp.test_utils import TestClient

from sslvpn.store import db, queries
from tests.web.conftest import PASSWORDS, Site, audit_actions


def basic(name: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


async def test_get_userlogin_reuses_the_users_connect_device(
    client: TestClient, site: Site
) -> None:
    """Each import used to mint a new certificate (a new device every call)."""
    profiles = []
    for _ in range(3):
        response = await client.get(
            "/rest/GetUserlogin?tls-cryptv2=1&action=import",
            headers=basic("alice", PASSWORDS["alice"]),
        )
        assert response.status == 200
        assert response.content_type == "text/plain"
        profiles.append(await response.text())
    assert profiles[0].startswith("# alice.connect @") and "<key>" in profiles[0]
    assert profiles[1] == profiles[2] == profiles[0]
    with db.session(site.engine, write=False) as s:
        (row,) = queries.list_certificates(s, kind="client")
    assert row.device == "connect"
    assert {"login", "certificate.issue", "profile.import"} <= set(
        audit_actions(site, actor="alice")
    )


async def test_get_userlogin_errors_in_access_server_xml(client: TestClient, site: Site) -> None:
    for headers in ({}, basic("alice", "wrong"), {"Authorization": "Basic !!!"}):
        response = await client.get("/rest/GetUserlogin", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        body = await response.text()
        assert body.startswith('<?xml version="1.0" encoding="UTF-8"?>')
        assert "<Type>Authorization Required</Type>" in body
        assert "<Synopsis>REST method failed</Synopsis>" in body
        assert "<Message>AUTH_FAILED:" in body
    with db.session(site.engine, write=False) as s:
        assert queries.list_certificates(s, kind="client") == []
    assert "login.failed" in audit_actions(site, actor="alice")


async def test_get_userlogin_is_throttled_like_the_form(client: TestClient) -> None:
    for _ in range(5):
        await client.get("/rest/GetUserlogin", headers=basic("bob", "wrong"))
    response = await client.get("/rest/GetUserlogin", headers=basic("bob", PASSWORDS["bob"]))
    assert response.status == 401


async def test_web_profile_probe_answers_without_redirect_or_webauth(client: TestClient) -> None:
    for method in ("HEAD", "GET"):
        response = await client.request(method, "/openvpn-api/profile", allow_redirects=False)
        assert response.status == 200
        assert "Ovpn-WebAuth" not in response.headers


async def test_tls_crypt_v2_gateway_needs_a_client_that_says_it_supports_it(
    client: TestClient, site: Site
) -> None:
    with db.session(site.engine, write=True) as s:
        settings = queries.get_settings(s)
        settings.control_channel = "tls-crypt-v2"
        queries.save_settings(s, settings=settings)
    auth = basic("alice", PASSWORDS["alice"])
    refused = await client.get("/rest/GetUserlogin", headers=auth)
    assert refused.status == 403 and "<Type>Access denied</Type>" in await refused.text()
    accepted = await client.get("/rest/GetUserlogin?tls-cryptv2=1", headers=auth)
    assert accepted.status == 200 and "<tls-crypt-v2>" in await accepted.text()
