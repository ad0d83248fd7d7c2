"""Traffic history: per node, IPsec tunnel and user, bytes each way in 1-minute buckets.

The gateway books what each scope moved since its previous booking as `TrafficCounted`
records in the accounting batches it already writes (``gateway_queries.write_records``),
so history costs no transaction of its own; they are added into the minute's bucket (one
upsert per bucket and batch). ``roll_up`` (the daily retention pass) folds minute buckets
older than ``MINUTES_FOR`` into hourly ones and drops hourly ones older than ``HOURS_FOR``.
``series`` answers a chart: one scope's buckets in a time range, an index range scan on the
table's key. Like `queries`, every function takes the `Session` first and never commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col
from sqlmodel import select as model_select

from sslvpn.store.models import TrafficBucket

SCOPES = ("node", "tunnel", "user")
MINUTE = 60
HOUR = 3600
MINUTES_FOR = timedelta(days=30)  # minute buckets kept this long, then rolled up to hours
HOURS_FOR = timedelta(days=365)  # hourly buckets kept this long


class TrafficCounted(NamedTuple):
    """Bytes ``name`` (of ``scope``) moved since its previous record, booked to ``at``'s
    minute; in: into the VPC (from a client or the tunnel's peer), out: back."""

    scope: str
    name: str
    at: datetime
    bytes_in: int
    bytes_out: int


class Point(NamedTuple):
    start: datetime
    seconds: int
    bytes_in: int
    bytes_out: int


def minute_of(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def add_traffic(s: Session, records: Sequence[TrafficCounted]) -> None:
    """Add ``records`` into their minute buckets: one upsert per bucket."""
    sums: dict[tuple[str, str, datetime], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        both = sums[record.scope, record.name, minute_of(record.at)]
        both[0] += record.bytes_in
        both[1] += record.bytes_out
    if not sums:
        return
    rows = [{"scope": scope, "name": name, "start": start, "seconds": MINUTE,
             "bytes_in": both[0], "bytes_out": both[1]}
            for (scope, name, start), both in sums.items()]
    _upsert_adding(s, rows)


def _upsert_adding(s: Session, rows: list[dict[str, object]]) -> None:
    """INSERT the rows; a bucket already there gets their bytes added."""
    table = TrafficBucket.__table__  # type: ignore[attr-defined]
    dialect = s.connection().dialect.name
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = make(table)
    statement = statement.on_conflict_do_update(
        index_elements=["scope", "name", "start"],
        set_={"bytes_in": table.c.bytes_in + statement.excluded.bytes_in,
              "bytes_out": table.c.bytes_out + statement.excluded.bytes_out})
    s.connection().execute(statement, rows)


def series(s: Session, *, scope: str, name: str, start: datetime, end: datetime) -> list[Point]:
    """The scope's buckets starting in [start, end), oldest first."""
    rows = s.connection().execute(
        select(col(TrafficBucket.start), col(TrafficBucket.seconds),
               col(TrafficBucket.bytes_in), col(TrafficBucket.bytes_out))
        .where(col(TrafficBucket.scope) == scope, col(TrafficBucket.name) == name,
               col(TrafficBucket.start) >= start, col(TrafficBucket.start) < end)
        .order_by(col(TrafficBucket.start))
    ).all()
    return [Point(*row) for row in rows]


def roll_up(s: Session, *, now: datetime) -> int:
    """Fold minute buckets older than MINUTES_FOR into hourly ones, drop hourly buckets
    older than HOURS_FOR; returns how many minute buckets were folded."""
    cutoff = (now - MINUTES_FOR).replace(minute=0, second=0, microsecond=0)
    old = (col(TrafficBucket.seconds) == MINUTE, col(TrafficBucket.start) < cutoff)
    minutes = s.exec(model_select(TrafficBucket).where(*old)).all()
    sums: dict[tuple[str, str, datetime], list[int]] = defaultdict(lambda: [0, 0])
    for bucket in minutes:
        both = sums[bucket.scope, bucket.name, bucket.start.replace(minute=0)]
        both[0] += bucket.bytes_in
        both[1] += bucket.bytes_out
    s.connection().execute(delete(TrafficBucket).where(*old))
    if sums:
        # an hour is rolled up once: all its minutes pass the cutoff together
        _upsert_adding(s, [{"scope": scope, "name": name, "start": start, "seconds": HOUR,
                            "bytes_in": both[0], "bytes_out": both[1]}
                           for (scope, name, start), both in sums.items()])
    s.connection().execute(delete(TrafficBucket).where(
        col(TrafficBucket.seconds) == HOUR, col(TrafficBucket.start) < now - HOURS_FOR))
    return len(minutes)


def totals(s: Session, *, scope: str, name: str) -> tuple[int, int]:
    """All bytes each way the history holds for one scope (tests and reports)."""
    found = s.connection().execute(
        select(func.coalesce(func.sum(col(TrafficBucket.bytes_in)), 0),
               func.coalesce(func.sum(col(TrafficBucket.bytes_out)), 0))
        .where(col(TrafficBucket.scope) == scope, col(TrafficBucket.name) == name)).one()
    return int(found[0]), int(found[1])
