"""The portal's access page: admins only, CSRF like every form, groups, members and rules
changed with the CLI's checks and audit, hit counters from the gateway, and the "who can
reach what" form answering as `sslvpn policy check` does."""

from __future__ import annotations

import html

import pytest
from aiohttp.test_utils import TestClient

from sslvpn.store import access_queries, db, queries
from tests.web.conftest import FakeGateway, Site, audit_actions, csrf_from, login
from tests.web.test_admin import post


@pytest.fixture
def vpc(site: Site) -> Site:
    with db.session(site.engine, write=True) as s:
        settings = queries.get_settings(s)
        settings.vpc_networks = ["10.20.0.0/16"]
        queries.save_settings(s, settings=settings)
    return site


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/admin/access"), ("GET", "/admin/access/check?user=alice&dest=10.20.0.1"),
    ("POST", "/admin/access/groups"), ("POST", "/admin/access/rules"),
    ("POST", "/admin/access/default"), ("POST", "/admin/access/members")])
async def test_only_admins_reach_the_access_page(client: TestClient, vpc: Site, method: str,
                                                 path: str) -> None:
    anonymous = await client.request(method, path, allow_redirects=False)
    assert anonymous.status in (303, 403)
    token = await login(client, "alice")
    answer = await client.request(method, path, data={"csrf_token": token, "name": "x",
                                                      "default": "nothing"})
    assert answer.status == 403
    with db.session(vpc.engine, write=False) as s:
        assert access_queries.revision(s) == 0


async def test_a_form_without_the_csrf_token_changes_nothing(client: TestClient,
                                                             vpc: Site) -> None:
    await login(client, "root")
    answer = await client.post("/admin/access/groups", data={"name": "db"})
    assert answer.status == 403
    with db.session(vpc.engine, write=False) as s:
        assert access_queries.list_groups(s) == []


async def test_admin_manages_groups_rules_and_checks_who_reaches_what(
        client: TestClient, vpc: Site, gateway: FakeGateway) -> None:
    await login(client, "root")
    token = await csrf_from(client, "/admin/access")
    status, page = await post(client, "/admin/access/groups", token, name="db")
    assert status == 200 and "Group db added." in page
    status, page = await post(client, "/admin/access/members", token, user="alice",
                              group="db", action="add")
    assert status == 200 and "alice joined db" in page
    status, page = await post(client, "/admin/access/rules", token, owner_kind="group",
                              owner="db", to="10.99.0.0/24", proto="any", action="allow")
    assert status == 400 and "is not inside the VPC networks (10.20.0.0/16)" in page
    status, page = await post(client, "/admin/access/rules", token, owner_kind="group",
                              owner="db", to="10.20.1.5/32", proto="tcp", port="5432",
                              action="allow", priority="100")
    assert status == 200 and "pushed routes at their next connect" in page
    status, page = await post(client, "/admin/access/default", token, default="nothing")
    assert status == 200 and "Default set to nothing." in page

    gateway.hits = [("1", True, 42), ("default", False, 7)]
    page = await (await client.get("/admin/access")).text()
    assert "<td>42</td>" in page and "denied 7" in page and "alice" in page
    answer = await client.get("/admin/access/check",
                              params={"user": "alice", "dest": "10.20.1.5:5432/tcp"})
    page = html.unescape(await answer.text())
    assert answer.status == 200
    assert ">allow</strong>: alice" in page
    assert "Decided by: rule 1 (group db: allow tcp to 10.20.1.5/32 port 5432" in page
    answer = await client.get("/admin/access/check", params={"user": "alice",
                                                              "dest": "10.20.1.5:22"})
    assert ">deny</strong>" in await answer.text()
    answer = await client.get("/admin/access/check", params={"user": "alice", "dest": "x:1"})
    assert answer.status == 400 and "is not an IP address" in html.unescape(await answer.text())

    status, page = await post(client, "/admin/access/rules/1/delete", token)
    assert status == 200 and "Rule 1 deleted." in page
    status, page = await post(client, "/admin/access/groups/db/delete", token)
    assert status == 200 and "Group db and its rules deleted." in page
    actions = audit_actions(vpc, actor="root")
    for action in ("group.add", "user.groups", "rule.add", "policy.default", "rule.delete",
                   "group.delete"):
        assert action in actions
