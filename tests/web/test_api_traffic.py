"""GET /api/v1/traffic: one scope's history as JSON, for admin tokens; bad input is a 400."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp.test_utils import TestClient

from sslvpn.store import db
from sslvpn.store.gateway_queries import TrafficCounted, write_records
from tests.web.conftest import Site
from tests.web.test_api import ADMIN_TOKEN, USER_TOKEN, add_tokens, bearer


async def test_a_users_series_over_a_range(client: TestClient, site: Site) -> None:
    add_tokens(site)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with db.session(site.engine, write=True) as s:
        write_records(s, records=[
            TrafficCounted("user", "alice", now - timedelta(minutes=2), 1000, 200),
            TrafficCounted("user", "alice", now - timedelta(minutes=1), 10, 20),
            TrafficCounted("user", "alice", now - timedelta(hours=2), 5, 5),
            TrafficCounted("user", "bob", now - timedelta(minutes=1), 7, 7),
        ], gateway_name="default", now=now)
    answer = await client.get("/api/v1/traffic", params={"scope": "user:alice"},
                              headers=bearer(ADMIN_TOKEN))
    assert answer.status == 200
    body = await answer.json()
    assert (body["scope"], body["name"]) == ("user", "alice")
    assert [(p["start"], p["seconds"], p["bytes_in"], p["bytes_out"]) for p in body["points"]] \
        == [((now - timedelta(minutes=2)).isoformat(), 60, 1000, 200),
            ((now - timedelta(minutes=1)).isoformat(), 60, 10, 20)]
    since = (now - timedelta(hours=3)).isoformat()
    wide = await client.get("/api/v1/traffic", params={
        "scope": "user:alice", "from": since, "to": now.isoformat()}, headers=bearer(ADMIN_TOKEN))
    assert len((await wide.json())["points"]) == 3
    backwards = await client.get("/api/v1/traffic", params={
        "scope": "user:alice", "from": now.isoformat(), "to": since},
        headers=bearer(ADMIN_TOKEN))
    assert (await backwards.json())["points"] == []
    years = await client.get("/api/v1/traffic", params={
        "scope": "user:alice", "from": "2000-01-01T00:00:00Z"}, headers=bearer(ADMIN_TOKEN))
    moved_up = datetime.fromisoformat((await years.json())["from"])
    assert abs(moved_up - (now - timedelta(days=366))) < timedelta(minutes=2)
    refused = await client.get("/api/v1/traffic", params={"scope": "user:alice"},
                               headers=bearer(USER_TOKEN))
    assert refused.status == 403


async def test_bad_input_is_a_400(client: TestClient, site: Site) -> None:
    add_tokens(site)
    for params in ({}, {"scope": "planet:earth"}, {"scope": "user:"},
                   {"scope": "user:alice", "from": "yesterday"},
                   {"scope": "user:alice", "from": "2026-12-07T10:00:00"},  # no offset
                   {"scope": "user:alice", "step": "1m"}):
        answer = await client.get("/api/v1/traffic", params=params, headers=bearer(ADMIN_TOKEN))
        assert answer.status == 400, params
        assert "error" in await answer.json()
