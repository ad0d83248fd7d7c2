"""Named queries for the fleet's nodes: the node rows, their heartbeats, their session counts,
and the signal that makes every node sweep now.

Heartbeats are stamped and aged with the database's clock (``now()`` on PostgreSQL,
``CURRENT_TIMESTAMP`` on SQLite), never a node's own, so a node whose clock is off is not
taken for down (or up) by the others. Like `queries`, every function takes the `Session`
first and never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from sslvpn.store import NotFoundError
from sslvpn.store.models import Node, VpnSessionRecord
from sslvpn.store.rows import flush, insert
from sslvpn.store.types import UTCDateTime

FLEET_CHANNEL = "sslvpn_fleet"  # LISTEN/NOTIFY channel; a notification means "sweep now"


def add_node(
    s: Session,
    *,
    name: str,
    public_addresses: Sequence[str],
    pool_cidr: str,
    pool6_cidr: str | None = None,
    vpc_addresses: Sequence[str] = (),
) -> Node:
    row = Node(
        name=name,
        public_addresses=list(public_addresses),
        pool_cidr=pool_cidr,
        pool6_cidr=pool6_cidr,
        vpc_addresses=list(vpc_addresses),
    )
    return insert(s, row, f"node {name!r}")


def get_node(s: Session, *, name: str) -> Node:
    row = s.exec(select(Node).where(Node.name == name)).first()
    if row is None:
        raise NotFoundError(f"no node named {name!r}")
    return row


def list_nodes(s: Session) -> list[Node]:
    """Every node, by name."""
    return list(s.exec(select(Node).order_by(col(Node.name))).all())


def delete_node(s: Session, *, name: str) -> None:
    s.delete(get_node(s, name=name))
    flush(s, f"node {name!r}")


def beat(
    s: Session, *, name: str, software_version: str, seen_vpc_addresses: Sequence[str]
) -> bool:
    """Stamp the node's heartbeat with the database's time; False when the node was removed."""
    statement = (
        update(Node)
        .where(col(Node.name) == name)
        .values(heartbeat_at=func.now(), software_version=software_version,
                seen_vpc_addresses=list(seen_vpc_addresses))
    )
    return bool(s.connection().execute(statement).rowcount)


def database_now(s: Session) -> datetime:
    """The database's clock, the one heartbeats are stamped with (aware UTC)."""
    now: datetime = s.connection().execute(select(func.now(type_=UTCDateTime()))).scalar_one()
    return now


def open_session_counts(s: Session) -> dict[str, int]:
    """Open session records per node."""
    query = (
        select(col(VpnSessionRecord.node), func.count())
        .where(col(VpnSessionRecord.disconnected_at).is_(None),
               col(VpnSessionRecord.node).is_not(None))
        .group_by(col(VpnSessionRecord.node))
    )
    return {str(name): int(count) for name, count in s.connection().execute(query).all()}


def signal_fleet(s: Session, what: str) -> None:
    """Ask every node to sweep now, delivered when this transaction commits (PostgreSQL
    NOTIFY on `FLEET_CHANNEL`); on SQLite the periodic sweep is the only path."""
    connection = s.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_notify(FLEET_CHANNEL, what[:200])))
