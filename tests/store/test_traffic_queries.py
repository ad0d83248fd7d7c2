"""Traffic history in the store (SQLite and PostgreSQL): minute buckets add up across
batches, a range reads back in order, old minutes fold into hours and old hours go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from sslvpn.store import db, traffic_queries
from sslvpn.store.gateway_queries import TrafficCounted, write_records

T0 = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)


def _write(engine: Engine, *records: TrafficCounted) -> None:
    with db.session(engine, write=True) as s:
        write_records(s, records=records, gateway_name="default", now=T0)


def _series(engine: Engine, scope: str, name: str, start: datetime, end: datetime
            ) -> list[tuple[datetime, int, int, int]]:
    with db.session(engine, write=False) as s:
        return [tuple(p) for p in traffic_queries.series(  # type: ignore[misc]
            s, scope=scope, name=name, start=start, end=end)]


def test_bookings_of_one_minute_add_into_its_bucket(engine: Engine) -> None:
    _write(engine, TrafficCounted("user", "alice", T0 + timedelta(seconds=5), 100, 10),
           TrafficCounted("user", "alice", T0 + timedelta(seconds=50), 1, 2),
           TrafficCounted("node", "n1", T0 + timedelta(seconds=5), 101, 12))
    _write(engine, TrafficCounted("user", "alice", T0 + timedelta(seconds=59), 1000, 0),
           TrafficCounted("user", "alice", T0 + timedelta(minutes=1), 7, 7),
           TrafficCounted("user", "bob", T0, 5, 5))
    assert _series(engine, "user", "alice", T0, T0 + timedelta(hours=1)) == [
        (T0, 60, 1101, 12), (T0 + timedelta(minutes=1), 60, 7, 7)]
    assert _series(engine, "user", "alice", T0 + timedelta(minutes=1),
                   T0 + timedelta(minutes=2)) == [(T0 + timedelta(minutes=1), 60, 7, 7)]
    assert _series(engine, "node", "n1", T0, T0 + timedelta(hours=1)) == [(T0, 60, 101, 12)]


def test_minutes_older_than_30_days_become_hours_and_hours_go_after_a_year(
        engine: Engine) -> None:
    old = T0 - timedelta(days=40)
    ancient = T0 - timedelta(days=400)
    _write(engine, *(TrafficCounted("tunnel", "t1", old + timedelta(minutes=m), m, 1)
                     for m in range(120)),
           TrafficCounted("tunnel", "t1", T0 - timedelta(minutes=3), 9, 9),
           TrafficCounted("tunnel", "t1", ancient, 5, 5))
    with db.session(engine, write=True) as s:
        assert traffic_queries.roll_up(s, now=T0) == 121  # the ancient minute too: its
        # hour, past a year, is dropped at once
    with db.session(engine, write=True) as s:
        assert traffic_queries.roll_up(s, now=T0) == 0  # an hour is folded once
    points = _series(engine, "tunnel", "t1", ancient, T0)
    assert points == [(old, 3600, sum(range(60)), 60),
                      (old + timedelta(hours=1), 3600, sum(range(60, 120)), 60),
                      (T0 - timedelta(minutes=3), 60, 9, 9)]
