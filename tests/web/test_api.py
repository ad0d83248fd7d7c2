"""The JSON API: bearer tokens for admins only, and each operation's happy path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, make_mocked_request

from client_profiles.accounts import USER_NAME_PATTERN
from sslvpn.store import db, queries
from tests.web.conftest import Clock, FakeGateway, Site, audit_actions, issue_for
from web.api import QUERIES, in_scope
from web.import_links import token_hash
from web.openapi import document

ADMIN_TOKEN = "svt_test-admin-token"
USER_TOKEN = "svt_test-user-token"


def add_tokens(site: Site) -> None:
    with db.session(site.engine, write=True) as s:
        for name, token in (("root", ADMIN_TOKEN), ("alice", USER_TOKEN)):
            user = queries.get_user(s, name=name)
            assert user.id is not None
            queries.add_api_token(s, user_id=user.id, name="t", token_hash=token_hash(token))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_api_needs_an_admin_bearer_token(client: TestClient, site: Site) -> None:
    add_tokens(site)
    assert (await client.get("/api/v1/users")).status == 401
    assert (await client.get("/api/v1/users", headers=bearer("svt_unknown"))).status == 401
    response = await client.get("/api/v1/users", headers=bearer(USER_TOKEN))
    assert response.status == 403 and "error" in await response.json()
    response = await client.get("/api/v1/users", headers=bearer(ADMIN_TOKEN))
    assert response.status == 200
    assert [u["name"] for u in await response.json()] == ["alice", "bob", "root"]


@pytest.mark.parametrize(("query", "refusal"), [
    ("/users?limit=5", "unknown query parameter; allowed: \n"),
    ("/certificates?owner=alice", "unknown query parameter; allowed: status, user"),
    ("/certificates?status=lost", "status must be one of 'valid', 'revoked' or 'superseded'"),
    ("/sessions?older_than=new", "query parameter 'older_than' does not match"),
    ("/traffic", "missing query parameter(s): scope"),
    ("/traffic?scope=site:x", "query parameter 'scope' does not match"),
    ("/policy-check?user=-x&dest=10.0.0.1", "query parameter 'user' does not match"),
    ("/ipsec/tunnels/t1/config?format=cisco", "format must be one of 'swanctl'"),
    ("/ipsec/tunnels/t1/config?format=text&include_psk=yes", "include psk must be one of"),
])
async def test_each_query_is_checked_by_the_model_that_documents_it(
    client: TestClient, site: Site, query: str, refusal: str
) -> None:
    """One pydantic model per route (`web.api.QUERIES`) both refuses a bad query, with one
    line naming the parameter, before the handler runs, and is the document's parameters."""
    add_tokens(site)
    answer = await client.get(f"/api/v1{query}", headers=bearer(ADMIN_TOKEN))
    assert answer.status == 400
    assert refusal in (await answer.json())["error"] + "\n", await answer.json()
    doc = document()["paths"]
    for path, model in QUERIES.items():
        operations = doc[path.removeprefix("/api/v1")].values()
        documented = [o["parameters"] for o in operations if "parameters" in o]
        assert documented == [model.parameters()], path


async def test_openapi_document_is_public_and_lists_every_route(client: TestClient) -> None:
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.0")
    routes = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = {
        (r.method, r.resource.canonical.removeprefix("/api/v1"))
        for r in client.app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/api/v1/")
        and r.method != "HEAD"
        and not r.resource.canonical.endswith("openapi.json")
    }
    assert routes == served


