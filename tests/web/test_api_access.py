"""The access policy over /api/v1: groups, members, rules (with the gateway's hits), the
default and the policy check, refused as the document says (400, 404, 409)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from sslvpn.store import db, queries
from tests.web.conftest import FakeGateway, Site, audit_actions
from tests.web.test_api import ADMIN_TOKEN, USER_TOKEN, add_tokens, bearer

AUTH = bearer(ADMIN_TOKEN)


async def test_access_policy_over_the_api(client: TestClient, site: Site,
                                          gateway: FakeGateway) -> None:
    add_tokens(site)
    with db.session(site.engine, write=True) as s:
        settings = queries.get_settings(s)
        settings.vpc_networks = ["10.20.0.0/16"]
        queries.save_settings(s, settings=settings)
    assert (await client.get("/api/v1/rules", headers=bearer(USER_TOKEN))).status == 403
    added = await client.post("/api/v1/groups", json={"name": "db"}, headers=AUTH)
    assert added.status == 201 and (await added.json())["name"] == "db"
    assert (await client.post("/api/v1/groups", json={"name": "db"}, headers=AUTH)).status == 409
    assert (await client.post("/api/v1/groups", json={"name": "a b"},
                              headers=AUTH)).status == 400
    joined = await client.post("/api/v1/users/alice/groups", json={"add": ["db"]}, headers=AUTH)
    assert await joined.json() == {"user": "alice", "groups": ["db"]}
    assert (await client.post("/api/v1/users/alice/groups", json={"add": ["nope"]},
                              headers=AUTH)).status == 404
    outside = await client.post("/api/v1/rules", json={"group": "db", "to": "10.99.0.0/24"},
                                headers=AUTH)
    assert outside.status == 409 and "not inside the VPC" in (await outside.json())["error"]
    rule = await client.post("/api/v1/rules", headers=AUTH, json={
        "group": "db", "to": "10.20.1.5/32", "proto": "tcp", "port": "5432"})
    assert rule.status == 201
    assert await rule.json() == {"id": 1, "group": "db", "user": None, "to": "10.20.1.5/32",
                                 "proto": "tcp", "ports": "5432", "action": "allow",
                                 "priority": 100, "packets": 0}
    put = await client.put("/api/v1/access-default", json={"default": "nothing"}, headers=AUTH)
    assert await put.json() == {"default": "nothing"}
    gateway.hits = [("1", True, 5)]
    assert [r["packets"] for r in await (await client.get("/api/v1/rules",
                                                          headers=AUTH)).json()] == [5]
    verdict = await client.get("/api/v1/policy-check", headers=AUTH,
                               params={"user": "alice", "dest": "10.20.1.5:5432/tcp"})
    body = await verdict.json()
    assert (body["allow"], body["rule_id"], body["destination"]) == (True, 1,
                                                                     "10.20.1.5:5432/tcp")
    assert body["pushed_routes"] == ["10.20.1.5/32"]
    denied = await (await client.get("/api/v1/policy-check", headers=AUTH, params={
        "user": "alice", "dest": "10.20.1.5:22"})).json()
    assert (denied["allow"], denied["decided_by"]) == (False, "the default (nothing)")
    assert (await client.get("/api/v1/policy-check", headers=AUTH, params={
        "user": "nobody", "dest": "10.20.1.5"})).status == 404
    assert (await client.delete("/api/v1/rules/1", headers=AUTH)).status == 200
    assert (await client.delete("/api/v1/rules/1", headers=AUTH)).status == 404
    for beyond in ("0", "-1", str(2**63), "25787878989725409280"):  # no row, not a 500
        assert (await client.delete(f"/api/v1/rules/{beyond}", headers=AUTH)).status == 404
    assert (await client.delete("/api/v1/groups/db", headers=AUTH)).status == 200
    assert [g for g in await (await client.get("/api/v1/groups", headers=AUTH)).json()] == []
    assert {"group.add", "user.groups", "rule.add", "policy.default", "rule.delete",
            "group.delete"} <= set(audit_actions(site, actor="root"))
