"""/api/v1/ipsec: admin bearer tokens only, the CLI's checks with 400/404/409 answers that
change nothing, tunnel status in every tunnel, and the PSK never in an answer or the audit."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sslvpn.store import db, queries
from tests.web.conftest import Site, audit_actions, login
from tests.web.test_api import ADMIN_TOKEN, USER_TOKEN, add_tokens, bearer
from tests.web.test_ipsec_pages import (
    PSK,
    StatusGateway,
    add_tunnel,
    seed,
    stored,
    up_status,
)

AUTH = bearer(ADMIN_TOKEN)
ROUTES = [
    ("GET", "/api/v1/ipsec/gateways"),
    ("POST", "/api/v1/ipsec/gateways"),
    ("GET", "/api/v1/ipsec/gateways/gw1"),
    ("PATCH", "/api/v1/ipsec/gateways/gw1"),
    ("DELETE", "/api/v1/ipsec/gateways/gw1"),
    ("GET", "/api/v1/ipsec/customer-gateways"),
    ("POST", "/api/v1/ipsec/customer-gateways"),
    ("GET", "/api/v1/ipsec/customer-gateways/dc2"),
    ("DELETE", "/api/v1/ipsec/customer-gateways/dc2"),
    ("GET", "/api/v1/ipsec/tunnels"),
    ("POST", "/api/v1/ipsec/tunnels"),
    ("GET", "/api/v1/ipsec/tunnels/t1"),
    ("PATCH", "/api/v1/ipsec/tunnels/t1"),
    ("DELETE", "/api/v1/ipsec/tunnels/t1"),
    ("POST", "/api/v1/ipsec/tunnels/t1/rekey"),
    ("POST", "/api/v1/ipsec/tunnels/t1/restart"),
    ("POST", "/api/v1/ipsec/tunnels/t1/down"),
    ("GET", "/api/v1/ipsec/tunnels/t1/config?format=swanctl"),
    ("GET", "/api/v1/ipsec/tunnels/t1/policies"),
    ("POST", "/api/v1/ipsec/tunnels/t1/policies"),
    ("DELETE", "/api/v1/ipsec/tunnels/t1/policies/1"),
]


@pytest.fixture
def gateway() -> StatusGateway:
    return StatusGateway()


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    ("who", "expected"),
    [("anonymous", 401), ("cookie", 401), ("user", 403), ("admin", 200)],
)
async def test_authorisation_matrix(
    client: TestClient, site: Site, method: str, path: str, who: str, expected: int
) -> None:
    """Only an enabled admin's bearer token works; the portal cookie never does."""
    seed(site)
    add_tokens(site)
    headers = {"user": bearer(USER_TOKEN), "admin": AUTH}.get(who, {})
    if who == "cookie":
        await login(client, "root")
    response = await client.request(method, path, headers=headers, json={})
    if who == "admin":  # authorised: whatever the operation answers, never an auth refusal
        assert response.status not in (401, 403)
    else:
        assert response.status == expected
        assert "error" in await response.json()
        assert stored(site)[2] == ["t1"]