async def test_bodies_are_described_and_checked_by_one_model(
    client: TestClient, site: Site
) -> None:
    """Each request body in the document is a model's schema, and the handler refuses what
    that schema refuses: a user name breaking accounts.USER_NAME_PATTERN, a null where the
    model has no null, a device name too long for the CLI's pattern."""
    add_tokens(site)
    doc = await (await client.get("/api/v1/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for item in doc["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert schemas[ref.rsplit("/", 1)[1]]["additionalProperties"] is False
    assert schemas["NewUser"]["properties"]["name"]["pattern"] == (
        f"^{USER_NAME_PATTERN.pattern}$")
    auth = bearer(ADMIN_TOKEN)
    for url, body, reason in (
        ("/api/v1/users", {"name": "-dave"}, "field 'name' does not match"),
        ("/api/v1/users", {"name": "dave", "email": None}, "field 'email' may not be null"),
        ("/api/v1/certificates", {"user": "alice", "device": "d" * 33},
         "field 'device' does not match"),
    ):
        refused = await client.post(url, json=body, headers=auth)
        assert refused.status == 400 and reason in (await refused.json())["error"], body


async def test_users_lifecycle_over_the_api(client: TestClient, site: Site) -> None:
    add_tokens(site)
    auth = bearer(ADMIN_TOKEN)
    created = await client.post("/api/v1/users", json={"name": "dave"}, headers=auth)
    assert created.status == 201
    body = await created.json()
    assert body["role"] == "user" and len(body["password"]) >= 20
    bad = await client.post("/api/v1/users", json={"name": "dave", "x": 1}, headers=auth)
    assert bad.status == 400
    for weak, why in (("short-pw", "at least 12 characters"),
                      ("password1234", "common or guessable")):
        refused = await client.post("/api/v1/users", json={"name": "erin", "password": weak},
                                    headers=auth)
        assert refused.status == 400 and why in (await refused.json())["error"]
    dup = await client.post("/api/v1/users", json={"name": "dave"}, headers=auth)
    assert dup.status == 409
    patched = await client.patch("/api/v1/users/dave", json={"disabled": True}, headers=auth)
    assert (await patched.json())["disabled"] is True
    selfish = await client.patch("/api/v1/users/root", json={"disabled": True}, headers=auth)
    assert selfish.status == 409
    gone = await client.delete("/api/v1/users/dave", headers=auth)
    assert await gone.json() == {"certificates_revoked": 0, "sessions_ended": 0}
    assert (await client.get("/api/v1/users/dave", headers=auth)).status == 404
    assert {"user.add", "user.update", "user.delete"} <= set(audit_actions(site, actor="root"))


async def test_certificates_profiles_and_kick_over_the_api(
    client: TestClient, site: Site, gateway: FakeGateway
) -> None:
    add_tokens(site)
    auth = bearer(ADMIN_TOKEN)
    issued = await client.post(
        "/api/v1/certificates", json={"user": "alice", "device": "ci", "days": 7}, headers=auth
    )
    assert issued.status == 201
    serial = (await issued.json())["serial"]
    listed = await client.get("/api/v1/certificates?user=alice&status=valid", headers=auth)
    assert [c["serial"] for c in await listed.json()] == [serial]
    profile = await client.get(f"/api/v1/certificates/{serial}/profile", headers=auth)
    assert profile.content_type == "application/x-openvpn-profile"
    too_long = await client.post(f"/api/v1/certificates/{serial}/renew",
                                 json={"overlap_days": 366}, headers=auth)
    assert too_long.status == 400 and "overlap_days" in (await too_long.json())["error"]
    renewed = await client.post(f"/api/v1/certificates/{serial}/renew", headers=auth)
    new_serial = (await renewed.json())["serial"]
    old = await (await client.get(f"/api/v1/certificates/{serial}", headers=auth)).json()
    assert (old["status"], old["superseded_by"]) == ("valid", new_serial)
    assert old["overlap_until"] is not None  # works for 7 days or until the new one connects
    again = await client.post(f"/api/v1/certificates/{new_serial}/renew",
                              json={"overlap_days": 0}, headers=auth)
    assert again.status == 201
    replaced = await (await client.get(f"/api/v1/certificates/{new_serial}", headers=auth)).json()
    assert (replaced["status"], replaced["revocation_reason"]) == ("revoked", "superseded")
    new_serial = (await again.json())["serial"]
    gateway.add("s7", "alice", new_serial)
    sessions = await (await client.get("/api/v1/sessions", headers=auth)).json()
    assert [s["session_id"] for s in sessions] == ["s7"]
    assert (sessions[0]["client_version"], sessions[0]["client_platform"]) == ("2.6.14", "linux")
    assert sessions[0]["client_gui"] is None
    for older, found in (("2.6", []), ("2.6.15", ["s7"])):
        listed = await client.get(f"/api/v1/sessions?older_than={older}", headers=auth)
        assert [s["session_id"] for s in await listed.json()] == found
    bad = await client.get("/api/v1/sessions?older_than=new", headers=auth)
    assert bad.status == 400 and "older_than" in (await bad.json())["error"]
    revoked = await client.post(
        f"/api/v1/certificates/{new_serial}/revoke", json={"reason": "keyCompromise"}, headers=auth
    )
    body = await revoked.json()
    assert body["sessions_ended"] == 1 and body["certificate"]["status"] == "revoked"
    again = await client.post(f"/api/v1/certificates/{new_serial}/revoke", headers=auth)
    assert again.status == 409
    gateway.add("s8", "bob", issue_for(site, "bob"))
    kicked = await client.post("/api/v1/sessions/s8/kick", headers=auth)
    assert await kicked.json() == {"kicked": True}
    assert (await client.post("/api/v1/sessions/s8/kick", headers=auth)).status == 404
    missing = await client.post(
        "/api/v1/certificates", json={"user": "nobody", "device": "x"}, headers=auth
    )
    assert missing.status == 404


async def test_hostile_json_gets_a_400_not_a_500(client: TestClient, site: Site) -> None:
    add_tokens(site)
    auth = {**bearer(ADMIN_TOKEN), "Content-Type": "application/json"}
    deep = "[" * 5000 + "]" * 5000
    surrogate = '{"name": "zed", "email": "\\ud800@mail.example"}'
    for body, message in ((deep, "nested too deeply"), ('{"a":' * 5000 + "1" + "}" * 5000,
                                                        "nested too deeply"),
                          (surrogate, "lone UTF-16 surrogate")):
        response = await client.post("/api/v1/users", data=body, headers=auth)
        assert response.status == 400, await response.text()
        assert message in (await response.json())["error"]
    assert (await client.get("/api/v1/users/zed", headers=auth)).status == 404


async def test_api_tokens_expire_and_keep_to_their_scope(
    client: TestClient, site: Site, clock: Clock
) -> None:
    now = datetime.fromtimestamp(clock.now, UTC)
    tokens = {"read": ("read-only", None), "issue": ("issue-only", None),
              "old": ("full", now + timedelta(hours=1))}
    with db.session(site.engine, write=True) as s:
        root = queries.get_user(s, name="root")
        assert root.id is not None
        for name, (scope, expires) in tokens.items():
            queries.add_api_token(s, user_id=root.id, name=name, token_hash=token_hash(name),
                                  scope=scope, expires_at=expires)
    issue = {"user": "alice", "device": "ci", "days": 7}
    assert (await client.get("/api/v1/users", headers=bearer("read"))).status == 200
    refused = await client.post("/api/v1/certificates", json=issue, headers=bearer("read"))
    assert refused.status == 403 and "read-only" in (await refused.json())["error"]
    issued = await client.post("/api/v1/certificates", json=issue, headers=bearer("issue"))
    assert issued.status == 201
    serial = (await issued.json())["serial"]
    profile = await client.get(f"/api/v1/certificates/{serial}/profile", headers=bearer("issue"))
    assert profile.status == 200
    metadata = await client.get(f"/api/v1/certificates/{serial}", headers=bearer("read"))
    assert metadata.status == 200
    secret = await client.get(f"/api/v1/certificates/{serial}/profile", headers=bearer("read"))
    assert secret.status == 403  # a monitor's token never carries the keys away
    for method, path in (("POST", f"/api/v1/certificates/{serial}/revoke"),
                         ("GET", "/api/v1/users"), ("DELETE", "/api/v1/users/alice")):
        response = await client.request(method, path, headers=bearer("issue"))
        assert response.status == 403, (method, path)
    assert (await client.get("/api/v1/users", headers=bearer("old"))).status == 200
    clock.now += 3601
    expired = await client.get("/api/v1/users", headers=bearer("old"))
    assert expired.status == 401 and "expired" in (await expired.json())["error"]


@pytest.mark.parametrize(("scope", "target", "allowed"), [
    ("read-only", "/api/v1/ipsec/tunnels/t1/config?format=swanctl", True),
    ("read-only", "/api/v1/ipsec/tunnels/t1/config?format=swanctl&include_psk=true", False),
    ("full", "/api/v1/ipsec/tunnels/t1/config?format=swanctl&include_psk=true", True),
    ("read-only", "/api/v1/certificates/1f/profile", False),
    ("issue-only", "/api/v1/certificates/1f/profile", True),
])
def test_a_read_only_token_reads_no_secret(scope: str, target: str, allowed: bool) -> None:
    assert in_scope(scope, make_mocked_request("GET", target)) is allowed
