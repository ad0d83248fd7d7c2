"""Nodes in the portal and the REST API: admins only, the same sub-pool checks as the CLI
(one clear line, nothing written), removal refused while a node has live sessions."""

from __future__ import annotations

import html
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from client_profiles import fleet
from sslvpn.store import db, queries
from sslvpn.store.models import utcnow
from tests.web.conftest import FakeGateway, Site, audit_actions, csrf_from, login
from tests.web.test_admin import post
from tests.web.test_api import ADMIN_TOKEN, USER_TOKEN, add_tokens, bearer
from tests.web.test_settings_networks import FORM

AUTH = bearer(ADMIN_TOKEN)


def _names(site: Site) -> list[str]:
    return [node.name for node in fleet.node_statuses(site.engine)]


def _live_session(site: Site, node: str) -> None:
    with db.session(site.engine, write=True) as s:
        queries.open_session_record(
            s, session_id="udp-1", node=node, gateway_name="default", user_name="alice",
            certificate_serial="ab",
            real_address="198.51.100.7:5000", vpn_address="10.8.0.2", protocol="udp",
            connected_at=utcnow())


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/admin/nodes"), ("POST", "/admin/nodes"), ("POST", "/admin/nodes/a/remove")])
async def test_only_admins_reach_the_nodes_page(
    client: TestClient, site: Site, method: str, path: str
) -> None:
    fleet.add_node(site.engine, name="a", public_addresses=["198.18.0.1"], actor="test")
    anonymous = await client.request(method, path, allow_redirects=False)
    assert anonymous.status in (303, 403)  # the login page, or no CSRF token
    token = await login(client, "alice")
    answer = await client.request(method, path, data={"csrf_token": token, "name": "x",
                                                      "public_addresses": "198.18.0.9"})
    assert answer.status == 403
    assert _names(site) == ["a"]


async def test_admin_adds_and_removes_nodes_with_the_cli_checks(
    client: TestClient, site: Site
) -> None:
    await login(client, "root")
    token = await csrf_from(client, "/admin/nodes")
    form = {"csrf_token": token, "name": "a", "public_addresses": "198.18.0.1, a.example.test"}
    added = await client.post("/admin/nodes", data=form)
    page = await added.text()
    assert added.status == 200 and "Node a added with the client pool 10.8.0.0/26" in page
    assert "10.8.0.0/26" in page and "a.example.test" in page
    refused = await client.post("/admin/nodes", data={**form, "name": "b", "pool": "10.8.0.32/27"})
    assert refused.status == 400
    assert "pool 10.8.0.32/27 overlaps node a&#39;s pool 10.8.0.0/26" in await refused.text()
    assert _names(site) == ["a"]
    forged = await client.post("/admin/nodes", data={**form, "name": "c", "csrf_token": "x"})
    assert forged.status == 403 and _names(site) == ["a"]
    _live_session(site, "a")
    kept = await client.post("/admin/nodes/a/remove", data={"csrf_token": token})
    assert kept.status == 409 and "node a has 1 live session" in await kept.text()
    removed = await client.post("/admin/nodes/a/remove", data={"csrf_token": token,
                                                               "force": "yes"})
    assert removed.status == 200 and "Node a removed; 1 session(s) ended." in await removed.text()
    assert _names(site) == []
    assert {"node.add", "node.remove"} <= set(audit_actions(site, actor="root"))


async def call(
    client: TestClient, method: str, path: str, body: dict[str, Any] | None = None,
    headers: dict[str, str] = AUTH,
) -> tuple[int, Any]:
    response = await client.request(method, f"/api/v1{path}", headers=headers, json=body)
    return response.status, await response.json()


async def test_nodes_over_the_api(client: TestClient, site: Site) -> None:
    add_tokens(site)
    assert (await call(client, "GET", "/nodes", headers=bearer(USER_TOKEN)))[0] == 403
    status, body = await call(client, "POST", "/nodes", {
        "name": "a", "public_addresses": ["198.18.0.1"], "vpc_addresses": ["10.20.0.11"]})
    assert status == 201
    assert body == {"name": "a", "public_addresses": ["198.18.0.1"], "pool": "10.8.0.0/26",
                    "pool6": None, "state": "down", "sessions": 0, "software_version": None,
                    "last_seen": None}
    refusals = [  # well-formed but refused by the fleet: 409, with the CLI's line
        ({"pool": "10.9.0.0/26"}, 409, "pool 10.9.0.0/26 is outside the fleet pool 10.8.0.0/24"),
        ({"pool": "10.8.0.32/27"}, 409, "pool 10.8.0.32/27 overlaps node a's pool 10.8.0.0/26"),
        ({"pool": "10.8.0.65/26"}, 409, "pool '10.8.0.65/26' is not a network in CIDR form"),
        ({"pool6": "fd00:8::/64"}, 409,
         "IPv6 pool fd00:8::/64 given, but the fleet has no IPv6 pool"),
        ({"name": "a"}, 409, "node 'a' already exists"),
        # malformed: the OpenAPI document's patterns say so, 400
        ({"pool": "10.8.0.0/30"}, 400, "field 'pool' does not match"),
        ({"public_addresses": [7]}, 400, "field 'public_addresses' has the wrong type"),
        ({"public_addresses": []}, 400, "field 'public_addresses': List should have at least 1"),
        ({"vpc_addresses": ["10.20.0.300"]}, 400, "field 'vpc_addresses' does not match"),
    ]
    for changes, code, reason in refusals:
        request = {"name": "b", "public_addresses": ["198.18.0.2"], **changes}
        status, body = await call(client, "POST", "/nodes", request)
        assert status == code and body["error"].startswith(reason), request
    assert await call(client, "GET", "/node-routes") == (
        200, [{"node": "a", "destination": "10.8.0.0/26", "next_hop": "10.20.0.11"}])
    _live_session(site, "a")
    status, body = await call(client, "DELETE", "/nodes/a")
    assert status == 409 and "1 live session" in body["error"]
    assert (await call(client, "DELETE", "/nodes/a?force=1"))[0] == 400
    assert await call(client, "DELETE", "/nodes/a?force=true") == (
        200, {"deleted": True, "sessions_ended": 1})
    assert (await call(client, "DELETE", "/nodes/a"))[0] == 404
    assert await call(client, "GET", "/nodes") == (200, [])


