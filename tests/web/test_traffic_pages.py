"""The Traffic page and its chart data: rates per point from the stored history; admins
chart any node, tunnel or user, a user only their own traffic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp.test_utils import TestClient

from sslvpn.store import db
from sslvpn.store.gateway_queries import TrafficCounted, write_records
from tests.web.conftest import Site, login


def _book(site: Site, *records: TrafficCounted) -> None:
    with db.session(site.engine, write=True) as s:
        write_records(s, records=records, gateway_name="default", now=datetime.now(UTC))


async def test_a_user_charts_their_own_traffic_only(client: TestClient, site: Site) -> None:
    now = datetime.now(UTC)
    _book(site, TrafficCounted("user", "alice", now - timedelta(minutes=5), 6000, 600),
          TrafficCounted("user", "bob", now - timedelta(minutes=5), 1, 1))
    await login(client, "alice")
    page = await client.get("/traffic")
    assert page.status == 200
    text = await page.text()
    assert 'data-source="/traffic.json?scope=user%3Aalice&amp;span=hour"' in text
    data = await (await client.get("/traffic.json")).json()
    assert (data["scope"], data["name"], data["step"]) == ("user", "alice", 60)
    assert 60 <= len(data["points"]) <= 62
    busy = [p for p in data["points"] if p["in"]]
    assert [(p["in"], p["out"]) for p in busy] == [(100.0, 10.0)]  # 6000 B in a minute
    assert all(b["at"] - a["at"] == 60 for a, b in zip(data["points"], data["points"][1:],
                                                        strict=False))
    for other in ("user:bob", "node:default", "tunnel:t1"):
        answer = await client.get("/traffic.json", params={"scope": other})
        assert answer.status == 403, other
    assert (await client.get("/traffic", params={"scope": "user:bob"})).status == 403


async def test_an_admin_charts_any_scope_over_a_day_or_week(client: TestClient,
                                                            site: Site) -> None:
    now = datetime.now(UTC)
    _book(site, TrafficCounted("tunnel", "t1", now - timedelta(hours=3), 3600, 0),
          TrafficCounted("tunnel", "t1", now - timedelta(hours=3, minutes=-1), 3600, 0))
    await login(client, "root")
    day = await (await client.get("/traffic.json", params={
        "scope": "tunnel:t1", "span": "day"})).json()
    assert day["step"] == 600 and sum(p["in"] for p in day["points"]) * 600 == 7200
    week = await (await client.get("/traffic.json", params={
        "scope": "tunnel:t1", "span": "week"})).json()
    assert week["step"] == 3600 and sum(p["in"] for p in week["points"]) * 3600 == 7200
    assert (await client.get("/traffic", params={"scope": "tunnel:t1", "span": "week"})
            ).status == 200
    for bad in ({"span": "year"}, {"scope": "planet:x"}):
        assert (await client.get("/traffic.json", params=bad)).status == 400