async def call(
    client: TestClient, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    response = await client.request(method, f"/api/v1/ipsec{path}", headers=AUTH, json=body)
    return response.status, await response.json()


async def test_gateways_and_customer_gateways(client: TestClient, site: Site) -> None:
    add_tokens(site)
    status, body = await call(
        client,
        "POST",
        "/gateways",
        {"name": "gw1", "public_address": "198.18.0.1", "bandwidth_bps": 100_000_000},
    )
    assert status == 201
    assert body == {"name": "gw1", "public_address": "198.18.0.1", "bandwidth_bps": 100_000_000,
                    "nodes": []}
    refusals = [
        ({"name": "gw2", "public_address": "198.18.0.2", "nodes": ["nowhere"]}, 404, "no node"),
        ({"name": "gw2", "public_address": "198.18.0.2", "nodes": [7]}, 400, "wrong type"),
        ({"name": "gw2", "public_address": "127.0.0.1"}, 400, "loopback"),
        ({"name": "gw2", "public_address": "198.18.0.2", "bandwidth_bps": 10}, 400, "bandwidth"),
        ({"name": "gw2", "public_address": "198.18.0.2", "bandwidth_bps": True}, 400, "type"),
        ({"name": "gw 2", "public_address": "198.18.0.2"}, 400, "not allowed"),
        ({"name": "gw1", "public_address": "198.18.0.2"}, 409, "already exists"),
        ({"name": "gw2", "public_address": "198.18.0.2", "psk": "x"}, 400, "unknown field"),
    ]
    for request, code, reason in refusals:
        status, body = await call(client, "POST", "/gateways", request)
        assert status == code and reason in body["error"], request
    status, body = await call(client, "PATCH", "/gateways/gw1", {"bandwidth_bps": None})
    assert status == 200 and body["bandwidth_bps"] is None
    assert (await call(client, "PATCH", "/gateways/gw1", {"bandwidth_bps": 999}))[0] == 400
    assert (await call(client, "PATCH", "/gateways/nope", {"bandwidth_bps": None}))[0] == 404
    status, body = await call(client, "POST", "/customer-gateways", {"name": "dc1"})
    assert status == 400  # no address
    status, body = await call(
        client, "POST", "/customer-gateways", {"name": "dc1", "address": "224.0.0.1"}
    )
    assert status == 400 and "multicast" in body["error"]
    status, body = await call(
        client, "POST", "/customer-gateways", {"name": "dc1", "address": "2001:db8::7"}
    )
    assert status == 201 and body == {"name": "dc1", "address": "2001:db8::7"}
    assert [g["name"] for g in (await call(client, "GET", "/gateways"))[1]] == ["gw1"]
    assert (await call(client, "GET", "/customer-gateways/dc1"))[1]["address"] == "2001:db8::7"
    assert (await call(client, "GET", "/customer-gateways/nope"))[0] == 404
    assert await call(client, "DELETE", "/customer-gateways/dc1") == (200, {"deleted": True})
    assert await call(client, "DELETE", "/gateways/gw1") == (200, {"deleted": True})
    assert (await call(client, "DELETE", "/gateways/gw1"))[0] == 404
    assert stored(site)[:2] == ([], [])
    assert {
        "ipsec.gateway.create",
        "ipsec.gateway.bandwidth",
        "ipsec.customer_gateway.create",
        "ipsec.customer_gateway.delete",
        "ipsec.gateway.delete",
    } <= set(audit_actions(site, actor="root"))


def tunnel_body(**changes: Any) -> dict[str, Any]:
    body = {"name": "t2", "gateway": "gw1", "customer_gateway": "dc2", "psk": PSK}
    return body | changes


async def test_tunnels_never_return_their_key(
    client: TestClient, site: Site, gateway: StatusGateway
) -> None:
    seed(site)
    add_tokens(site)
    refusals = [
        (tunnel_body(psk="short"), 400, "too short"),
        (tunnel_body(ike_proposals="aes256gcm16-prfsha1-modp1024"), 400, "IKE proposals"),
        (tunnel_body(start_action="later"), 400, "start action"),
        (tunnel_body(gateway="nope"), 404, "no VPN gateway named"),
        (tunnel_body(customer_gateway="dc1"), 409, "already connects"),
        ({"name": "t2", "gateway": "gw1"}, 400, "missing field(s): customer_gateway, psk"),
    ]
    for request, code, reason in refusals:
        status, body = await call(client, "POST", "/tunnels", request)
        assert status == code and reason in body["error"], request
        assert PSK not in str(body)
    assert stored(site)[2] == ["t1"]
    status, body = await call(client, "POST", "/tunnels", tunnel_body(start_action="wait"))
    assert status == 201
    assert body["customer_gateway"] == "dc2" and body["peer_address"] == "198.19.0.3"
    assert body["start_action"] == "wait" and body["admin_up"] is True
    assert body["policies"] == [] and body["status"]["state"] == "down"
    assert "psk" not in body
    gateway.tunnels = [up_status("t1")]
    status, listed = await call(client, "GET", "/tunnels")
    assert [t["name"] for t in listed] == ["t1", "t2"]
    assert listed[0]["status"] == {
        "state": "up",
        "node": None,
        "last_error": None,
        "established_at": "2026-11-24T20:00:05+00:00",
        "spi_in": "c1a2b3d4",
        "spi_out": "0badcafe",
        "bytes_in": 4242,
        "bytes_out": 8484,
        "packets_in": 42,
        "packets_out": 84,
        "ike_rekey_in": None,
        "child_rekey_in": None,
        "child_expires_in": None,
        "ike_proposal": "aes256-sha256-modp2048",
        "esp_proposal": "aes256gcm16",
    }
    assert listed[0]["settings"]["dpd_delay"] == 30.0
    assert listed[0]["policies"][0]["local_cidr"] == "10.0.0.0/16"
    assert listed[1]["status"]["last_error"] == "not running"
    assert PSK not in str(listed)
    status, body = await call(client, "PATCH", "/tunnels/t2", {"admin_up": False})
    assert status == 200 and body["admin_up"] is False
    assert (await call(client, "PATCH", "/tunnels/t2", {"admin_up": "no"}))[0] == 400
    assert (await call(client, "DELETE", "/tunnels/t2"))[0] == 200
    assert (await call(client, "GET", "/tunnels/t2"))[0] == 404
    with db.session(site.engine, write=False) as s:
        details = [e.detail or "" for e in queries.list_audit(s, limit=1000)]
    assert details and not any(PSK in d for d in details)
    assert {"ipsec.tunnel.create", "ipsec.tunnel.down", "ipsec.tunnel.delete"} <= set(
        audit_actions(site, actor="root")
    )


async def test_policies_over_the_api(client: TestClient, site: Site) -> None:
    seed(site)
    add_tokens(site)
    add_tunnel(site, "t2", "dc2")
    refusals = [
        ({"local_cidr": "10.0.0.0/16", "peer_cidr": "192.168.0.0/16"}, 400, "tunnel 't1'"),
        ({"local_cidr": "10.0.0.5/16", "peer_cidr": "172.16.0.0/24"}, 400, "host bits"),
        ({"local_cidr": "10.0.0.0/16"}, 400, "missing field(s): peer_cidr"),
    ]
    for request, code, reason in refusals:
        status, body = await call(client, "POST", "/tunnels/t2/policies", request)
        assert status == code and reason in body["error"], request
    assert (await call(client, "GET", "/tunnels/t2/policies")) == (200, [])
    wanted = {"local_cidr": "10.0.0.0/16", "peer_cidr": "172.16.0.0/24"}
    status, made = await call(client, "POST", "/tunnels/t2/policies", wanted)
    assert status == 201 and made == {"id": made["id"], **wanted}
    status, body = await call(client, "POST", "/tunnels/t2/policies", wanted)
    assert status == 409 and "already has policy" in body["error"]
    assert (await call(client, "POST", "/tunnels/nope/policies", wanted))[0] == 404
    assert (await call(client, "GET", "/tunnels/t2/policies")) == (200, [made])
    # a policy id of another tunnel is not found through this one
    t1_policy = (await call(client, "GET", "/tunnels/t1/policies"))[1][0]["id"]
    assert (await call(client, "DELETE", f"/tunnels/t2/policies/{t1_policy}"))[0] == 404
    assert (await call(client, "DELETE", f"/tunnels/t2/policies/{made['id']}"))[0] == 200
    assert stored(site)[3] == [("t1", "10.0.0.0/16", "192.168.1.0/24")]


async def test_tunnel_settings_and_actions_over_the_api(
    client: TestClient, site: Site, gateway: StatusGateway
) -> None:
    seed(site)
    add_tokens(site)
    status, body = await call(client, "POST", "/tunnels", tunnel_body(
        start_action="trap", settings={"dpd_delay": "10s", "child_lifetime": 1200}))
    assert status == 201 and body["start_action"] == "trap"
    assert body["settings"]["dpd_delay"] == 10.0 and body["settings"]["child_lifetime"] == 1200
    refusals = [
        ({"settings": {"dpd_timeout": "2h"}}, "dpd timeout must be 0 (off) or 1s to 1h"),
        ({"settings": {"dpd_action": "hold"}}, "dpd action must be one of"),
        ({"settings": {"wobble": 1}}, "unknown tunnel setting 'wobble'"),
        ({"settings": {"dpd_delay": True}}, "setting 'dpd_delay' has the wrong type"),
        ({"settings": {"fragment_size": 100}}, "fragment size must be 220 to 65535 bytes"),
        ({"start_action": "later"}, "start action"),
    ]
    for request, reason in refusals:
        status, answer = await call(client, "PATCH", "/tunnels/t2", request)
        assert status == 400 and reason in answer["error"], (request, answer)
    status, body = await call(client, "PATCH", "/tunnels/t2",
                              {"settings": {"rekey_margin": "2m", "dpd_action": "none",
                                            "fragment_size": 1400}})
    assert status == 200 and body["settings"]["rekey_margin"] == 120.0
    assert body["settings"]["fragment_size"] == 1400
    assert body["settings"]["dpd_delay"] == 10.0  # merged over what was stored
    status, answer = await call(client, "POST", "/tunnels/t1/restart")
    assert status == 409 and "is not up" in answer["error"]
    gateway.tunnels = [up_status("t1")]
    status, answer = await call(client, "POST", "/tunnels/t1/rekey", {"ike": True})
    assert status == 200 and answer == {"message": "tunnel t1: rekey-ike"}
    assert (await call(client, "POST", "/tunnels/t1/down"))[0] == 200
    assert (await call(client, "POST", "/tunnels/nope/down"))[0] == 404
    assert gateway.actions == [("t1", "rekey-ike"), ("t1", "down")]
    assert {"ipsec.tunnel.settings", "ipsec.tunnel.terminate"} <= set(
        audit_actions(site, actor="root"))


async def test_peer_configuration_download(client: TestClient, site: Site) -> None:
    """The customer gateway's side as a file; the PSK only with include_psk, and audited."""
    seed(site)
    add_tokens(site)
    url = "/api/v1/ipsec/tunnels/t1/config"
    response = await client.get(url, params={"format": "swanctl"}, headers=AUTH)
    assert response.status == 200 and response.content_type == "text/plain"
    assert response.headers["Content-Disposition"] == 'attachment; filename="t1.swanctl.conf"'
    assert response.headers["Cache-Control"] == "no-store"
    text = await response.text()
    assert "remote_addrs = 198.18.0.1\n" in text and "local_ts = 192.168.1.0/24\n" in text
    assert PSK not in text and "0x" + PSK.encode().hex() not in text
    assert "ipsec.tunnel.psk_shown" not in audit_actions(site, actor="root")
    shown = await client.get(url, params={"format": "text", "include_psk": "true"},
                             headers=AUTH)
    assert PSK in await shown.text()
    assert "ipsec.tunnel.psk_shown" in audit_actions(site, actor="root")
    for params, status in (({"format": "cisco"}, 400), ({}, 400),
                           ({"format": "text", "include_psk": "yes"}, 400),
                           ({"format": "text", "other": "1"}, 400)):
        refused = await client.get(url, params=params, headers=AUTH)
        assert refused.status == status and "error" in await refused.json()
    missing = await client.get("/api/v1/ipsec/tunnels/nope/config?format=text", headers=AUTH)
    assert missing.status == 404