async def test_settings_keep_every_node_inside_the_pools_and_take_keepalive(
    client: TestClient, site: Site
) -> None:
    fleet.add_node(site.engine, name="a", public_addresses=["198.18.0.1"], pool="10.8.0.192/26",
                   actor="test")
    csrf = await login(client, "root")

    async def save(**changes: str) -> tuple[int, str]:
        answer = await client.post("/admin/settings", data={"csrf_token": csrf, **FORM, **changes})
        return answer.status, html.unescape(await answer.text())

    status, page = await save(pool_cidr="10.8.0.0/25")
    assert status == 400 and "Pool 10.8.0.0/25 does not hold node a's pool 10.8.0.192/26." in page
    status, page = await save(keepalive_interval="10", keepalive_timeout="15")
    assert status == 400
    assert "Keepalive restart 15 s must be at least twice the ping 10 s." in page
    status, page = await save(keepalive_interval="4", keepalive_timeout="12",
                              heartbeat_timeout="9", pool_cidr="10.8.0.0/16")
    assert status == 200 and "Settings saved." in page, page
    with db.session(site.engine, write=False) as s:
        stored = queries.get_settings(s)
    assert (stored.keepalive_interval, stored.keepalive_timeout) == (4, 12)
    assert (stored.heartbeat_timeout, stored.pool_cidr) == (9, "10.8.0.0/16")


async def test_the_api_reads_and_sets_the_keepalive_as_the_settings_page_checks_it(
    client: TestClient, site: Site
) -> None:
    add_tokens(site)
    url = "/api/v1/keepalive"
    stored = {"keepalive_interval": 5, "keepalive_timeout": 12, "heartbeat_timeout": 15}
    assert await (await client.get(url, headers=AUTH)).json() == stored
    assert (await client.get(url, headers=bearer(USER_TOKEN))).status == 403
    response = await client.put(url, headers=AUTH,
                                json={"keepalive_interval": 4, "keepalive_timeout": 12})
    assert response.status == 200, await response.text()
    stored = {**stored, "keepalive_interval": 4, "keepalive_timeout": 12}
    assert await response.json() == stored
    assert "settings.change" in audit_actions(site, actor="root")
    for refused, status, reason in (
        ({"keepalive_interval": 10, "keepalive_timeout": 15}, 409, "at least twice the ping"),
        ({"heartbeat_timeout": 2}, 409, "heartbeat timeout must be 3 to"),
        ({"keepalive_interval": True}, 400, "wrong type"),
        ({"ping": 5}, 400, "unknown field"),
    ):
        response = await client.put(url, headers=AUTH, json=refused)
        assert response.status == status, refused
        assert reason in (await response.json())["error"], refused
    with db.session(site.engine, write=False) as s:
        settings = queries.get_settings(s)
    assert (settings.keepalive_interval, settings.keepalive_timeout) == (4, 12)


async def test_a_fleets_sessions_are_listed_with_their_node_and_kicked_through_the_store(
    client: TestClient, site: Site, gateway: FakeGateway
) -> None:
    """The portal lists every node's sessions from the store (this host's gateway adds what
    it knows of its own) and a kick is asked of the node holding the session."""
    fleet.add_node(site.engine, name="a", public_addresses=["198.18.0.1"], actor="test")
    fleet.add_node(site.engine, name="b", public_addresses=["198.18.0.2"], actor="test")
    _live_session(site, "b")
    gateway.add("udp-1", "alice", "ab")  # this portal's gateway holds it: fresh counters
    add_tokens(site)
    status, [listed] = await call(client, "GET", "/sessions")
    assert status == 200
    assert (listed["session_id"], listed["node"], listed["bytes_in"]) == ("udp-1", "b", 1234)
    csrf = await login(client, "root")
    page = await (await client.get("/admin/sessions")).text()
    assert "<th>Node</th>" in page and "<td>b</td>" in page
    assert await call(client, "POST", "/sessions/udp-1/kick") == (200, {"kicked": True})
    _, page = await post(client, "/admin/sessions/udp-1/kick", csrf)
    assert gateway.kicked == []  # not asked directly: the node holding it ends it
    with db.session(site.engine, write=False) as s:
        [record] = queries.list_session_records(s)
    assert record.end_requested == "kicked by root" and record.disconnected_at is None
